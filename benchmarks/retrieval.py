"""Retrieval quality on both golden sets, each retrieval variant side by side: hit@1, hit@5,
MRR and evidence recall@1 and @5 over the answerable cases, the query latency (question
encoded, then retrieved) and the index's build time; then escalation on held-out folds, the
best hit's cosine against logistic confidence models. Prints and saves the figures.

    .venv/bin/python benchmarks/retrieval.py [--corpus bundled|18f] [--out FILE.json] [--work DIR]

Variants: `before` fuses the vector and full-text (BM25) rankings, 10 candidates each; `after`
adds the same candidates ranked by their cosine plus 0.3 times their best sentence's share of the
question's words, found at query time (`policyfresh.serve.search.retrieve`); the others vary one
thing around them. Every variant searches the same index: passages cost no build time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np

from policyfresh.index.chunking import Chunker
from policyfresh.index.chunks import refresh_chunks
from policyfresh.index.embedding import Embedder
from policyfresh.index.vectors import open_vectors, sync_vectors
from policyfresh.ingest.documents import ingest_documents, read_documents
from policyfresh.quality import calibration
from policyfresh.quality.evaluation import EVAL_K, retrieval_checks
from policyfresh.quality.golden import GoldenCase, load_golden
from policyfresh.serve import search as search_module
from policyfresh.serve.confidence import FEATURES, SIGNALS, features
from policyfresh.serve.passages import sentences, with_passages
from policyfresh.serve.search import Retrieval, by_passage, candidates, fuse, pool
from policyfresh.store.config import Settings

REPO = Path(__file__).resolve().parents[1]
HANDBOOK = REPO.parent / "shared" / "corpora" / "18f-handbook" / "pages"
CORPORA = {
    "bundled": (REPO / "policies", REPO / "evals" / "golden_cases.csv"),
    "18f": (HANDBOOK, REPO / "evals" / "18f_golden_cases.csv"),
}
REPEATS = 3  # each timing is the fastest of this many runs: the machine is shared
DENSE_TOP = 3  # fused hits whose sentences the dense variant encodes at query time
Retriever = Callable[[object, str, np.ndarray], Retrieval]


def weighted(weight: float | None) -> Callable[[str, list[dict]], list[dict]]:
    """Candidates by cosine plus `weight` times their best sentence's share (None: the best
    sentence alone)."""

    def rank(question: str, rows: list[dict]) -> list[dict]:
        scored = with_passages(question, rows)
        if weight is None:
            return sorted(scored, key=lambda r: -r["_passage"])
        return sorted(scored, key=lambda r: -(r["_similarity"] + weight * r["_passage"]))

    return rank


def fused(
    rankings: Callable[[str, list[dict], list[dict]], tuple[list[dict], ...]],
    limit: int = search_module.CANDIDATES,
) -> Retriever:
    """Fusion of the rankings `rankings(question, nearest, matched)` returns."""

    def retrieve(dataset, question: str, vector: np.ndarray) -> Retrieval:
        nearest, matched = candidates(dataset, question, vector, limit, None)
        rows = fuse(rankings(question, nearest, matched))[:EVAL_K]
        return Retrieval(rows, nearest, matched, by_passage(question, pool(nearest, matched)))

    return retrieve


def dense_sentences(embedder: Embedder) -> Retriever:
    """The top DENSE_TOP fused hits re-ordered by their best sentence's cosine, each sentence
    encoded at query time with its heading: the model's own passage precision, and its cost."""

    def retrieve(dataset, question: str, vector: np.ndarray) -> Retrieval:
        found = search_module.retrieve(dataset, question, vector, EVAL_K, None)
        top = found.rows[:DENSE_TOP]
        texts = [[f"{r['heading']}\n{w}" for w in sentences(r["text"] or "")] for r in top]
        encoded = embedder.encode([t for group in texts for t in group])
        best, start = [], 0
        for group in texts:
            best.append(float((encoded[start : start + len(group)] @ vector).max()))
            start += len(group)
        order = sorted(range(len(top)), key=lambda i: -best[i])
        rows = [top[i] for i in order] + found.rows[DENSE_TOP:]
        return Retrieval(rows, found.nearest, found.matched, found.passages)

    return retrieve


