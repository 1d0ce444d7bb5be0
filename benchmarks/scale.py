"""Scale benchmark: embedding throughput per worker and per core, in-process and on Ray with 1
and 2 actors, and search latency (query encode included) at 10k, 100k and 1M synthetic rows
with and without the vector index; then a sizing table from the measured rate. Prints and saves
the figures.

    .venv/bin/python benchmarks/scale.py [--texts 1000] [--actors 1,2]
        [--rows 10000,100000,1000000] [--queries 300] [--corpus-chunks 100000,1000000,5000000]
        [--edit-share 0.01] [--out benchmarks/results/scale.json]

Throughput: real chunks of the 18F handbook (policyfresh's parser and chunker, PII detection left
out: it changes a few tokens of a few chunks), a fixed random sample of `--texts`, embedded by
`Embedder` in this process and by `RayEmbedder` on a local Ray cluster of its own per actor
count. Startup (cluster start, then a first call of one batch per worker: the model loaded) is
timed apart from the steady rate; a second such call gives what every call pays (on Ray, a new
actor pool loading the model), which is taken out of the rate. `--actors ''` skips Ray.

Latency: for each size, a LanceDB table of policyfresh's own schema (`vector_schema`) holding
random unit vectors and short texts drawn from the handbook's words, indexed by `vectors`'s own
`_ensure_indexes` (full text always; IVF_PQ with its parameters) and tagged `served` by
`releases`' own `_serve`, so `search.answer_many` runs unchanged: open the served release,
encode each question with the ONNX query encoder, fuse vector and full-text candidates. Traces
are not written. Random vectors have no neighbourhoods, so only the latency means anything.

Sizing: worker-hours for a full re-embed and for a day's edits (`--edit-share` of the chunks),
and the workers a full re-embed needs in 24 h and in 8 h, at the steady rate of one worker: a
Ray actor on one core, from the run with an actor per core (what `RayEmbedder` runs by default).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import serve  # a sibling script: benchmarks/ is on sys.path when this runs as one

from policyfresh.index.chunking import Chunker
from policyfresh.index.embedding import Embedder
from policyfresh.index.vectors import _ensure_indexes, vector_schema
from policyfresh.ingest.parsing import parse_document
from policyfresh.release.releases import _serve
from policyfresh.serve.query_encoder import prepared_encoder
from policyfresh.serve.search import QueryEncoder, answer_many
from policyfresh.store.config import Settings
from policyfresh.store.tables import VECTORS

dev, timed, percentiles = serve.dev, serve.timed, serve.percentiles

REPO = dev.REPO
DEFAULT_OUT = REPO / "benchmarks" / "results" / "scale.json"
PAGES = dev.DEFAULT_CORPUS / "pages"
GOLDEN = (dev.HANDBOOK_GOLDEN, dev.BUNDLED_GOLDEN)
SEED = 0
PROBE_TEXTS = 8  # a batch per worker: the first call loads the model, the second times a call
WARMUP_QUERIES = 5
K = 5
CALLER = "bench-scale"
BATCH_ROWS = 50_000  # synthetic rows written per batch: 50k vectors are 77 MB
WORDS_PER_TEXT = (8, 32)
HOURS = 3600.0
CORES = os.cpu_count() or 1
Vocabulary = tuple[np.ndarray, np.ndarray]  # words and their frequencies


def corpus_chunks(embedder: Embedder) -> list[tuple[str, str]]:
    """(heading, embedded text) of every distinct chunk of the 18F handbook, as policyfresh's
    parser and chunker make them (no PII detected: `allow`, no spans)."""
    chunker = Chunker.for_model(embedder)
    chunks: dict[str, str] = {}
    for page in sorted(p for p in PAGES.rglob("*") if p.is_file()):
        doc_id = page.relative_to(PAGES).as_posix()
        parsed = parse_document(doc_id, page.read_bytes())
        for chunk in chunker.chunk(doc_id, parsed.text, [], "allow", parsed.title):
            chunks.setdefault(chunk.embed_text, chunk.heading)
    return [(heading, text) for text, heading in chunks.items()]


def throughput(
    embedder: Embedder,
    texts: list[str],
    workers: int,
    reference: np.ndarray | None = None,
    cluster_start: float = 0.0,
) -> tuple[dict[str, Any], np.ndarray]:
    """An embedder's startup (its first call: the model loaded, on Ray by each actor), what
    every later call pays beyond its texts, and its steady rate per worker and per core. The
    probe gives each worker one batch; a call over `texts` less the probe's second call
    cancels what every call pays, leaving the rate. Also the vectors' agreement with
    `reference`."""
    probe = texts[: workers * PROBE_TEXTS]
    _, first = timed(embedder.encode, probe, PROBE_TEXTS)
    _, again = timed(embedder.encode, probe, PROBE_TEXTS)
    vectors, seconds = timed(embedder.encode, texts)
    rate = (len(texts) - len(probe)) / (seconds - again)
    figures = {
        "workers": workers,
        "startup_seconds": round(cluster_start + first, 2),
        "cluster_start_seconds": round(cluster_start, 2),
        "first_call_seconds": round(first, 2),
        "per_call_overhead_seconds": round(again - len(probe) / rate, 2),
        "texts": len(texts),
        "call_seconds": round(seconds, 1),
        "call_chunks_per_second": round(len(texts) / seconds, 2),
        "chunks_per_second": round(rate, 2),
        "chunks_per_second_per_worker": round(rate / workers, 2),
        "chunks_per_second_per_core": round(rate / CORES, 2),
        "load_average_1m_after": round(os.getloadavg()[0], 2),  # the machine is shared
    }
    if reference is not None:
        figures["min_cosine_to_in_process"] = round(float(np.sum(vectors * reference, 1).min()), 6)
    return figures, vectors


def ray_throughput(actors: list[int], texts: list[str], reference: np.ndarray) -> dict[str, Any]:
    """`RayEmbedder(address="local", actors=n)` for each n, each on a local cluster of its own,
    so each startup includes starting the cluster."""
    from policyfresh.index.ray_embedding import LOCAL, RayEmbedder, connect

    figures = {}
    for n in actors:
        _, cluster = timed(connect, LOCAL)  # imports ray after setting what it reads on import
        import ray

        try:
            embedder = RayEmbedder(address=LOCAL, actors=n)
            figures[f"{n}_actors"] = throughput(embedder, texts, n, reference, cluster)[0]
        finally:
            ray.shutdown()
    return figures


def vocabulary(texts: list[str]) -> Vocabulary:
    """The corpus's words and their frequencies, for synthetic texts the full-text index and
    real questions can match."""
    counts = Counter(word for text in texts for word in re.findall(r"[a-z]+", text.lower()))
    words, n = zip(*counts.items(), strict=True)
    weights = np.array(n, dtype=np.float64)
    return np.array(words), weights / weights.sum()


def synthetic_batches(
    schema: pa.Schema, rows: int, model_id: str, words: Vocabulary
) -> Iterator[pa.RecordBatch]:
    """Rows of policyfresh's vector schema: random unit vectors and texts of 8-32 corpus words."""
    dimensions = schema.field("vector").type.list_size
    rng = np.random.default_rng(SEED)
    vocabulary_words, weights = words
    now = datetime.now(tz=UTC)
    for start in range(0, rows, BATCH_ROWS):
        n = min(BATCH_ROWS, rows - start)
        vectors = rng.standard_normal((n, dimensions), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ends = np.cumsum(rng.integers(*WORDS_PER_TEXT, size=n, endpoint=True))
        picks = vocabulary_words[rng.choice(len(weights), size=int(ends[-1]), p=weights)]
        texts = [" ".join(text) for text in np.split(picks, ends[:-1])]
        ids = range(start, start + n)
        columns = {
            "chunk_id": [f"{i:032x}" for i in ids],
            "doc_id": [f"synthetic/doc-{i // 20:06d}.md" for i in ids],
            "doc_version": [1] * n,
            "chunk_index": [i % 20 for i in ids],
            "heading": ["Synthetic"] * n,
            "char_start": [0] * n,
            "char_end": [len(t) for t in texts],
            "owners": [["team:benchmark"]] * n,
            "classification": ["internal"] * n,
            "text": texts,
            "embed_text": texts,
            "text_sha256": [hashlib.sha256(t.encode()).hexdigest() for t in texts],
            "model_id": [model_id] * n,
            "vector": pa.FixedSizeListArray.from_arrays(vectors.ravel(), dimensions),
            "embedded_at": [now] * n,
        }
        yield pa.RecordBatch.from_pydict(columns, schema=schema)


def write_synthetic(
    settings: Settings, schema: pa.Schema, rows: int, model_id: str, words: Vocabulary
) -> Any:
    """A new vector table of `rows` synthetic rows (a lancedb Table)."""
    import lancedb

    batches = pa.RecordBatchReader.from_batches(
        schema, synthetic_batches(schema, rows, model_id, words)
    )
    db = lancedb.connect(settings.vectors_uri)
    return db.create_table(VECTORS, data=batches, schema=schema, mode="overwrite")


def search_latency(
    settings: Settings, encoder: QueryEncoder, questions: list[str]
) -> dict[str, Any]:
    """Per-question latency of the served release through `answer_many`: encode, both
    retrievers, fusion."""
    answer_many(settings, encoder, questions[:WARMUP_QUERIES], k=K, caller=CALLER)
    results, _ = answer_many(settings, encoder, questions, k=K, caller=CALLER)
    if any(len(r.hits) != K for r in results):
        raise RuntimeError(f"a search returned fewer than {K} hits")
    return {"queries": len(results), "release": results[0].release,
            **percentiles([r.latency_ms for r in results])}  # fmt: skip


def latency_at(
    settings: Settings,
    encoder: QueryEncoder,
    schema: pa.Schema,
    rows: int,
    questions: list[str],
    words: Vocabulary,
) -> dict[str, Any]:
    """Build a synthetic table of `rows`, serve it without and then with the vector index, and
    time the searches of each; the table is removed afterwards."""
    table, write_seconds = timed(write_synthetic, settings, schema, rows, encoder.model_id, words)
    text_only = replace(settings, vector_index_min_rows=rows + 1)  # too few rows for IVF_PQ
    _, fts_seconds = timed(_ensure_indexes, text_only, table)
    _serve(settings, table, table.version)
    flat = search_latency(settings, encoder, questions)
    with_vector = replace(settings, vector_index_min_rows=rows)
    _, ivf_seconds = timed(_ensure_indexes, with_vector, table)
    _serve(settings, table, table.version)
    indexed = search_latency(settings, encoder, questions)
    vector_index = next(i for i in table.list_indices() if i.columns == ["vector"])
    stats = table.to_lance().stats.index_stats(vector_index.name)
    shutil.rmtree(Path(settings.vectors_uri))
    return {
        "rows": rows,
        "write_seconds": round(write_seconds, 1),
        "fts_index_seconds": round(fts_seconds, 1),
        "ivf_pq_index_seconds": round(ivf_seconds, 1),
        "ivf_pq_indexed_rows": stats["num_indexed_rows"],
        "ivf_pq_partitions": stats["indices"][0]["num_partitions"],
        "ivf_pq_sub_vectors": stats["indices"][0]["sub_index"]["num_sub_vectors"],
        "no_vector_index": flat,
        "ivf_pq": indexed,
        "load_average_1m_after": round(os.getloadavg()[0], 2),
    }


def questions_for(chunks: list[tuple[str, str]], count: int) -> list[str]:
    """`count` questions: the golden questions of both sets, then one per chunk heading."""
    questions = [q for golden in GOLDEN for q in serve.golden_questions(golden)]
    headings = sorted({h.split(" > ")[-1] for h, _ in chunks if h})
    questions += [f"What does the handbook say about {h}?" for h in headings]
    if len(questions) < count:
        raise ValueError(f"only {len(questions)} distinct questions, not {count}")
    return questions[:count]


def worker_rate(embedding: dict[str, Any]) -> tuple[float, str]:
    """What one worker embeds a second, and what a worker is: a Ray actor (one core: Ray runs
    torch on one thread per actor) of the run with an actor per core, as `RayEmbedder` runs by
    default; without that run, a core of the in-process run."""
    actor_per_core = embedding.get("ray", {}).get(f"{CORES}_actors")
    if actor_per_core:
        rate = actor_per_core["chunks_per_second_per_worker"]
        return rate, f"a Ray actor on one core, {CORES} actors on {CORES} cores"
    return embedding["in_process"]["chunks_per_second_per_core"], "a core of the in-process run"


def sizing(rate: float, corpus_chunks: list[int], edit_share: float) -> list[dict[str, Any]]:
    """Worker-hours and workers for a corpus of N chunks with a share of them edited a day, at
    `rate` chunks per second per worker."""
    table = []
    for n in corpus_chunks:
        full = n / rate / HOURS
        edits = round(n * edit_share)
        table.append({
            "chunks": n,
            "edits_per_day": edits,
            "full_reembed_worker_hours": round(full, 1),
            "daily_edits_worker_hours": round(edits / rate / HOURS, 2),
            "workers_full_reembed_in_24h": math.ceil(full / 24),
            "workers_full_reembed_in_8h": math.ceil(full / 8),
        })  # fmt: skip
    return table


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Throughput, the sizing it implies, then search latency; the figures."""
    figures: dict[str, Any] = {
        "date": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "machine": dev.machine(),
    }
    embedder = Embedder()
    chunks = corpus_chunks(embedder)
    texts = random.Random(SEED).sample([t for _, t in chunks], min(args.texts, len(chunks)))
    tokenizer = embedder.tokenizer()
    tokens = [len(e.ids) for e in tokenizer.encode_batch(texts)]
    in_process, reference = throughput(embedder, texts, 1)
    figures["embedding"] = {
        "model_id": embedder.model_id,
        "corpus": str(PAGES),
        "corpus_chunks": len(chunks),
        "texts": len(texts),
        "mean_tokens": round(sum(tokens) / len(tokens), 1),
        "in_process": in_process,
    }
    if args.actors:
        figures["embedding"]["ray"] = ray_throughput(args.actors, texts, reference)

    rate, worker = worker_rate(figures["embedding"])
    figures["sizing"] = {
        "worker": f"{worker}: {rate} chunks/s of {figures['embedding']['mean_tokens']} tokens",
        "chunks_per_second_per_worker": rate,
        "edit_share_per_day": args.edit_share,
        "table": sizing(rate, args.corpus_chunks, args.edit_share),
    }

    if args.rows:
        settings = Settings.load(home=work / "home", policies=REPO / "policies", golden="none")
        encoder = prepared_encoder(settings, embedder)
        questions = questions_for(chunks, args.queries)
        encoder.encode(questions[:WARMUP_QUERIES])
        encode_ms = [timed(encoder.encode, [q])[1] * 1000 for q in questions]
        words = vocabulary([t for _, t in chunks])
        schema = vector_schema(embedder.dimensions)
        figures["search"] = {
            "path": "search.answer_many over the served release (traces not written); "
            "synthetic rows in vector_schema, indexes by vectors._ensure_indexes, "
            "tagged served by releases._serve",
            "encoder": type(encoder).__name__,
            "k": K,
            "queries": len(questions),
            "encode_only": percentiles(encode_ms),
            "sizes": [
                latency_at(settings, encoder, schema, n, questions, words) for n in args.rows
            ],
        }
    figures["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    return figures


def report(figures: dict[str, Any]) -> str:
    """Tables for people: throughput, search latency, sizing."""
    embedding = figures["embedding"]
    runs = {"in-process": embedding["in_process"]} | {
        f"Ray, {name.replace('_', ' ')}": f for name, f in embedding.get("ray", {}).items()
    }
    lines = [
        f"embedding {embedding['texts']} handbook chunks (mean {embedding['mean_tokens']} tokens)"
        f" on {figures['machine']['cpu_count']} cores",
        f"{'':>18} {'startup s':>10} {'per call s':>11} {'chunks/s':>9} {'per worker':>11} "
        f"{'per core':>9}",
    ]
    lines += [
        f"{name:>18} {f['startup_seconds']:>10} {f['per_call_overhead_seconds']:>11} "
        f"{f['chunks_per_second']:>9} {f['chunks_per_second_per_worker']:>11} "
        f"{f['chunks_per_second_per_core']:>9}"
        for name, f in runs.items()
    ]
    if "search" in figures:
        search = figures["search"]
        encode = search["encode_only"]
        lines += [
            "",
            f"search latency, {search['queries']} queries, k={search['k']}, "
            f"{search['encoder']} encode included (encode alone: p50 {encode['p50_ms']} ms, "
            f"p95 {encode['p95_ms']} ms)",
            f"{'rows':>9} {'flat p50':>9} {'flat p95':>9} {'IVF_PQ p50':>11} {'IVF_PQ p95':>11} "
            f"{'IVF_PQ build s':>15}",
        ]
        lines += [
            f"{s['rows']:>9,} {s['no_vector_index']['p50_ms']:>9} "
            f"{s['no_vector_index']['p95_ms']:>9} {s['ivf_pq']['p50_ms']:>11} "
            f"{s['ivf_pq']['p95_ms']:>11} {s['ivf_pq_index_seconds']:>15}"
            for s in search["sizes"]
        ]
    lines += [
        "",
        f"sizing (a worker: {figures['sizing']['worker']})",
        f"{'chunks':>10} {'edits/day':>10} {'full re-embed h':>16} {'edits h/day':>12} "
        f"{'workers 24h':>12} {'workers 8h':>11}",
    ]
    lines += [
        f"{r['chunks']:>10,} {r['edits_per_day']:>10,} {r['full_reembed_worker_hours']:>16} "
        f"{r['daily_edits_worker_hours']:>12} {r['workers_full_reembed_in_24h']:>12} "
        f"{r['workers_full_reembed_in_8h']:>11}"
        for r in figures["sizing"]["table"]
    ]
    return "\n".join(lines)


def numbers(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1000, help="handbook chunks to embed")
    parser.add_argument("--actors", type=numbers, default=[1, 2], help="'' skips Ray")
    parser.add_argument("--rows", type=numbers, default=[10_000, 100_000, 1_000_000],
                        help="synthetic table sizes; '' skips search latency")  # fmt: skip
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--corpus-chunks", type=numbers, default=[100_000, 1_000_000, 5_000_000])
    parser.add_argument("--edit-share", type=float, default=0.01, help="chunks edited a day")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.texts <= max(args.actors, default=1) * PROBE_TEXTS:
        parser.error(f"--texts must be more than {PROBE_TEXTS} a worker")
    if args.actors and importlib.util.find_spec("policyfresh.index.ray_embedding") is None:
        parser.error(
            "policyfresh.index.ray_embedding is not there: --actors '' measures without Ray"
        )
    os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")  # index stats without them
    # A terminated run still removes its work folder (gigabytes at 1M rows) in `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    work = Path(tempfile.mkdtemp(prefix="policyfresh-scale-"))
    try:
        figures = measure(args, work)
    finally:
        shutil.rmtree(work)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(report(figures))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
