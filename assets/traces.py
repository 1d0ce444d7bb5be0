"""Search receipts: `retrieval_traces` is written by every search, not by a refresh."""

import dagster as dg

from assets.metadata import table_asset
from ragfresh.tables import RETRIEVAL_TRACES

retrieval_traces = dg.AssetSpec(
    RETRIEVAL_TRACES.name,
    deps=["served_index"],
    description=RETRIEVAL_TRACES.description + " Written by `ragfresh search` and `search()`.",
    **table_asset(RETRIEVAL_TRACES, group="serving", layer="audit", kinds={"deltalake"}),
)
