"""Retrieval quality on both golden sets, the retrieval before and after this change side by
side: hit@1, hit@5, MRR and evidence recall@5 over the answerable cases of each variant; then
the escalation threshold calibrated on the confidence of in-scope and out-of-scope questions.
Prints and saves the figures.

    .venv/bin/python benchmarks/retrieval.py [--corpus bundled|18f] [--out FILE.json]

Variants: `before` is LanceDB's built-in hybrid query (each retriever gives k candidates to
its reciprocal rank fusion) over the chunk text alone; `after` is policyfresh's own fusion (the
number of candidates per retriever varied around it) over the text with its title and headings.
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
from pathlib import Path

import numpy as np

from policyfresh.index.chunking import Chunker
from policyfresh.index.chunks import refresh_chunks
from policyfresh.index.embedding import Embedder
from policyfresh.index.vectors import open_vectors, sync_vectors
from policyfresh.ingest.documents import ingest_documents, read_documents
from policyfresh.quality.evaluation import EVAL_K, retrieval_checks
from policyfresh.quality.golden import GoldenCase, load_golden
from policyfresh.serve import search as search_module
from policyfresh.store.config import Settings

REPO = Path(__file__).resolve().parents[1]
HANDBOOK = REPO.parent / "shared" / "corpora" / "18f-handbook" / "pages"
CORPORA = {
    "bundled": (REPO / "policies", REPO / "evals" / "golden_cases.csv"),
    "18f": (HANDBOOK, REPO / "evals" / "18f_golden_cases.csv"),
}
Retriever = Callable[[object, str, np.ndarray], list[dict]]


def lancedb_hybrid(table, question: str, vector: np.ndarray) -> list[dict]:
    """The retrieval before: LanceDB's hybrid query, RRF over k candidates per retriever."""
    query = table.search(query_type="hybrid").vector(vector).text(question).limit(EVAL_K)
    rows = query.to_arrow().to_pylist()
    return [{**r, "_similarity": float(np.dot(r["vector"], vector))} for r in rows]


def fusion(candidates: int) -> Retriever:
    def retrieve(table, question: str, vector: np.ndarray) -> list[dict]:
        search_module.CANDIDATES = candidates
        return search_module.retrieve(table.to_lance(), question, vector, EVAL_K, where=None)

    return retrieve


def single(kind: str) -> Retriever:
    """One retriever alone, for reference."""

    def retrieve(table, question: str, vector: np.ndarray) -> list[dict]:
        query = (
            table.search(vector, query_type="vector").distance_type("cosine")
            if kind == "vector"
            else table.search(question, query_type="fts")
        )
        rows = query.limit(EVAL_K).to_arrow().to_pylist()
        return [{**r, "_similarity": float(np.dot(r["vector"], vector))} for r in rows]

    return retrieve


# (name, index built with title and headings in the embedded text, retriever)
VARIANTS: list[tuple[str, bool, Retriever]] = [
    ("before: LanceDB hybrid, 10 candidates, chunk text", False, lancedb_hybrid),
    ("fusion, 20 candidates, chunk text", False, fusion(20)),
    ("fusion, 50 candidates, chunk text", False, fusion(50)),
    ("vector only, title and headings", True, single("vector")),
    ("full text only, title and headings", True, single("fts")),
    ("after: fusion, 10 candidates, title and headings", True, fusion(10)),
    ("fusion, 20 candidates, title and headings", True, fusion(20)),
    ("fusion, 50 candidates, title and headings", True, fusion(50)),
]


def build(policies: Path, home: Path, embedder: Embedder, context: bool) -> tuple[Settings, float]:
    settings = Settings.load(home=home, policies=policies, golden="none")
    started = time.perf_counter()
    ingest_documents(settings, "benchmark")
    tokenizer = embedder.tokenizer()
    chunker = Chunker(tokenizer, embedder.max_tokens, embedder.model_id, context=context)
    refresh_chunks(settings, chunker, "benchmark")
    sync_vectors(settings, embedder)
    return settings, time.perf_counter() - started


