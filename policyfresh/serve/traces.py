"""Reconstruct a past search: the chunks it served, from the index version and the document
versions it used, and which of those versions are no longer current."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from policyfresh.index.vectors import vectors_dataset
from policyfresh.ingest.documents import read_documents
from policyfresh.store import delta_store
from policyfresh.store.config import Settings
from policyfresh.store.errors import PolicyfreshError
from policyfresh.store.sql import in_list
from policyfresh.store.tables import RETRIEVAL_TRACES


class TraceNotFoundError(PolicyfreshError, LookupError):
    """No trace with that id."""


@dataclass(frozen=True)
class TraceReport:
    trace: dict[str, Any]
    hits: list[dict[str, Any]]
    index_retained: bool

    @property
    def stale_hits(self) -> int:
        return sum(1 for h in self.hits if not h["still_current"])


def served_rows(
    settings: Settings, index_version: int, chunk_ids: list[str], columns: list[str]
) -> list[dict[str, Any]] | None:
    """Columns of these chunks as an index version served them; None when that version is
    no longer kept (compacted away, or dropped by an erasure)."""
    dataset = vectors_dataset(settings, version=index_version)
    if dataset is None:
        return None
    if not chunk_ids:
        return []
    found = dataset.to_table(
        columns=["chunk_id", *columns], filter=f"chunk_id IN ({in_list(chunk_ids)})"
    )
    return found.to_pylist()


def explain_trace(settings: Settings, trace_id: str, api_key_id: str | None = None) -> TraceReport:
    """The trace row plus, per hit, its text at that index version and its document's status.
    With `api_key_id`, a trace of another key is not found, by the same read as an unknown one:
    nothing is rebuilt before the owner is known, so the time taken tells nothing either."""
    where = pl.col("trace_id") == trace_id
    if api_key_id is not None:
        where &= pl.col("api_key_id") == api_key_id
    traces = delta_store.read_table(
        settings.table_uri(RETRIEVAL_TRACES.name), RETRIEVAL_TRACES.schema, where=where
    )
    if traces.is_empty():
        raise TraceNotFoundError(f"no trace {trace_id!r} in {RETRIEVAL_TRACES.name}")
    trace = traces.row(0, named=True)
    hits = trace["hits"]
    ids = [h["chunk_id"] for h in hits if h["chunk_id"] is not None]
    rows = served_rows(settings, trace["index_version"], ids, ["text", "classification"])
    served = {row.pop("chunk_id"): row for row in rows or []}
    versions = read_documents(settings, current_only=False).filter(
        pl.col("doc_id").is_in([h["doc_id"] for h in hits])
    )
    sha = {
        (r["doc_id"], r["doc_version"]): r["content_sha256"] for r in versions.iter_rows(named=True)
    }
    latest = {r["doc_id"]: r for r in versions.filter(pl.col("is_current")).iter_rows(named=True)}
    report = []
    for hit in hits:
        now = latest.get(hit["doc_id"])
        if now is None or now["is_deleted"]:
            status = "document deleted"
        elif now["doc_version"] == hit["doc_version"]:
            status = "current"
        elif now["content_sha256"] == sha.get((hit["doc_id"], hit["doc_version"])):
            status = f"current (version {now['doc_version']} has the same text)"
        else:
            status = f"superseded by version {now['doc_version']}"
        current = status.startswith("current")
        chunk = served.get(hit["chunk_id"], {"text": None, "classification": None})
        report.append({**hit, **chunk, "still_current": current, "status": status})
    trace_fields = {k: v for k, v in trace.items() if k != "hits"}
    return TraceReport(trace=trace_fields, hits=report, index_retained=rows is not None)
