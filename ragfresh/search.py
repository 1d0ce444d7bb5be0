"""Hybrid search over the vector index, with a receipt per hit and a trace per search."""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import polars as pl

from ragfresh import delta_store
from ragfresh.config import Settings
from ragfresh.embedding import Embedder
from ragfresh.errors import RagfreshError
from ragfresh.tables import RETRIEVAL_TRACES, empty_frame
from ragfresh.vectors import open_vectors, read_vector_rows


class IndexNotBuiltError(RagfreshError):
    """Search before the first build: there is nothing to serve."""


class ModelMismatchError(RagfreshError):
    """The index was embedded by another model than the one asked to embed the question."""


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
    score: float
    model_id: str
    index_version: int
    trace_id: str
    text: str


@dataclass(frozen=True)
class SearchResult:
    trace_id: str
    question: str
    index_version: int
    latency_ms: float
    hits: list[Hit]

    def to_dict(self) -> dict:
        return asdict(self)


def search_many(
    settings: Settings, embedder: Embedder, questions: list[str], k: int = 5, caller: str = "cli"
) -> list[SearchResult]:
    """Answer each question from the same index version; one trace row each, one commit."""
    if not questions:
        return []
    table = open_vectors(settings)
    if table is None:
        raise IndexNotBuiltError(f"no vector index under {settings.vectors_uri}: run a refresh")
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
        rows = table.search(query_type="hybrid").vector(vector).text(question).limit(k).to_polars()
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
                score=round(float(r["_relevance_score"]), 6),
                model_id=r["model_id"],
                index_version=version,
                trace_id=trace_id,
                text=r["text"],
            )
            for r in rows.iter_rows(named=True)
        ]
        results.append(SearchResult(trace_id, question, version, round(latency, 2), hits))
        traces.append(
            {
                "trace_id": trace_id,
                "searched_at": datetime.now(tz=UTC),
                "question": question,
                "question_sha256": hashlib.sha256(question.encode()).hexdigest(),
                "k": k,
                "hits": [
                    {
                        "rank": rank,
                        "chunk_id": h.chunk_id,
                        "doc_id": h.doc_id,
                        "doc_version": h.doc_version,
                        "score": h.score,
                    }
                    for rank, h in enumerate(hits, start=1)
                ],
                "index_version": version,
                "model_id": embedder.model_id,
                "latency_ms": latency,
                "caller": caller,
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
