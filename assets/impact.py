"""Serving stage: the earlier answers each publication made wrong, in `answer_impact`, and the
optional notice of them (`POLICYFRESH_IMPACT_WEBHOOK`), sent after the release is served."""

import dagster as dg
import polars as pl

from assets.metadata import markdown_table, table_asset
from orchestration.automation import FOLLOWS_UPSTREAM
from orchestration.resources import EmbedderResource, PolicyfreshResource, stage_run
from policyfresh.quality.pipeline import STAGES
from policyfresh.store.tables import ANSWER_IMPACT, empty_frame

STAGE = STAGES[ANSWER_IMPACT.name]


@dg.asset(
    name=ANSWER_IMPACT.name,
    deps=STAGE.after,
    description=ANSWER_IMPACT.description
    + " Per publication, every earlier answer whose quoted text the new release no longer"
    " serves in that document; `new` marks those this publication changed first.",
    automation_condition=FOLLOWS_UPSTREAM,
    **table_asset(ANSWER_IMPACT, group="serving", layer="audit", kinds={"deltalake", "lancedb"}),
)
def answer_impact(
    context: dg.AssetExecutionContext, policyfresh: PolicyfreshResource, embedder: EmbedderResource
):
    run = stage_run(context, policyfresh, embedder)
    settings, announced = run.settings, STAGE.work(run)
    recorded, deliveries = announced.recorded, announced.deliveries
    rows = pl.concat([empty_frame(ANSWER_IMPACT), *(r.impact.rows for r in recorded)])
    counts = (
        rows.explode("owners")
        .group_by("release", "doc_id", "owners")
        .agg(
            answers=pl.col("trace_id").n_unique(),
            new_answers=pl.col("trace_id").filter(pl.col("new")).n_unique(),
        )
        .rename({"owners": "owner"})
        .sort("release", "answers", "doc_id", descending=[True, True, False])
    )
    answers = rows["trace_id"].n_unique()
    context.log.info(
        "answer_impact: %d publications recorded, %d answers affected", len(recorded), answers
    )
    return dg.MaterializeResult(
        metadata={
            "publications": len(recorded),
            "releases": dg.MetadataValue.json([r.publication.release for r in recorded]),
            "answers": answers,
            "new_answers": rows.filter(pl.col("new"))["trace_id"].n_unique(),
            "by_document_and_owner": markdown_table(counts),
            "notices": markdown_table(pl.DataFrame(deliveries))
            if settings.impact_webhook
            else "no webhook configured",
            "notices_failed": sum(1 for d in deliveries if not d.delivered),
            "dagster/uri": settings.table_uri(ANSWER_IMPACT.name),
        }
    )
