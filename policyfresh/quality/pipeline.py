"""The stages of a refresh, declared once: each Dagster asset takes its name, what it follows
and its work from `STAGES`, and `refresh` runs every stage as plain calls (tests, benchmarks).
`document_freshness` is no stage: the stages write it as versions move."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from policyfresh.index.chunking import Chunker
from policyfresh.index.chunks import refresh_chunks
from policyfresh.index.embedding import Embedder
from policyfresh.index.vectors import sync_vectors
from policyfresh.ingest.documents import ingest_documents
from policyfresh.quality.evaluation import evaluate
from policyfresh.quality.reports import build_reports
from policyfresh.release.publication import publish
from policyfresh.serve.impact_notice import record_and_announce
from policyfresh.serve.query_encoder import try_export
from policyfresh.serve.trace_store import prune_traces
from policyfresh.store.config import Settings


@dataclass(frozen=True)
class StageRun:
    """What a stage works with: where the state is, the model, and the run it belongs to."""

    settings: Settings
    embedder: Embedder
    run_id: str


@dataclass(frozen=True)
class Stage:
    name: str  # the Dagster asset it is
    key: str  # its entry in the summary of `refresh`
    after: list[str]  # the stages it follows
    work: Callable[[StageRun], Any]
    summary: Callable[[Any], Any]  # its result as plain JSON values, for `refresh`


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            "policy_documents",
            "documents",
            [],
            lambda run: ingest_documents(run.settings, run.run_id),
            lambda result: result.counts(),
        ),
        Stage(
            "policy_chunks",
            "chunks",
            ["policy_documents"],
            lambda run: refresh_chunks(run.settings, Chunker.for_model(run.embedder), run.run_id),
            asdict,
        ),
        Stage(
            "policy_vectors",
            "vectors",
            ["policy_chunks"],
            lambda run: sync_vectors(run.settings, run.embedder),
            asdict,
        ),
        Stage(
            "regression_eval",
            "eval",
            ["policy_vectors"],
            lambda run: evaluate(run.settings, run.embedder, run.run_id),
            lambda evaluation: evaluation.summary() if evaluation else None,
        ),
        Stage(
            "served_index",
            "release",
            ["regression_eval"],
            lambda run: publish(run.settings, actor=f"run:{run.run_id}"),
            asdict,
        ),
        Stage(
            "answer_impact",
            "impact",
            ["served_index"],
            lambda run: record_and_announce(run.settings, run.run_id),
            lambda announced: {
                "publications": [r.publication.release for r in announced.recorded],
                "answers": sum(r.impact.rows["trace_id"].n_unique() for r in announced.recorded),
                "notices_failed": sum(not d.delivered for d in announced.deliveries),
            },
        ),
        Stage(
            "query_encoder",
            "query_encoder",
            ["served_index"],
            lambda run: try_export(run.settings, run.embedder),
            lambda export: {"exported": export.exported, "problem": export.problem},
        ),
        Stage(
            "retrieval_traces",
            "traces",
            ["served_index"],
            lambda run: prune_traces(run.settings, run.run_id),
            dict,
        ),
        Stage(
            "quality_reports",
            "reports",
            ["served_index", "answer_impact"],
            lambda run: build_reports(run.settings, run.embedder.model_id),
            lambda reports: {"index": str(reports.index), "owners": len(reports.owners)},
        ),
    )
}


def refresh(
    settings: Settings, embedder: Embedder, run_id: str, through: str | None = None
) -> dict[str, Any]:
    """Run every stage in order (ingest, re-chunk and re-embed what changed, evaluate, publish
    if the gate passes, then what follows publication), or only up to the stage `through`,
    naming the others in `not_run`; each stage's summary and seconds. The asset checks run in
    the Dagster job, not here."""
    run = StageRun(settings, embedder, run_id)
    names = list(STAGES)
    last = names.index(through) if through else len(names) - 1
    summary: dict[str, Any] = {"seconds": {}, "not_run": names[last + 1 :]}
    for stage in list(STAGES.values())[: last + 1]:
        started = time.perf_counter()
        summary[stage.key] = stage.summary(stage.work(run))
        summary["seconds"][stage.key] = round(time.perf_counter() - started, 3)
    return summary
