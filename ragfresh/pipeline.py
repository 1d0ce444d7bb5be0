"""The whole refresh as plain function calls: what the Dagster assets run, stage by stage."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ragfresh.chunking import Chunker
from ragfresh.chunks import refresh_chunks
from ragfresh.config import Settings
from ragfresh.documents import ingest_documents
from ragfresh.embedding import Embedder
from ragfresh.vectors import sync_vectors


def refresh(settings: Settings, embedder: Embedder, run_id: str) -> dict[str, Any]:
    """Ingest, re-chunk and re-embed what changed; return each stage's counts."""
    documents = ingest_documents(settings, run_id)
    chunks = refresh_chunks(settings, Chunker.for_model(embedder), run_id)
    vectors = sync_vectors(settings, embedder)
    return {"documents": documents.counts(), "chunks": asdict(chunks), "vectors": asdict(vectors)}
