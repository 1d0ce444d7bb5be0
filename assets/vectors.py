"""Embedding stage: `policy_vectors` in LanceDB, re-embedding only new text, one writer."""

import dagster as dg

from orchestration.automation import FOLLOWS_UPSTREAM
from orchestration.resources import EmbedderResource, PolicyfreshResource, stage_run
from policyfresh.index.vectors import VECTORS, reconcile
from policyfresh.quality.pipeline import STAGES
from policyfresh.store.tables import POLICY_CHUNKS

STAGE = STAGES[VECTORS]


@dg.asset(
    name=VECTORS,
    deps=STAGE.after,
    group_name="indexing",
    owners=[POLICY_CHUNKS.owner],
    kinds={"lancedb", "pytorch"},
    tags={"pii": "redacted", "layer": "gold"},
    pool="lancedb_writer",
    automation_condition=FOLLOWS_UPSTREAM,
    check_specs=[
        dg.AssetCheckSpec(
            "vectors_reconcile",
            asset=VECTORS,
            blocking=True,
            description="Vectors match current chunks exactly: none missing, stale, orphaned, "
            "duplicated or from another model.",
        )
    ],
)
def policy_vectors(
    context: dg.AssetExecutionContext, policyfresh: PolicyfreshResource, embedder: EmbedderResource
):
    """Embed only (text, model) pairs not yet embedded; delete what left; keep indexes fresh."""
    run = stage_run(context, policyfresh, embedder, bulk=True)
    settings, model, result = run.settings, run.embedder, STAGE.work(run)
    context.log.info("policy_vectors: %s", result)
    yield dg.MaterializeResult(
        metadata={
            "embedded": result.embedded,
            "reused": result.reused,
            "deleted": result.deleted,
            "embeddings_per_second": round(result.embeddings_per_second, 1),
            "table_version": result.table_version,
            "model_id": result.model_id,
            "model_changed": result.model_changed,
            "dagster/row_count": result.rows,
            "dagster/uri": settings.vectors_uri,
        }
    )
    counts = reconcile(settings, model.model_id)
    yield dg.AssetCheckResult(
        check_name="vectors_reconcile", passed=not any(counts.values()), metadata=counts
    )
