"""The whole refresh as plain function calls: what the Dagster assets run, stage by stage."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, TypeVar

from policyfresh.index.chunking import Chunker
from policyfresh.index.chunks import refresh_chunks
from policyfresh.index.embedding import Embedder
from policyfresh.index.vectors import sync_vectors
from policyfresh.ingest.documents import ingest_documents
from policyfresh.quality.evaluation import evaluate
from policyfresh.release.publication import publish
from policyfresh.store.config import Settings

T = TypeVar("T")


def refresh(settings: Settings, embedder: Embedder, run_id: str) -> dict[str, Any]:
    """Ingest, re-chunk and re-embed what changed, evaluate the new index and publish it if
    the gate passes; return each stage's counts and seconds."""
    seconds: dict[str, float] = {}

    def stage(name: str, step: Callable[[], T]) -> T:
        started = time.perf_counter()
        value = step()
        seconds[name] = round(time.perf_counter() - started, 3)
        return value

    documents = stage("documents", lambda: ingest_documents(settings, run_id))
    chunker = Chunker.for_model(embedder)
    chunks = stage("chunks", lambda: refresh_chunks(settings, chunker, run_id))
    vectors = stage("vectors", lambda: sync_vectors(settings, embedder))
    evaluation = stage("eval", lambda: evaluate(settings, embedder, run_id))
    release = stage("release", lambda: publish(settings, actor=f"run:{run_id}"))
    return {
        "documents": documents.counts(),
        "chunks": asdict(chunks),
        "vectors": asdict(vectors),
        "eval": evaluation.summary() if evaluation else None,
        "release": asdict(release),
        "seconds": seconds,
    }
