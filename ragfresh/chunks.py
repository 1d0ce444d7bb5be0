"""Keep `policy_chunks` in step with current documents: re-chunk only what has a new version."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass

import polars as pl

from ragfresh import delta_store
from ragfresh.chunking import Chunker
from ragfresh.config import Settings
from ragfresh.documents import read_documents
from ragfresh.pii import PiiSpan
from ragfresh.tables import POLICY_CHUNKS, empty_frame

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkResult:
    documents_rechunked: int
    documents_removed: int
    inserted: int
    updated: int
    deleted: int
    blocked: int
    total_chunks: int
    max_tokens: int


def sql_list(values: list[str]) -> str:
    """A SQL `IN` list of string literals, quotes escaped."""
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def read_chunks(settings: Settings, columns: list[str] | None = None) -> pl.DataFrame:
    return delta_store.read_table(
        settings.table_uri(POLICY_CHUNKS.name), POLICY_CHUNKS.schema, columns
    )


def refresh_chunks(settings: Settings, chunker: Chunker, run_id: str) -> ChunkResult:
    """Re-chunk documents whose version or chunking changed; drop chunks of removed documents."""
    documents = read_documents(settings)
    existing = read_chunks(settings, ["doc_id", "doc_version", "chunker_id"]).unique()
    up_to_date = existing.filter(pl.col("chunker_id") == chunker.chunker_id)
    stale = documents.join(up_to_date, on=["doc_id", "doc_version"], how="anti")
    removed = sorted(set(existing["doc_id"]) - set(documents["doc_id"]))
    rows = []
    for number, doc in enumerate(stale.iter_rows(named=True), start=1):
        spans = [PiiSpan(**s) for s in doc["pii_spans"]]
        action = settings.pii_action(doc["classification"])
        for c in chunker.chunk(doc["doc_id"], doc["text"], spans, action):
            rows.append(
                {
                    **asdict(c),
                    "doc_id": doc["doc_id"],
                    "doc_version": doc["doc_version"],
                    "text_sha256": hashlib.sha256(c.text.encode()).hexdigest() if c.text else None,
                    "owners": doc["owners"],
                    "classification": doc["classification"],
                    "chunker_id": chunker.chunker_id,
                    "run_id": run_id,
                }
            )
        if number % 50 == 0:
            log.info("chunked %d/%d documents", number, stale.height)
    new_chunks = pl.DataFrame(rows, schema=empty_frame(POLICY_CHUNKS).schema)
    touched = sorted(set(stale["doc_id"]) | set(removed))
    metrics = {}
    if touched:
        metrics = delta_store.merge(
            POLICY_CHUNKS,
            settings.table_uri(POLICY_CHUNKS.name),
            new_chunks,
            run_id,
            lambda m: (
                m.when_matched_update_all()
                .when_not_matched_insert_all()
                .when_not_matched_by_source_delete(predicate=f"t.doc_id IN ({sql_list(touched)})")
            ),
        )
    return ChunkResult(
        documents_rechunked=stale.height,
        documents_removed=len(removed),
        inserted=metrics.get("num_target_rows_inserted", 0),
        updated=metrics.get("num_target_rows_updated", 0),
        deleted=metrics.get("num_target_rows_deleted", 0),
        blocked=int((new_chunks["pii_action"] == "blocked").sum()),
        total_chunks=read_chunks(settings, ["chunk_id"]).height,
        max_tokens=int(new_chunks["token_count"].max() or 0),
    )
