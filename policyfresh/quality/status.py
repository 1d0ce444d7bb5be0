"""What is stored and whether it reconciles: the numbers `policyfresh status` prints."""

from __future__ import annotations

from typing import Any

from policyfresh.index.chunking import Chunker
from policyfresh.index.chunks import chunking_id, oversized_chunks, read_chunks, unchunked_documents
from policyfresh.index.embedding import Embedder
from policyfresh.index.vectors import open_vectors, reconcile
from policyfresh.ingest.documents import read_documents
from policyfresh.serve.confidence import scorer
from policyfresh.store.config import Settings
from policyfresh.store.locks import lock_location


def index_status(settings: Settings, embedder: Embedder) -> dict[str, Any]:
    """Counts of documents, chunks and vectors, what lags behind, and the index version."""
    table = open_vectors(settings)
    documents = read_documents(settings)
    chunks = read_chunks(settings, ["pii_action"])
    chunker = Chunker.for_model(embedder)
    config_id = chunking_id(settings, chunker)
    return {
        "home": str(settings.home),
        "lake": settings.lake_uri,
        "vectors_uri": settings.vectors_uri,
        "locks": lock_location(settings),
        "reports": str(settings.reports_dir),
        "documents": documents.height,
        "chunks": chunks.height,
        "blocked_chunks": int((chunks["pii_action"] == "blocked").sum()),
        "vectors": table.count_rows() if table else 0,
        "index_version": table.version if table else None,
        "model_id": embedder.model_id,
        "documents_not_chunked": unchunked_documents(settings, documents, config_id).height,
        "chunks_over_token_limit": oversized_chunks(settings, chunker.max_tokens),
        "reconciliation": reconcile(settings, embedder.model_id),
        "confidence": scorer(settings).describe(),
    }
