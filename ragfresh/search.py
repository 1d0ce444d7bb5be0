"""Hybrid search over the vector index, with a receipt per hit and a trace per search."""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import lancedb
import numpy as np
import polars as pl

from ragfresh import delta_store
from ragfresh.config import Settings
from ragfresh.embedding import Embedder
from ragfresh.errors import RagfreshError
from ragfresh.releases import served_release
from ragfresh.tables import RETRIEVAL_TRACES, empty_frame
from ragfresh.vectors import METADATA, open_vectors, read_vector_rows


class IndexNotBuiltError(RagfreshError):
    """Search before the first build or the first release: there is nothing to serve."""


class ModelMismatchError(RagfreshError):
    """The index was embedded by another model than the one asked to embed the question."""


# Reciprocal rank fusion: each retriever's candidates score 1 / (RRF_K + rank), summed.
RRF_K = 60
CANDIDATES = 10  # candidates each retriever gives the fusion (at least k): measured best
COLUMNS = [*(c for c in METADATA if c != "embed_text"), "model_id", "vector"]


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk and everything needed to reconstruct it later."""

    doc_id: str
    doc_version: int
    chunk_id: str
    heading: str
    char_start: int
    char_end: int
    owner: list[str]
    classification: str
    score: float
    model_id: str
    index_version: int
    release: int | None
    trace_id: str
    text: str


@dataclass(frozen=True)
class SearchResult:
    trace_id: str
    question: str
    index_version: int
    release: int | None
    confidence: float
    latency_ms: float
    hits: list[Hit]

    def to_dict(self) -> dict:
        return asdict(self)


def hit_records(hits: list[Hit]) -> list[dict]:
    """Hits as traces and evaluation results store them: rank, chunk, document version, score."""
    return [
        {
            "rank": rank,
            "chunk_id": h.chunk_id,
            "doc_id": h.doc_id,
            "doc_version": h.doc_version,
            "score": h.score,
        }
        for rank, h in enumerate(hits, start=1)
    ]


def open_index(settings: Settings, version: int | None) -> tuple[lancedb.table.Table, int | None]:
    """The table pinned at the served release (or at `version`, a candidate) and the release."""
    table = open_vectors(settings)
    if table is None:
        raise IndexNotBuiltError(f"no vector index under {settings.vectors_uri}: run a refresh")
    release = None
    if version is None:
        release = version = served_release(table)
        if release is None:
            raise IndexNotBuiltError(
                f"no release of {settings.vectors_uri} is published yet: run a refresh; "
                "`ragfresh releases` says why a candidate was not published"
            )
    return open_vectors(settings, version=version), release


def retrieve(table: lancedb.table.Table, question: str, vector: np.ndarray, k: int) -> list[dict]:
    """Top k rows by reciprocal rank fusion of vector and full-text (BM25) candidates, each
    with `_score` (the fusion score) and `_similarity` (cosine of its vector to the question)."""
    limit = max(k, CANDIDATES)
    by_vector = table.search(vector, query_type="vector").distance_type("cosine")
    by_words = table.search(question, query_type="fts")
    rankings = [  # naming the score columns keeps Lance from warning that it adds them
        by_vector.select([*COLUMNS, "_distance"]).limit(limit).to_arrow().to_pylist(),
        by_words.select([*COLUMNS, "_score"]).limit(limit).to_arrow().to_pylist(),
    ]
    scores: dict[str, float] = {}
    rows: dict[str, dict] = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking, start=1):
            scores[row["chunk_id"]] = scores.get(row["chunk_id"], 0.0) + 1 / (RRF_K + rank)
            rows.setdefault(row["chunk_id"], row)
    top = sorted(scores, key=lambda chunk: -scores[chunk])[:k]
    return [
        rows[c] | {"_score": scores[c], "_similarity": float(np.dot(rows[c]["vector"], vector))}
        for c in top
    ]


def search_many(
    settings: Settings,
    embedder: Embedder,
    questions: list[str],
    k: int = 5,
    caller: str = "cli",
    version: int | None = None,
) -> list[SearchResult]:
    """Answer each question from the served release (or a candidate `version`, for the
    evaluation); one trace row each, one commit."""
    if not questions:
        return []
    table, release = open_index(settings, version)
    version = table.version
    models = set(read_vector_rows(table, ["model_id"])["model_id"].unique())
    if models - {embedder.model_id}:
        raise ModelMismatchError(
            f"index version {version} holds vectors of {sorted(models)}, not {embedder.model_id}: "
            "refresh the index with this model first"
        )
    embedder.load()
    results, traces = [], []
    for question in questions:
        started = time.perf_counter()
        vector = embedder.encode([question])[0]
        rows = retrieve(table, question, vector, k)
        latency = (time.perf_counter() - started) * 1000
        trace_id = uuid.uuid4().hex
        hits = [
            Hit(
                doc_id=r["doc_id"],
                doc_version=r["doc_version"],
                chunk_id=r["chunk_id"],
                heading=r["heading"],
                char_start=r["char_start"],
                char_end=r["char_end"],
                owner=r["owners"],
                classification=r["classification"],
                score=round(r["_score"], 6),
                model_id=r["model_id"],
                index_version=version,
                release=release,
                trace_id=trace_id,
                text=r["text"],
            )
            for r in rows
        ]
        confidence = round(max((r["_similarity"] for r in rows), default=0.0), 4)
        results.append(
            SearchResult(trace_id, question, version, release, confidence, round(latency, 2), hits)
        )
        traces.append(
            {
                "trace_id": trace_id,
                "searched_at": datetime.now(tz=UTC),
                "question": question,
                "question_sha256": hashlib.sha256(question.encode()).hexdigest(),
                "k": k,
                "hits": hit_records(hits),
                "index_version": version,
                "model_id": embedder.model_id,
                "latency_ms": latency,
                "caller": caller,
                "release": release,
            }
        )
    frame = pl.DataFrame(traces, schema=empty_frame(RETRIEVAL_TRACES).schema)
    delta_store.append(
        RETRIEVAL_TRACES,
        settings.table_uri(RETRIEVAL_TRACES.name),
        frame,
        run_id=f"search:{caller}",
    )
    return results


def search(
    settings: Settings, embedder: Embedder, question: str, k: int = 5, caller: str = "app"
) -> SearchResult:
    """The Python entry point for applications: one question, hits with receipts."""
    return search_many(settings, embedder, [question], k=k, caller=caller)[0]
