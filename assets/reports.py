"""Reporting stage: one static HTML quality report per data owner, and an index of owners."""

import dagster as dg
import polars as pl

from assets.metadata import markdown_table
from orchestration.automation import FOLLOWS_UPSTREAM
from orchestration.resources import EmbedderResource, PolicyfreshResource, stage_run
from policyfresh.quality.pipeline import STAGES
from policyfresh.store.tables import EVAL_RUNS

STAGE = STAGES["quality_reports"]


@dg.asset(
    # After the publication step, which runs for a blocked candidate too (it keeps the release
    # serving): the pages show what search serves now, and the answers its publication affected.
    deps=STAGE.after,
    group_name="reporting",
    owners=[EVAL_RUNS.owner],
    kinds={"html"},
    tags={"pii": "redacted", "layer": "quality"},
    automation_condition=FOLLOWS_UPSTREAM,
)
def quality_reports(
    context: dg.AssetExecutionContext, policyfresh: PolicyfreshResource, embedder: EmbedderResource
):
    """Write one HTML page per data owner about their own documents (held back, late, badly
    embedded, evaluation cases that fail or moved, PII types found) and an index of owners,
    under `<home>/reports`, each saying which release is served and which candidate waits.
    No document text or PII value is written."""
    reports = STAGE.work(stage_run(context, policyfresh, embedder))
    owners = pl.DataFrame(
        [
            {"owner": r.owner, "report": str(r.path), "documents": r.documents, **r.needs_action}
            for r in reports.owners
        ]
    )
    served = reports.release["published"]
    context.log.info(
        "quality_reports: %d pages under %s, release %s served",
        len(reports.owners),
        reports.directory,
        served["release"] if served else "none",
    )
    return dg.MaterializeResult(
        metadata={
            "index": dg.MetadataValue.path(str(reports.index)),
            **{f"report/{r.slug}": dg.MetadataValue.path(str(r.path)) for r in reports.owners},
            "owners": markdown_table(owners, limit=200),
            "owners_needing_action": sum(1 for r in reports.owners if r.total),
            "release": served["release"] if served else None,
            "data_docs": dg.MetadataValue.path(str(reports.data_docs))
            if reports.data_docs
            else "not built",
            "dagster/uri": str(reports.directory),
        }
    )
