"""Serving stage: the model exported to ONNX, so `policyfresh search` answers from a cold shell
without importing torch."""

import dagster as dg

from orchestration.automation import FOLLOWS_UPSTREAM
from orchestration.resources import EmbedderResource, PolicyfreshResource, stage_run
from policyfresh.quality.pipeline import STAGES
from policyfresh.serve.query_encoder import MIN_COSINE
from policyfresh.store.tables import RETRIEVAL_TRACES

STAGE = STAGES["query_encoder"]


@dg.asset(
    deps=STAGE.after,
    group_name="serving",
    owners=[RETRIEVAL_TRACES.owner],
    kinds={"onnx", "pytorch"},
    tags={"pii": "none", "layer": "serving"},
    automation_condition=FOLLOWS_UPSTREAM,
)
def query_encoder(
    context: dg.AssetExecutionContext, policyfresh: PolicyfreshResource, embedder: EmbedderResource
):
    """Export the served model's query encoder to ONNX once per model and trust it only when
    its vectors match torch's. A model that cannot be exported is reported, not fatal:
    searches then use torch."""
    run = stage_run(context, policyfresh, embedder)
    model, export = run.embedder, STAGE.work(run)
    if export.problem:
        return dg.MaterializeResult(
            metadata={"exported": False, "model_id": model.model_id, "problem": export.problem}
        )
    return dg.MaterializeResult(
        metadata={
            "exported": export.exported,
            "model_id": model.model_id,
            "min_cosine_to_torch": round(export.min_cosine, 7),
            "required_cosine": MIN_COSINE,
            "seconds": round(export.seconds, 1),
            "dagster/uri": str(export.directory),
        }
    )
