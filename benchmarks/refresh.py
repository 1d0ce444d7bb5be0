"""Refresh benchmark on the 18F handbook: full build against raw `model.encode` and against
LangChain's indexing API (`langchain_peer.py`), no-op refresh, one real edit, a deleted page,
search latency, peak memory, and `policyfresh run` end to end as a person types it (no-op and
one real edit). Prints and saves the figures.

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

from policyfresh.index.chunks import read_chunks
from policyfresh.index.embedding import Embedder
from policyfresh.index.vectors import reconcile
from policyfresh.quality.pipeline import STAGES, StageRun, refresh
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


def langchain_peer(work: Path, edit: dict) -> dict:
    """LangChain's indexing API over a copy of the same pages, in its own process: its build,
    no-op and the same real edit, and its peak memory."""
    pages = work / "langchain-pages"
    shutil.copytree(work / "pages", pages)
    command = [sys.executable, str(REPO / "benchmarks" / "langchain_peer.py"), str(pages),
               edit["path"].removeprefix("pages/"), str(HANDBOOK / edit["after_file"])]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"the LangChain peer failed: {done.stderr[-2000:]}")
    shutil.rmtree(pages)
    return json.loads(done.stdout.splitlines()[-1])


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

    figures["langchain"] = langchain_peer(work, edit)

    # Plain `model.encode` of the same texts runs once before and once after the embedding
    # stage, so the machine's drift is averaged out of the ratio.
    model = embedder.load()

    def raw_encode(texts: list[str]) -> float:
        return timed(lambda: model.encode(texts, batch_size=64, normalize_embeddings=True))[1]

    run = StageRun(settings, embedder, "bench-build")
    results, seconds = {}, {}
    for stage in STAGES.values():
        if stage.name == "policy_vectors":
            chunks = read_chunks(settings).drop_nulls("embed_text").unique("text_sha256")
            texts = chunks["embed_text"].to_list()
            raw_before = raw_encode(texts)
        results[stage.key], seconds[stage.key] = timed(stage.work, run)
        if stage.name == "policy_vectors":
            raw_after = raw_encode(texts)
    peak_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    raw_seconds = (raw_before + raw_after) / 2
    build_seconds = sum(seconds.values())
    vectors, evaluation = results["vectors"], results["eval"]
    ours = vectors.embedded / vectors.embed_seconds
    raw = len(texts) / raw_seconds
    figures["full_build"] = {
        "documents": results["documents"].added,
        "quarantined": results["documents"].quarantined,
        "chunks": results["chunks"].total_chunks,
        "embedded": vectors.embedded,
        "seconds": round(build_seconds, 1),
        "stage_seconds": {key: round(value, 2) for key, value in seconds.items()},
        "eval": {k: evaluation.summary()[k] for k in ("verdict", "cases", "hit_at_5", "mrr")},
        "embeddings_per_second": round(ours, 2),
        "raw_encode_seconds_before_and_after": [round(raw_before, 1), round(raw_after, 1)],
        "raw_encode_per_second": round(raw, 2),
        "embedding_rate_ratio": round(ours / raw, 3),
        "build_texts_per_second": round(vectors.embedded / build_seconds, 2),
        "build_rate_vs_raw_encode": round(vectors.embedded / build_seconds / raw, 3),
        "peak_rss_mb": round(peak_build),
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
    peer = figures["langchain"]
    figures["versus_langchain"] = {  # [policyfresh, LangChain]
        "full_build_seconds": [figures["full_build"]["seconds"], peer["full_build"]["seconds"]],
        "full_build_texts": [vectors.embedded, peer["full_build"]["texts"]],
        "peak_rss_mb_after_build": [round(peak_build), peer["peak_rss_mb_after_build"]],
        "noop_seconds": [figures["noop_refresh"]["seconds"], peer["noop"]["seconds"]],
        "one_real_edit_seconds": [figures["one_real_edit"]["seconds"],
                                  peer["one_real_edit"]["seconds"]],
        "one_real_edit_texts": [edited["vectors"]["embedded"], peer["one_real_edit"]["texts"]],
    }  # fmt: skip
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
