"""Evaluation stage: the candidate index answers the golden cases; the gate decides whether it
may be published."""

import dagster as dg
import polars as pl

from assets.metadata import markdown_table
from orchestration.automation import FOLLOWS_UPSTREAM
from orchestration.resources import EmbedderResource, PolicyfreshResource, stage_run
from policyfresh.quality.evaluation import Evaluation
from policyfresh.quality.pipeline import STAGES
from policyfresh.store.tables import EVAL_CASE_RESULTS, EVAL_RUNS

UNEVALUATED = (
    "**Unevaluated**: no golden case applies to this corpus, so nothing gates its releases. "
    "Set `POLICYFRESH_GOLDEN_CASES` to a file of cases over these policies."
)


def _report(evaluation: Evaluation) -> str:
    """The diff with the previous run, and the cases an owner has to look at, as markdown."""
    summary, changes = evaluation.summary(), evaluation.changes
    if summary["verdict"] == "unevaluated":
        return UNEVALUATED
    verdict, candidate, cases = summary["verdict"], summary["candidate"], summary["cases"]
    lines = [f"**{verdict}**: candidate {candidate}, {cases} cases"]
    lines += [f"- blocked: {reason}" for reason in summary["reasons"]]
    for key in ("affected", "newly_failing", "needs_review"):
        lines.append(f"- {key.replace('_', ' ')}: {', '.join(summary[key]) or 'none'}")
    for key in ("newly_passing", "evidence_changed"):
        lines.append(f"- {key.replace('_', ' ')}: {', '.join(changes.get(key, [])) or 'none'}")
    deltas = changes.get("metric_deltas") or {}
    if deltas:
        lines.append("- metric deltas: " + ", ".join(f"{k} {v:+g}" for k, v in deltas.items() if v))
    return "\n".join(lines)


STAGE = STAGES["regression_eval"]


@dg.asset(
    deps=STAGE.after,
    group_name="evaluation",
    owners=[EVAL_RUNS.owner],
    kinds={"deltalake", "lancedb"},
    tags={"pii": "redacted", "layer": "quality"},
    automation_condition=FOLLOWS_UPSTREAM,
    check_specs=[
        dg.AssetCheckSpec(
            "release_gate",
            asset="regression_eval",
            description="No case unaffected by the change newly fails, no stale evidence is "
            "served, hit@5 holds: otherwise the previous release keeps serving. Enforced where "
            "the release is published; not blocking, so the owners' reports still follow.",
        )
    ],
)
def regression_eval(
    context: dg.AssetExecutionContext, policyfresh: PolicyfreshResource, embedder: EmbedderResource
):
    """Evaluate the newest index with the golden cases, affected cases first; diff with the
    previous run. Written to `eval_runs` and `eval_case_results`."""
    run = stage_run(context, policyfresh, embedder)
    settings, evaluation = run.settings, STAGE.work(run)
    if evaluation is None:
        raise dg.Failure("no vector index to evaluate: policy_vectors has not been built")
    summary = evaluation.summary()
    metrics = {k: v for k, v in (evaluation.run["metrics"] or {}).items() if v is not None}
    review = evaluation.cases.filter(pl.col("status") == "needs_review").select(
        "case_id", "affected_reason", "expected_evidence", "served_evidence"
    )
    yield dg.MaterializeResult(
        metadata={
            **{f"metric/{k}": v for k, v in metrics.items()},
            "verdict": summary["verdict"],
            "cases": summary["cases"],
            "affected": len(summary["affected"]),
            "reused": summary["reused"],
            "report": dg.MetadataValue.md(_report(evaluation)),
            "needs_review": markdown_table(review),
            "skipped_cases": dg.MetadataValue.json(summary["skipped"]),
            "summary": dg.MetadataValue.json(summary),
            "dagster/uri": settings.table_uri(EVAL_RUNS.name),
            "case_results_uri": settings.table_uri(EVAL_CASE_RESULTS.name),
        }
    )
    yield dg.AssetCheckResult(
        check_name="release_gate",
        passed=summary["verdict"] != "blocked",
        metadata={
            "verdict": summary["verdict"],
            "blocking_cases": dg.MetadataValue.json(summary["reasons"]),
            "note": UNEVALUATED if summary["verdict"] == "unevaluated" else "",
        },
    )
