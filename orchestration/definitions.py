"""The one place that builds the code location's Definitions."""

import dagster as dg

from assets import (
    chunks,
    documents,
    evaluation,
    freshness,
    impact,
    query_encoder,
    reports,
    serving,
    traces,
    vectors,
)
from orchestration.automation import automation_sensor
from orchestration.expectations import expectation_checks
from orchestration.jobs import refresh_policies, refresh_vectors
from orchestration.resources import EmbedderResource, PolicyfreshResource
from orchestration.sensors import policy_source_sensor, stale_embeddings_sensor

defs = dg.Definitions(
    assets=[
        documents.policy_documents,
        chunks.policy_chunks,
        vectors.policy_vectors,
        evaluation.regression_eval,
        serving.served_index,
        impact.answer_impact,
        query_encoder.query_encoder,
        traces.retrieval_traces,
        freshness.document_freshness,
        reports.quality_reports,
    ],
    asset_checks=[*expectation_checks(), freshness.freshness_objective],
    jobs=[refresh_policies, refresh_vectors],
    sensors=[policy_source_sensor, stale_embeddings_sensor, automation_sensor],
    resources={"policyfresh": PolicyfreshResource(), "embedder": EmbedderResource()},
    # One process per run: a step per process would import torch and the model per step.
    executor=dg.in_process_executor,
)
