"""Jobs: one refresh of the whole asset graph."""

import dagster as dg

refresh_policies = dg.define_asset_job(
    "refresh_policies",
    selection=dg.AssetSelection.all(),
    description="Refresh everything that changed, from the policies folder to the served index.",
)
