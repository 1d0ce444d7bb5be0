"""The release gate: run metrics over an evaluation's cases, the diff with an earlier run, and
the verdict against the served release's run. Freshness first: a case whose own source policy
changed is flagged for review, never held against the release."""

from __future__ import annotations

from typing import Any

import polars as pl

from policyfresh.store.config import Gate


def _mean(series: pl.Series) -> float | None:
    return round(float(series.cast(pl.Float64).mean()), 4) if len(series) else None


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(pl.Series(values).quantile(q, "linear")), 2) if values else None


def run_metrics(cases: pl.DataFrame, latencies_ms: list[float]) -> dict[str, Any]:
    """Retrieval rates over answerable cases, semantic and judge means, behavioural counts."""
    answerable = cases.filter(~pl.col("must_escalate"))
    judged = answerable["judge_score"].drop_nulls()
    return {
        "hit_at_1": _mean(answerable["hit_at_1"]),
        "hit_at_5": _mean(answerable["hit_at_5"]),
        "mrr": _mean(answerable["reciprocal_rank"]),
        "evidence_recall_at_5": _mean(answerable["evidence_at_5"]),
        "hit_at_5_unaffected": _mean(answerable.filter(~pl.col("affected"))["hit_at_5"]),
        "semantic_similarity": _mean(answerable["similarity"]),
        "judge_groundedness": _mean(judged) if len(judged) else None,
        "escalation_accuracy": _mean(cases["escalated"] == cases["must_escalate"]),
        "pass_rate": _mean(cases["passed"]),
        "stale_served": int(cases["stale_served"].sum()),
        "pii_hits": int(cases["pii_hits"].sum()),
        "superseded_hits": int(cases["superseded_hits"].sum()),
        "duplicate_hits": int(cases["duplicate_hits"].sum()),
        "extra_retrievals": int((cases["retrievals"] - 1).abs().sum()),
        "latency_p50_ms": _percentile(latencies_ms, 0.5),
        "latency_p95_ms": _percentile(latencies_ms, 0.95),
    }


def compare(cases: pl.DataFrame, before: pl.DataFrame) -> dict[str, list[str]]:
    """Cases that newly fail or pass, and those whose served evidence changed, against an
    earlier run (cases new to the golden file are neither)."""
    if before.is_empty():
        return {"newly_failing": [], "newly_passing": [], "evidence_changed": []}
    joined = cases.join(
        before.select("case_id", "passed", "served_evidence"), on="case_id", suffix="_before"
    )
    changed = pl.col("served_evidence").ne_missing(pl.col("served_evidence_before"))
    return {
        "newly_failing": joined.filter(~pl.col("passed") & pl.col("passed_before"))[
            "case_id"
        ].to_list(),
        "newly_passing": joined.filter(pl.col("passed") & ~pl.col("passed_before"))[
            "case_id"
        ].to_list(),
        "evidence_changed": joined.filter(changed)["case_id"].to_list(),
    }


def metric_deltas(metrics: dict[str, Any], before: dict[str, Any] | None) -> dict[str, float]:
    """Each metric now minus before, where both have it."""
    if not before:
        return {}
    return {
        k: round(v - before[k], 4)
        for k, v in metrics.items()
        if isinstance(v, int | float) and isinstance(before.get(k), int | float)
    }


def _describe(case: dict[str, Any]) -> str:
    kind = "must-escalate" if case["must_escalate"] else f"{case['risk_category']} risk"
    return f"{case['case_id']} ({kind}): {'; '.join(case['failures']) or 'failed'}"


def decide(
    gate: Gate, threshold: float, cases: pl.DataFrame, baseline: pl.DataFrame
) -> tuple[str, list[str]]:
    """`unevaluated` without cases; else `passed` or `blocked` with a reason per blocking case.
    Against the served release: no unaffected or must-escalate case newly fails, no stale
    evidence is served, hit@5 of unaffected cases drops at most the margin. A case whose only
    failure is its escalation, with a confidence within `gate.escalation_margin` of the
    `threshold`, is noise, not a regression: any edit nudges every confidence. The first
    release meets absolute thresholds instead."""
    if cases.is_empty():
        return "unevaluated", []
    gating = cases.filter(~pl.col("affected") & (pl.col("status") != "needs_review"))
    reasons = [
        f"{c['case_id']}: serves stale evidence" for c in gating.filter("stale_served").to_dicts()
    ]
    answerable = gating.filter(~pl.col("must_escalate"))
    if baseline.is_empty():
        hit5 = _mean(answerable["hit_at_5"]) or 0.0
        evidence = _mean(answerable["evidence_at_5"]) or 0.0
        if answerable.height and hit5 < gate.min_hit_at_5:
            reasons.append(f"hit@5 {hit5:.3f} is below the first release's {gate.min_hit_at_5}")
        if answerable.height and evidence < gate.min_evidence_recall_at_5:
            reasons.append(
                f"evidence recall@5 {evidence:.3f} is below the first release's "
                f"{gate.min_evidence_recall_at_5}"
            )
        return ("blocked" if reasons else "passed"), reasons
    before = baseline.select("case_id", "passed", pl.col("hit_at_5").alias("hit_at_5_before"))
    reviewed = pl.col("status") != "needs_review"
    candidates = cases.filter((~pl.col("affected") | pl.col("must_escalate")) & reviewed)
    joined = candidates.join(before, on="case_id", suffix="_before")
    borderline = (
        (pl.col("failures").list.len() == 1)
        & (pl.col("escalated") != pl.col("must_escalate"))
        & ((pl.col("confidence") - threshold).abs() < gate.escalation_margin)
    )
    newly = joined.filter(~pl.col("passed") & pl.col("passed_before") & ~borderline)
    reasons += [f"{_describe(c)} (newly failing)" for c in newly.to_dicts()]
    compared = answerable.join(before, on="case_id")
    if compared.height:
        drop = (_mean(compared["hit_at_5_before"]) or 0.0) - (_mean(compared["hit_at_5"]) or 0.0)
        if drop > gate.max_hit_at_5_drop:
            reasons.append(
                f"hit@5 of unaffected cases dropped by {drop:.3f} "
                f"(more than {gate.max_hit_at_5_drop})"
            )
    return ("blocked" if reasons else "passed"), reasons
