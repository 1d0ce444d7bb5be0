"""The impact of one publication over 100,000 answers: time and peak memory of
`policyfresh.serve.impact.impact` on the 18F handbook. Prints the figures and saves them.

    .venv/bin/python benchmarks/impact.py [--traces 100000] [--work DIR]
        [--out benchmarks/results/impact.json]

It copies the handbook's pages (the recorded edits' pages as they were before) to the work
folder, builds them with the real model (no golden cases: the evaluation is not measured here)
and publishes release A, then appends synthetic answers served by A, five hits each drawn
uniformly from A's chunks, in one Delta commit (their questions carry no PII, so they are
stored as written, not through the detector). The recorded edits are then saved and published
as release B. The impact of B is measured in a new process, so its peak resident memory is
the impact's own and not the build's; a second work folder run reuses the built home.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from policyfresh.store import delta_store
from policyfresh.store.config import Settings
from policyfresh.store.tables import RETRIEVAL_TRACES, empty_frame

REPO = Path(__file__).resolve().parents[1]
HANDBOOK = REPO.parent / "shared" / "corpora" / "18f-handbook"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "impact.json"
TARGET_SECONDS = 10.0
HITS = 5
RUNS = 3


def changes() -> list[dict]:
    return [json.loads(line) for line in (HANDBOOK / "changes" / "changes.jsonl").open()]


def settings_for(work: Path) -> Settings:
    return Settings.load(home=work / "home", policies=work / "pages", golden="none")


def build(work: Path, traces: int) -> dict:
    """Release A, `traces` answers served by it, then the recorded edits published as B."""
    from policyfresh.index.embedding import Embedder
    from policyfresh.index.vectors import open_vectors, read_vector_rows
    from policyfresh.quality.pipeline import refresh

    shutil.copytree(HANDBOOK / "pages", work / "pages")
    for change in changes():
        shutil.copy(HANDBOOK / change["before_file"], work / change["path"])
    settings = settings_for(work)
    embedder = Embedder()
    started = time.perf_counter()
    first = refresh(settings, embedder, "bench-impact-a")
    built = time.perf_counter() - started
    release = first["release"]["release"]
    chunks = read_vector_rows(open_vectors(settings), ["chunk_id", "doc_id", "doc_version"])
    rng = np.random.default_rng(7)
    picks = rng.integers(0, chunks.height, size=(traces, HITS))
    now = datetime.now(tz=UTC)
    rows = [
        {
            "trace_id": uuid.uuid4().hex,
            "searched_at": now - timedelta(seconds=int(rng.integers(0, 86_400))),
            "question": f"synthetic question {n}",
            "question_sha256": f"{n:064x}",
            "k": HITS,
            "hits": [
                {"rank": rank, **chunks.row(int(i), named=True), "score": 1 / (60 + rank)}
                for rank, i in enumerate(picks[n], start=1)
            ],
            "index_version": release,
            "model_id": embedder.model_id,
            "latency_ms": 10.0,
            "caller": "bench",
            "release": release,
            "entitled": ["public", "internal", "confidential", "restricted"],
            "api_key_id": None,
        }
        for n in range(traces)
    ]
    frame = pl.DataFrame(rows, schema=empty_frame(RETRIEVAL_TRACES).schema)
    delta_store.append(
        RETRIEVAL_TRACES, settings.table_uri(RETRIEVAL_TRACES.name), frame, "bench-impact"
    )
    for change in changes():
        shutil.copy(HANDBOOK / change["after_file"], work / change["path"])
    second = refresh(settings, embedder, "bench-impact-b")
    assert second["release"]["published"], second["release"]
    return {"chunks": chunks.height, "build_seconds": round(built, 1),
            "release_a": release, "release_b": second["release"]["release"],
            "embedded_for_b": second["vectors"]["embedded"]}  # fmt: skip


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the
    parent that built the home)."""
    status = Path("/proc/self/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return round(int(line.split()[1]) / 1024, 1)


def measure(work: Path) -> dict:
    """In this process: the impact of the latest publication, timed (best and median of
    RUNS), and the process's peak resident memory before (imports) and after."""
    from policyfresh.serve.impact import impact

    settings = settings_for(work)
    baseline = peak_rss_mb()
    seconds = []
    for _ in range(RUNS):
        started = time.perf_counter()
        found = impact(settings)
        seconds.append(time.perf_counter() - started)
    peak = peak_rss_mb()
    totals = found.totals()
    return {
        "seconds_best": round(min(seconds), 3),
        "seconds_median": round(sorted(seconds)[len(seconds) // 2], 3),
        "seconds_all": [round(s, 3) for s in seconds],
        "peak_rss_mb": peak,
        "peak_rss_before_mb": baseline,
        "answers_affected": totals["answers"],
        "hits_affected": totals["hits"],
        "by_status": totals["by_status"],
        "documents_changed": [d.doc_id for d in found.documents],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=100_000)
    parser.add_argument("--work", type=Path, help="work folder (kept; reused when built)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="policyfresh-impact-"))
    if not (work / "home").exists():
        (work / "setup.json").write_text(json.dumps(build(work, args.traces)))
    setup = json.loads((work / "setup.json").read_text())
    child = subprocess.run(
        [sys.executable, __file__, "--measure", str(work)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    traces = delta_store.read_table(
        settings_for(work).table_uri(RETRIEVAL_TRACES.name), RETRIEVAL_TRACES.schema, ["trace_id"]
    ).height
    result = {
        "measured_at": datetime.now(tz=UTC).isoformat(),
        "traces": traces,
        "hits_per_trace": HITS,
        "target_seconds": TARGET_SECONDS,
        "setup": setup,
        **figures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{traces} traces, one publication: {figures['seconds_best']} s best, "
        f"{figures['seconds_median']} s median of {RUNS} (target {TARGET_SECONDS} s); "
        f"peak RSS {figures['peak_rss_mb']} MB; {figures['answers_affected']} answers "
        f"({figures['hits_affected']} hits) affected, {figures['by_status']}"
    )
    print(f"saved {args.out}; work folder {work}")


if __name__ == "__main__":
    main()
