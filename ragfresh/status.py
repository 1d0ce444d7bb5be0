"""What is stored and whether it reconciles: the numbers `ragfresh status` prints."""

from __future__ import annotations

from typing import Any

from ragfresh.chunks import read_chunks
from ragfresh.config import Settings
from ragfresh.documents import read_documents
from ragfresh.embedding import Embedder
from ragfresh.vectors import open_vectors, reconcile


def index_status(settings: Settings, embedder: Embedder) -> dict[str, Any]:
    """Counts of documents, chunks and vectors, the reconciliation counts, the index version."""
    table = open_vectors(settings)
    chunks = read_chunks(settings, ["pii_action"])
    return {
        "home": str(settings.home),
        "documents": read_documents(settings).height,
        "chunks": chunks.height,
        "blocked_chunks": int((chunks["pii_action"] == "blocked").sum()),
        "vectors": table.count_rows() if table else 0,
        "index_version": table.version if table else None,
        "model_id": embedder.model_id,
        "reconciliation": reconcile(settings, embedder.model_id),
    }