def score(cases: list[GoldenCase], answers: list[list[dict]]) -> dict[str, float]:
    answerable = [
        retrieval_checks(c, [(h["doc_id"], h["text"]) for h in hits])
        for c, hits in zip(cases, answers, strict=True)
        if not c.must_escalate
    ]

    def mean(key: str) -> float:
        return round(statistics.fmean(float(a[key]) for a in answerable), 4)

    return {
        "hit_at_1": mean("hit_at_1"),
        "hit_at_5": mean("hit_at_5"),
        "mrr": mean("reciprocal_rank"),
        "evidence_recall_at_5": mean("evidence_at_5"),
    }


KEEP_ANSWERABLE = 0.9  # an assistant that escalates more answerable questions is not used


def calibrate(confidences: list[tuple[float, bool]]) -> dict:
    """The escalation threshold: the highest that still lets at least KEEP_ANSWERABLE of the
    answerable questions through, so it catches as many must-escalate ones as it can at that
    cost; and, for reference, the one with the best balanced accuracy."""
    sweep = []
    for threshold in np.arange(0.10, 0.61, 0.01):
        caught = [c < threshold for c, must in confidences if must]
        kept = [c >= threshold for c, must in confidences if not must]
        sweep.append({
            "threshold": round(float(threshold), 2),
            "must_escalate_caught": round(statistics.fmean(caught), 4),
            "answerable_kept": round(statistics.fmean(kept), 4),
            "balanced_accuracy": round((statistics.fmean(caught) + statistics.fmean(kept)) / 2, 4),
        })  # fmt: skip
    allowed = [row for row in sweep if row["answerable_kept"] >= KEEP_ANSWERABLE]
    return {
        "chosen": max(allowed, key=lambda row: row["threshold"]) if allowed else None,
        "best_balanced": max(sweep, key=lambda row: row["balanced_accuracy"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "retrieval.json"))
    parser.add_argument("--corpus", choices=sorted(CORPORA), help="one corpus only (default both)")
    args = parser.parse_args()
    embedder = Embedder()
    embedder.load()
    work = Path(tempfile.mkdtemp(prefix="policyfresh-retrieval-"))
    figures: dict = {
        "date": datetime.now(tz=UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "model_id": embedder.model_id,
        "corpora": {},
    }
    confidences: dict[str, list[tuple[float, bool]]] = {}
    for corpus, (policies, golden_file) in CORPORA.items():
        if args.corpus and corpus != args.corpus:
            continue
        golden = load_golden(golden_file)
        homes = {}
        for context in (False, True):
            home = work / f"{corpus}-{'context' if context else 'bare'}"
            homes[context], seconds = build(policies, home, embedder, context)
            print(f"{corpus}: built {'with' if context else 'without'} headers in {seconds:.0f}s")
        known = set(read_documents(homes[True])["doc_id"])
        cases = [c for c in golden.cases if set(c.source_policy) <= known]
        vectors = embedder.encode([c.user_question for c in cases])
        results = {}
        for name, context, retriever in VARIANTS:
            table = open_vectors(homes[context])
            answers = [
                retriever(table, c.user_question, v) for c, v in zip(cases, vectors, strict=True)
            ]
            results[name] = score(cases, answers)
            if name.startswith("after"):
                confidences[corpus] = [
                    (max((h["_similarity"] for h in hits), default=0.0), c.must_escalate)
                    for c, hits in zip(cases, answers, strict=True)
                ]
            print(f"  {name:<52} " + "  ".join(f"{k} {v:.3f}" for k, v in results[name].items()))
        figures["corpora"][corpus] = {"cases": len(cases), "variants": results}
    every = [pair for pairs in confidences.values() for pair in pairs]
    figures["escalation"] = {
        "calibrated_on": "both golden sets together",
        "both_sets": calibrate(every),
        "per_corpus": {k: calibrate(v) for k, v in confidences.items()},
        "confidence_quantiles": {
            corpus: {
                kind: [round(float(q), 3) for q in np.quantile(
                    [c for c, must in pairs if must == (kind == "must_escalate")], [0.1, 0.5, 0.9]
                )]
                for kind in ("answerable", "must_escalate")
            }
            for corpus, pairs in confidences.items()
        },
    }  # fmt: skip
    print("escalation:", json.dumps(figures["escalation"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
