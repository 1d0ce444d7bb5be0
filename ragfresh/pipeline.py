"""The whole refresh as plain function calls: what the Dagster assets run, stage by stage."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ragfresh.chunking import Chunker
from ragfresh.chunks import refresh_chunks
from ragfresh.config import Settings
from ragfresh.documents import ingest_documents
from ragfresh.embedding import Embedder
from ragfresh.evaluation import evaluate
from ragfresh.releases import publish_candidate
from ragfresh.vectors import sync_vectors


def refresh(settings: Settings, embedder: Embedder, run_id: str) -> dict[str, Any]:
    """Ingest, re-chunk and re-embed what changed, evaluate the new index and publish it if
    the gate passes; return each stage's counts."""
    documents = ingest_documents(settings, run_id)
    chunks = refresh_chunks(settings, Chunker.for_model(embedder), run_id)
    vectors = sync_vectors(settings, embedder)
    evaluation = evaluate(settings, embedder, run_id)
    release = publish_candidate(settings, actor=f"run:{run_id}")
    return {
        "documents": documents.counts(),
        "chunks": asdict(chunks),
        "vectors": asdict(vectors),
        "eval": evaluation.summary() if evaluation else None,
        "release": asdict(release),
    }
