"""Jobs: a refresh of the whole asset graph, and a refresh from the vectors on."""

import dagster as dg

from policyfresh.index.vectors import VECTORS
from policyfresh.store.tables import DOCUMENT_FRESHNESS

refresh_policies = dg.define_asset_job(
    "refresh_policies",
    # With the freshness check: it is on a table the stages write, not an asset a step makes.
    selection=dg.AssetSelection.all()
    | dg.AssetSelection.checks_for_assets(DOCUMENT_FRESHNESS.name),
    description="Refresh everything that changed, from the policies folder to the served index.",
)

refresh_vectors = dg.define_asset_job(
    "refresh_vectors",
    selection=dg.AssetSelection.assets(VECTORS).downstream().materializable(),
    description="Re-embed what drifted, evaluate and publish: the chunks did not change.",
)