def served(limit: int = search_module.CANDIDATES) -> Retriever:
    """policyfresh's retrieval, with `limit` candidates per retriever."""

    def retrieve(dataset, question: str, vector: np.ndarray) -> Retrieval:
        kept, search_module.CANDIDATES = search_module.CANDIDATES, limit
        try:
            return search_module.retrieve(dataset, question, vector, EVAL_K, where=None)
        finally:
            search_module.CANDIDATES = kept

    return retrieve


def variants(embedder: Embedder) -> dict[str, Retriever]:
    def third(weight: float | None) -> Callable:
        return lambda q, n, m: (n, m, weighted(weight)(q, pool(n, m)))

    return {
        "before: vector + BM25, 10 candidates": fused(lambda q, n, m: (n, m)),
        "vector + BM25, 20 candidates": fused(lambda q, n, m: (n, m), 20),
        "vector only": fused(lambda q, n, m: (n,)),
        "BM25 only": fused(lambda q, n, m: (m,)),
        "vector + BM25 + the candidates by cosine": fused(third(0.0)),
        "vector + BM25 + the candidates by best sentence": fused(third(None)),
        "vector + BM25 + the candidates by cosine + 0.1 x best sentence": fused(third(0.1)),
        "after: vector + BM25 + the candidates by cosine + 0.3 x best sentence": served(),
        "vector + BM25 + the candidates by cosine + 1.0 x best sentence": fused(third(1.0)),
        "after, 20 candidates": served(20),
        "after, then the top 3 by best sentence encoded at query time": dense_sentences(embedder),
    }


def fastest(run: Callable[[], object]) -> tuple[object, float]:
    """What `run` returns, and its fastest time of REPEATS in milliseconds."""
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        value = run()
        times.append((time.perf_counter() - started) * 1000)
    return value, min(times)


def build(policies: Path, home: Path, embedder: Embedder) -> tuple[Settings, float]:
    settings = Settings.load(home=home, policies=policies, golden="none")
    started = time.perf_counter()
    ingest_documents(settings, "benchmark")
    refresh_chunks(settings, Chunker.for_model(embedder), "benchmark")
    sync_vectors(settings, embedder)
    return settings, time.perf_counter() - started


def score(cases: list[GoldenCase], answers: list[Retrieval]) -> dict[str, float]:
    answerable = [
        retrieval_checks(c, [(h["doc_id"], h["text"]) for h in found.rows])
        for c, found in zip(cases, answers, strict=True)
        if not c.must_escalate
    ]

    def mean(key: str) -> float:
        return round(statistics.fmean(float(a[key]) for a in answerable), 4)

    return {
        "hit_at_1": mean("hit_at_1"),
        "hit_at_5": mean("hit_at_5"),
        "mrr": mean("reciprocal_rank"),
        "evidence_recall_at_1": round(
            statistics.fmean(float(a["evidence_rank"] == 1) for a in answerable), 4
        ),
        "evidence_recall_at_5": mean("evidence_at_5"),
    }


# Sets of signals a logistic model was fitted on, the kept one (`FEATURES`) first
FEATURE_SETS = {
    "kept": FEATURES,
    "every signal": SIGNALS,
    "the issue's six": SIGNALS[:6],
    "the best hit's cosine alone": ("top_cosine",),
    "cosine and unmatched words": ("top_cosine", "unmatched_terms"),
    "cosine and share of the top 5 from the best hit's document": ("top_cosine", "same_document"),
    "cosine and best sentence": ("top_cosine", "passage_overlap"),
}


