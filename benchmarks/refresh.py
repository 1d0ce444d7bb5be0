"""Refresh benchmark on the 18F handbook: full build against raw `model.encode`, no-op refresh,
one real edit, a deleted page, search latency, peak memory, and `policyfresh run` end to end as a
person types it (no-op and one real edit). Prints and saves the figures.

    .venv/bin/python benchmarks/refresh.py [--out benchmarks/results/refresh.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from policyfresh.index.chunking import Chunker
from policyfresh.index.chunks import read_chunks, refresh_chunks
from policyfresh.index.embedding import Embedder
from policyfresh.index.vectors import reconcile, sync_vectors
from policyfresh.ingest.documents import ingest_documents
from policyfresh.quality.evaluation import evaluate
from policyfresh.quality.pipeline import refresh
from policyfresh.release.publication import publish
from policyfresh.serve.search import search_many
from policyfresh.store.config import Settings

REPO = Path(__file__).resolve().parents[1]
HANDBOOK = REPO.parent / "shared" / "corpora" / "18f-handbook"
EDIT = "18f-advanced-annual-leave"
CLI_EDIT = "18f-transit-benefit-registration"
GOLDEN = REPO / "evals" / "18f_golden_cases.csv"


def timed(fn, *args):
    started = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - started


def policyfresh_run(settings: Settings) -> tuple[dict, float]:
    """`policyfresh run --json` in a new process, as a person runs it: its summary and seconds."""
    env = os.environ | {
        "POLICYFRESH_HOME": str(settings.home),
        "POLICYFRESH_POLICIES": str(settings.policies),
        "POLICYFRESH_GOLDEN_CASES": str(GOLDEN),
    }
    command = [sys.executable, "-m", "policyfresh.cli", "run", "--json"]
    done, seconds = timed(lambda: subprocess.run(command, env=env, capture_output=True, text=True))
    if done.returncode not in (0, 1):
        raise RuntimeError(f"policyfresh run failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout), seconds


def command_line(settings: Settings, edit: dict) -> dict:
    """End-to-end seconds of `policyfresh run`: the first (which records what it left), three
    with nothing changed, and one real edit."""
    _, first = policyfresh_run(settings)
    noops = [policyfresh_run(settings) for _ in range(3)]
    assert all(summary["nothing_changed_since"] for summary, _ in noops)
    target = settings.policies / edit["path"].removeprefix("pages/")
    shutil.copy(HANDBOOK / edit["after_file"], target)
    edited, edit_seconds = policyfresh_run(settings)
    return {
        "first_run_seconds": round(first, 2),
        "noop_seconds": [round(seconds, 2) for _, seconds in noops],
        "noop_median_seconds": round(statistics.median(s for _, s in noops), 2),
        "one_real_edit": {
            "page": edit["path"],
            "seconds": round(edit_seconds, 2),
            "embedded": edited["vectors"]["embedded"],
            "published": edited["release"]["published"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "refresh.json"))
    args = parser.parse_args()
    changes = {
        c["change_id"]: c
        for c in map(json.loads, (HANDBOOK / "changes" / "changes.jsonl").read_text().splitlines())
    }
    edit = changes[EDIT]
    work = Path(tempfile.mkdtemp(prefix="policyfresh-bench-"))
    policies = work / "pages"
    shutil.copytree(HANDBOOK / "pages", policies)
    target = policies / edit["path"].removeprefix("pages/")
    for before in (edit, changes[CLI_EDIT]):  # built as they were before their edits
        shutil.copy(
            HANDBOOK / before["before_file"], policies / before["path"].removeprefix("pages/")
        )
    settings = Settings.load(home=work / "home", policies=policies, golden=GOLDEN)
    embedder = Embedder()
    _, load_seconds = timed(embedder.load)
    embedder.encode(["warm up"])
    figures: dict = {
        "date": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "model_id": embedder.model_id,
        "model_load_seconds": round(load_seconds, 2),
    }

    # Plain `model.encode` of the same texts runs once before and once after the embedding
    # step, so the machine's drift is averaged out of the ratio.
    ingested, ingest_seconds = timed(ingest_documents, settings, "bench-build")
    chunked, chunk_seconds = timed(
        refresh_chunks, settings, Chunker.for_model(embedder), "bench-build"
    )
    chunks = read_chunks(settings).drop_nulls("embed_text").unique("text_sha256")
    texts = chunks["embed_text"].to_list()
    model = embedder.load()

    def raw_encode() -> float:
        return timed(lambda: model.encode(texts, batch_size=64, normalize_embeddings=True))[1]

    raw_before = raw_encode()
    vectors, vector_seconds = timed(sync_vectors, settings, embedder)
    raw_after = raw_encode()
    raw_seconds = (raw_before + raw_after) / 2
    evaluation, eval_seconds = timed(evaluate, settings, embedder, "bench-build")
    _, publish_seconds = timed(publish, settings, "bench-build")
    build_seconds = ingest_seconds + chunk_seconds + vector_seconds + eval_seconds + publish_seconds
    ours = vectors.embedded / vectors.embed_seconds
    raw = len(texts) / raw_seconds
    figures["full_build"] = {
        "documents": ingested.added,
        "quarantined": ingested.quarantined,
        "chunks": chunked.total_chunks,
        "embedded": vectors.embedded,
        "seconds": round(build_seconds, 1),
        "ingest_seconds": round(ingest_seconds, 1),
        "chunk_seconds": round(chunk_seconds, 1),
        "vectors_seconds": round(vector_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "eval": {k: evaluation.summary()[k] for k in ("verdict", "cases", "hit_at_5", "mrr")},
        "embeddings_per_second": round(ours, 2),
        "raw_encode_seconds_before_and_after": [round(raw_before, 1), round(raw_after, 1)],
        "raw_encode_per_second": round(raw, 2),
        "embedding_rate_ratio": round(ours / raw, 3),
        "build_vs_raw_encode_time": round(build_seconds / raw_seconds, 3),
    }

    noop, noop_seconds = timed(refresh, settings, embedder, "bench-noop")
    figures["noop_refresh"] = {
        "seconds": round(noop_seconds, 3),
        "embedded": noop["vectors"]["embedded"],
        "stage_seconds": noop["seconds"],
    }
    shutil.copy(HANDBOOK / edit["after_file"], target)
    edited, edit_seconds = timed(refresh, settings, embedder, "bench-edit")
    figures["one_real_edit"] = {
        "page": edit["path"],
        "seconds": round(edit_seconds, 2),
        "embedded": edited["vectors"]["embedded"],
        "reused": edited["vectors"]["reused"],
        "deleted": edited["vectors"]["deleted"],
        "stage_seconds": edited["seconds"],
        "affected_cases": edited["eval"]["affected"],
        "published": edited["release"]["published"],
    }
    deleted_page = policies / "travel-and-leave" / "overtime.md"
    deleted_page.unlink()
    removed, delete_seconds = timed(refresh, settings, embedder, "bench-delete")
    figures["deleted_page"] = {
        "page": deleted_page.relative_to(policies).as_posix(),
        "seconds": round(delete_seconds, 2),
        "vectors_deleted": removed["vectors"]["deleted"],
        "embedded": removed["vectors"]["embedded"],
        "reconciliation": reconcile(settings, embedder.model_id),
    }

    questions = [c["question"] for c in changes.values()]
    titles = read_chunks(settings, ["heading"])["heading"].drop_nulls().unique().sort()
    questions += [f"What does the handbook say about {h.split(' > ')[-1]}?" for h in titles[:97]]
    results = search_many(settings, embedder, questions, k=5, caller="benchmark")
    latencies = sorted(r.latency_ms for r in results)
    figures["search"] = {
        "questions": len(latencies),
        "p50_ms": round(statistics.median(latencies), 1),
        "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
    }

    from orchestration.runner import export_settings, prepare_instance

    export_settings(settings)
    from orchestration.definitions import defs

    instance = prepare_instance(settings)
    job = defs.resolve_job_def("refresh_policies")
    _, dagster_noop = timed(lambda: job.execute_in_process(instance=instance))
    figures["noop_refresh"]["dagster_job_seconds_with_checks"] = round(dagster_noop, 2)
    figures["peak_memory_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    figures["command_line"] = command_line(settings, changes[CLI_EDIT])
    shutil.rmtree(work)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
