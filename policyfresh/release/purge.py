"""Erase one document from everything policyfresh stores: every Delta version, every LanceDB
version and release, its receipts in traces and evaluations, and the owners' reports."""

from __future__ import annotations

import getpass
import logging
import shutil
import uuid
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import polars as pl

from policyfresh.index.vectors import vectors_dataset
from policyfresh.ingest.sources import sha256_bytes
from policyfresh.release.vector_history import forget_vector_history
from policyfresh.store import delta_store
from policyfresh.store.config import Settings
from policyfresh.store.errors import PolicyfreshError
from policyfresh.store.locks import writer_lock
from policyfresh.store.sql import literal
from policyfresh.store.tables import (
    ANSWER_IMPACT,
    DOCUMENT_FRESHNESS,
    EVAL_CASE_RESULTS,
    HELD_DOCUMENTS,
    INGEST_ERRORS,
    POLICY_CHUNKS,
    POLICY_DOCUMENTS,
    PURGE_AUDIT,
    RETRIEVAL_TRACES,
    VECTORS,
    TableDef,
    empty_frame,
)

log = logging.getLogger(__name__)

ERASED = "(erased)"  # stands for the document in receipts that pointed at it
# Tables keyed by document, whose rows of it are deleted; the columns that name it (an
# impact row names it when its text was quoted, or is served now in place of another's).
BY_DOCUMENT = {POLICY_DOCUMENTS: ("doc_id",), POLICY_CHUNKS: ("doc_id",),
               HELD_DOCUMENTS: ("doc_id",), DOCUMENT_FRESHNESS: ("doc_id",),
               INGEST_ERRORS: ("path",), ANSWER_IMPACT: ("doc_id", "new_doc_id")}  # fmt: skip
# Tables whose rows point at it from a list of hits: the hits are redacted, the rows kept.
BY_HIT = (RETRIEVAL_TRACES, EVAL_CASE_RESULTS)


class PurgeError(PolicyfreshError):
    """An erasure that cannot be done as asked; nothing was changed."""


@dataclass(frozen=True)
class PurgeResult:
    purge_id: str
    doc_id: str
    versions: list[int]
    rows_erased: dict[str, int]
    releases_dropped: list[int]
    republished_release: int | None


def purge_document(
    settings: Settings, doc_id: str, reason: str, requested_by: str | None = None
) -> PurgeResult:
    """Erase `doc_id` everywhere, record who asked, when and why, and return what was removed.
    History is given up where it held the text: Delta versions and LanceDB versions before
    the erasure, and releases that served the document (the served one is re-published
    without it). Safe to run again after a crash: it finishes what is left."""
    documents = _read(settings, POLICY_DOCUMENTS, pl.col("doc_id") == doc_id)
    if documents.is_empty() and not _chunks_or_vectors(settings, doc_id):
        raise PurgeError(f"nothing stored for {doc_id!r}: no document, chunk or vector has it")
    _refuse_reingestion(settings, doc_id, set(documents["content_sha256"]))
    requested_by = requested_by or getpass.getuser()
    purge_id = uuid.uuid4().hex
    with ExitStack() as locks:  # every writer of what is erased waits (in one order: no deadlock)
        for name in (POLICY_DOCUMENTS.name, POLICY_CHUNKS.name, VECTORS, RETRIEVAL_TRACES.name,
                     ANSWER_IMPACT.name):  # fmt: skip
            locks.enter_context(writer_lock(settings, name))
        erased = forget_vector_history(settings, purge_id, where=f"doc_id = {literal(doc_id)}")
        rows = {VECTORS: erased.rows_deleted}
        for table, columns in BY_DOCUMENT.items():
            predicate = " OR ".join(f"{column} = {literal(doc_id)}" for column in columns)
            rows[table.name] = delta_store.erase(_uri(settings, table), predicate, purge_id)
        for table in BY_HIT:
            rows[table.name] = _redact_hits(settings, table, doc_id, purge_id)
    # Owners' pages and Data Docs may quote served text: they are rebuilt from what is left.
    shutil.rmtree(settings.reports_dir, ignore_errors=True)
    result = PurgeResult(
        purge_id=purge_id,
        doc_id=doc_id,
        versions=sorted(documents["doc_version"].to_list()),
        rows_erased=rows,
        releases_dropped=erased.releases_dropped,
        republished_release=erased.republished_release,
    )
    _record(settings, result, requested_by, reason)
    log.warning("purged %s (%d versions) for %s", doc_id, len(result.versions), requested_by)
    return result


def _uri(settings: Settings, table: TableDef) -> str:
    return settings.table_uri(table.name)


def _read(settings: Settings, table: TableDef, where: pl.Expr) -> pl.DataFrame:
    return delta_store.read_table(_uri(settings, table), table.schema, where=where)


def _chunks_or_vectors(settings: Settings, doc_id: str) -> bool:
    """Whether an erasure that crashed after the documents left chunks or vectors behind."""
    if _read(settings, POLICY_CHUNKS, pl.col("doc_id") == doc_id).height:
        return True
    dataset = vectors_dataset(settings)
    return dataset is not None and dataset.count_rows(f"doc_id = {literal(doc_id)}") > 0


def _refuse_reingestion(settings: Settings, doc_id: str, stored: set[str]) -> None:
    """The file must be gone or changed: the next refresh would ingest the same text again."""
    path = settings.policies / doc_id
    if path.is_file() and sha256_bytes(path.read_bytes()) in stored:
        raise PurgeError(
            f"{path} still holds a stored version of {doc_id}: the next refresh would ingest "
            "it again. Remove or edit the file first, then purge."
        )


def _redact_hits(settings: Settings, table: TableDef, doc_id: str, purge_id: str) -> int:
    """Rows with a hit on the document keep the hit's rank and score; what it pointed at, and
    any evidence text, is erased."""
    pointed = pl.col("hits").list.eval(pl.element().struct["doc_id"] == doc_id).list.any()
    rows = _read(settings, table, pointed)
    uri = _uri(settings, table)
    if rows.is_empty():  # none left, or a purge that crashed redacted them: history may stay
        delta_store.forget_history(uri, purge_id)
        return 0
    hits = [
        [h | {"chunk_id": None, "doc_id": ERASED, "doc_version": None} if h["doc_id"] == doc_id
         else h for h in row_hits]
        for row_hits in rows["hits"]
    ]  # fmt: skip
    rows = rows.with_columns(hits=pl.Series(hits, dtype=rows.schema["hits"]))
    if "served_evidence" in rows.columns:
        rows = rows.with_columns(served_evidence=pl.lit(None, dtype=pl.String))
    delta_store.merge(table, uri, rows, purge_id, lambda m: m.when_matched_update_all())
    delta_store.forget_history(uri, purge_id)
    return rows.height


def _record(settings: Settings, result: PurgeResult, requested_by: str, reason: str) -> None:
    from policyfresh.ingest.pii import detect_pii, redact

    row = {
        **asdict(result),
        "purged_at": datetime.now(tz=UTC),
        "requested_by": requested_by,
        "reason": redact(reason, detect_pii(reason))[0],
        "rows_erased": [{"key": k, "value": v} for k, v in result.rows_erased.items()],
    }
    frame = pl.DataFrame([row], schema=empty_frame(PURGE_AUDIT).schema)
    delta_store.append(PURGE_AUDIT, _uri(settings, PURGE_AUDIT), frame, run_id=result.purge_id)