def escalation(x: np.ndarray, answerable: np.ndarray) -> dict:
    """Escalation on held-out folds: the best hit's cosine, and logistic models over sets of
    signals, each at the threshold that answers at least 95% of the answerable cases."""
    cosine = x[:, SIGNALS.index("top_cosine")]
    figures = {"old cosine threshold 0.42": calibration.held_out(cosine, answerable, 0.42)}
    threshold = calibration.choose_threshold(cosine, answerable)
    figures["cosine"] = {"threshold": threshold,
                         **calibration.held_out(cosine, answerable, threshold)}  # fmt: skip
    for name, chosen in FEATURE_SETS.items():
        columns = [SIGNALS.index(f) for f in chosen]
        probabilities = calibration.out_of_fold(x[:, columns], answerable)
        threshold = calibration.choose_threshold(probabilities, answerable)
        figures[f"model, {name}"] = {
            "features": list(chosen),
            "threshold": threshold,
            **calibration.held_out(probabilities, answerable, threshold),
            "ece": calibration.expected_calibration_error(probabilities, answerable.astype(float)),
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "retrieval.json"))
    parser.add_argument("--corpus", choices=sorted(CORPORA), help="one corpus only (default both)")
    parser.add_argument("--work", help="homes of an earlier run to search again: each refresh "
                        "then has nothing to do, so its build time is a no-op's")  # fmt: skip
    args = parser.parse_args()
    embedder = Embedder()
    embedder.load()
    work = Path(args.work or tempfile.mkdtemp(prefix="policyfresh-retrieval-"))
    figures: dict = {
        "date": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "model_id": embedder.model_id,
        "corpora": {},
    }
    signals: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for corpus, (policies, golden_file) in CORPORA.items():
        if args.corpus and corpus != args.corpus:
            continue
        golden = load_golden(golden_file)
        home, seconds = build(policies, work / corpus, embedder)
        rows = open_vectors(home).count_rows()
        print(f"{corpus}: built {rows} chunks in {seconds:.1f}s")
        known = set(read_documents(home)["doc_id"])
        cases = [c for c in golden.cases if set(c.source_policy) <= known]
        vectors = embedder.encode([c.user_question for c in cases])
        dataset = open_vectors(home).to_lance()
        results, timings = {}, {}
        for name, retriever in variants(embedder).items():
            answers, timings[name] = [], []
            for case, vector in zip(cases, vectors, strict=True):
                found, ms = fastest(partial(retriever, dataset, case.user_question, vector))
                answers.append(found)
                timings[name].append(ms)
            results[name] = score(cases, answers)
            if name.startswith("after:"):
                found = [
                    features(c.user_question, a.rows, a.nearest, a.matched, a.passages)
                    for c, a in zip(cases, answers, strict=True)
                ]
                signals[corpus] = (
                    np.array([[row[f] for f in SIGNALS] for row in found]),
                    np.array([not c.must_escalate for c in cases]),
                )
        # Encoding is timed after the retrievals: right after a build, the machine is still busy.
        encoding = [fastest(partial(embedder.encode, [c.user_question]))[1] for c in cases]
        for name, result in results.items():
            result["retrieval_p50_ms"] = round(statistics.median(timings[name]), 1)
            result["query_p50_ms"] = round(  # the question encoded, then retrieved
                statistics.median(e + r for e, r in zip(encoding, timings[name], strict=True)), 1
            )
            print(f"  {name:<66} " + "  ".join(f"{k} {v}" for k, v in result.items()))
        figures["corpora"][corpus] = {
            "cases": len(cases),
            "chunks": rows,
            "build_seconds": round(seconds, 1),
            "variants": results,
        }
    both = tuple(np.concatenate(parts) for parts in zip(*signals.values(), strict=True))
    figures["escalation"] = {
        "held_out": "stratified 5-fold, each case scored by a model fitted without its fold",
        "keep_answerable": calibration.KEEP_ANSWERABLE,
        "both_sets": escalation(*both) if len(signals) > 1 else None,
        "per_corpus": {corpus: escalation(*pair) for corpus, pair in signals.items()},
    }
    print("escalation:", json.dumps(figures["escalation"], indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
