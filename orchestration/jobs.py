"""Jobs: a refresh of the whole asset graph, a refresh from the vectors on, and the freshness
check alone (it judges time passing, so it runs when a waiting document changes state)."""

import dagster as dg

from ragfresh.tables import DOCUMENT_FRESHNESS
from ragfresh.vectors import VECTORS

refresh_policies = dg.define_asset_job(
    "refresh_policies",
    selection=dg.AssetSelection.all()
    | dg.AssetSelection.checks_for_assets(DOCUMENT_FRESHNESS.name),
    description="Refresh everything that changed, from the policies folder to the served index.",
)

refresh_vectors = dg.define_asset_job(
    "refresh_vectors",
    selection=dg.AssetSelection.assets(VECTORS).downstream().materializable(),
    description="Re-embed what drifted, evaluate and publish: the chunks did not change.",
)

check_freshness = dg.define_asset_job(
    "check_freshness",
    selection=dg.AssetSelection.checks_for_assets(DOCUMENT_FRESHNESS.name),
    description="Judge every current document version against the freshness objective.",
)
