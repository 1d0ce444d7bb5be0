"""The one place that builds the code location's Definitions."""

import dagster as dg

from assets import chunks, documents, traces, vectors
from orchestration.expectations import expectation_check
from orchestration.jobs import refresh_policies
from orchestration.resources import EmbedderResource, RagfreshResource
from ragfresh.tables import POLICY_CHUNKS, POLICY_DOCUMENTS

defs = dg.Definitions(
    assets=[
        documents.policy_documents,
        chunks.policy_chunks,
        vectors.policy_vectors,
        traces.retrieval_traces,
    ],
    asset_checks=[expectation_check(POLICY_DOCUMENTS), expectation_check(POLICY_CHUNKS)],
    jobs=[refresh_policies],
    resources={"ragfresh": RagfreshResource(), "embedder": EmbedderResource()},
)
