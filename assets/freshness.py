"""Per-document freshness: `document_freshness` is written by each stage as a version moves
from seen to embedded to served; its check names the late documents and their owners."""

from typing import Any

import dagster as dg

from assets.metadata import table_asset
from orchestration.resources import PolicyfreshResource
from policyfresh.store.config import Settings
from policyfresh.store.freshness import freshness_summary
from policyfresh.store.tables import DOCUMENT_FRESHNESS

FRESHNESS_CHECK = "freshness_objective"

document_freshness = dg.AssetSpec(
    DOCUMENT_FRESHNESS.name,
    deps=["served_index"],
    description=DOCUMENT_FRESHNESS.description
    + " Written by ingestion, embedding and publication; the objective is"
    " `POLICYFRESH_FRESHNESS_SLO` (default 10 minutes).",
    **table_asset(DOCUMENT_FRESHNESS, group="serving", layer="quality", kinds={"deltalake"}),
)


def _who(waiting: list[dict]) -> str:
    return "; ".join(
        f"{w['doc_id']} v{w['doc_version']} ({', '.join(w['owners'])}, {w['lag_seconds']:.0f} s)"
        for w in waiting[:10]
    )


def judge_freshness(settings: Settings) -> dict[str, Any]:
    """The check's verdict now: passed, severity, description and metadata."""
    summary = freshness_summary(settings)
    late = [w for w in summary["waiting"] if w["state"] == "late"]
    at_risk = [w for w in summary["waiting"] if w["state"] == "at_risk"]
    objective = f"{settings.freshness_slo:.0f} s objective"
    if late:
        description = f"{len(late)} late past the {objective}: {_who(late)}"
    elif at_risk:
        description = f"{len(at_risk)} past half the {objective}: {_who(at_risk)}"
    else:
        description = f"every current version served within the {objective}"
    return {
        "passed": not summary["waiting"],
        "severity": dg.AssetCheckSeverity.ERROR if late else dg.AssetCheckSeverity.WARN,
        "description": description,
        "metadata": {
            "objective_seconds": settings.freshness_slo,
            **{k: summary[k] for k in ("served", "pending", "at_risk", "late")},
            "served_lag_p50_seconds": summary["served_lag_p50_seconds"],
            "served_lag_max_seconds": summary["served_lag_max_seconds"],
            "waiting": dg.MetadataValue.json(summary["waiting"]),
        },
    }


@dg.asset_check(
    asset=DOCUMENT_FRESHNESS.name,
    name=FRESHNESS_CHECK,
    description="Every current document version is served within the freshness objective: "
    "warns past half of it, fails past all of it, naming the documents and their owners.",
    # In a refresh run it judges after publication; as time passes (or when the gate held
    # publication back and the run skipped it) `stale_embeddings_sensor` reports it.
    additional_deps=["served_index"],
)
def freshness_objective(policyfresh: PolicyfreshResource) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(**judge_freshness(policyfresh.settings()))
