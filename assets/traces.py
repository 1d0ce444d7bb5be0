"""Search receipts: `retrieval_traces` is written by every search; materializing it enforces
the retention (`POLICYFRESH_TRACE_RETENTION_DAYS`) on them and on their rows of `answer_impact`,
in every refresh and once a day."""

import dagster as dg

from assets.metadata import table_asset
from orchestration.resources import EmbedderResource, PolicyfreshResource, stage_run
from policyfresh.quality.pipeline import STAGES
from policyfresh.store.tables import RETRIEVAL_TRACES

DAILY = (
    dg.AutomationCondition.cron_tick_passed("0 3 * * *") & ~dg.AutomationCondition.in_progress()
).with_label("daily at 03:00")


STAGE = STAGES[RETRIEVAL_TRACES.name]


@dg.asset(
    name=RETRIEVAL_TRACES.name,
    deps=STAGE.after,
    description=RETRIEVAL_TRACES.description
    + " Written by `policyfresh search`, `search()` and the service, the question redacted;"
    " materializing it deletes traces past their retention, and their answer_impact rows.",
    automation_condition=DAILY,
    **table_asset(RETRIEVAL_TRACES, group="serving", layer="audit", kinds={"deltalake"}),
)
def retrieval_traces(
    context: dg.AssetExecutionContext, policyfresh: PolicyfreshResource, embedder: EmbedderResource
):
    run = stage_run(context, policyfresh, embedder)
    settings, counts = run.settings, STAGE.work(run)
    context.log.info(
        "retrieval_traces: %d past %d days deleted, %d kept",
        counts["deleted"],
        settings.trace_retention_days,
        counts["kept"],
    )
    return dg.MaterializeResult(
        metadata={**counts, "retention_days": settings.trace_retention_days}
    )
