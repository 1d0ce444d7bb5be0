"""The one place that builds the code location's Definitions."""

import dagster as dg

from assets import chunks, documents, evaluation, serving, traces, vectors
from orchestration.expectations import expectation_checks
from orchestration.jobs import refresh_policies
from orchestration.resources import EmbedderResource, RagfreshResource

defs = dg.Definitions(
    assets=[
        documents.policy_documents,
        chunks.policy_chunks,
        vectors.policy_vectors,
        evaluation.regression_eval,
        serving.served_index,
        traces.retrieval_traces,
    ],
    asset_checks=expectation_checks(),
    jobs=[refresh_policies],
    resources={"ragfresh": RagfreshResource(), "embedder": EmbedderResource()},
)
