"""Keep `policy_chunks` in step with current documents: re-chunk only what has a new version."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TypeVar

import polars as pl

from policyfresh.index.chunking import Chunker, Layout
from policyfresh.index.holds import (
    VERSION,
    attempt_id,
    failing_documents,
    new_holds,
    standing_holds,
    write_holds,
)
from policyfresh.ingest.documents import read_documents
from policyfresh.ingest.pii import PiiDetectorError, PiiSpan
from policyfresh.ingest.pii_allow import load_allow_list
from policyfresh.store import delta_store
from policyfresh.store.config import CLASSIFICATIONS, Settings
from policyfresh.store.locks import writer_lock
from policyfresh.store.sql import in_list
from policyfresh.store.tables import POLICY_CHUNKS, empty_frame

log = logging.getLogger(__name__)
T = TypeVar("T")
U = TypeVar("U")

APPLIED_PII_RULES = "policyfresh.pii_rules"  # table property: the rules the chunks follow
RAW_PII_IN_VECTOR_HISTORY = "policyfresh.raw_pii_in_vector_history"  # set until vectors forget it


@dataclass(frozen=True)
class ChunkResult:
    documents_rechunked: int
    documents_removed: int
    inserted: int
    updated: int
    deleted: int
    blocked: int
    total_chunks: int
    largest_chunk_tokens: int
    rescan_changed: int  # new chunks of rescanned documents: text a detector change redacted anew
    held: list[dict] = field(default_factory=list)  # doc_id, doc_version, owners, reasons


def chunking_id(settings: Settings, chunker: Chunker) -> str:
    """The chunker and the PII rules together: a change to either re-chunks every document."""
    rules = hashlib.sha256(json.dumps(settings.pii_rules, sort_keys=True).encode()).hexdigest()
    return f"{chunker.chunker_id}/pii-{rules[:8]}"


def read_chunks(settings: Settings, columns: list[str] | None = None) -> pl.DataFrame:
    return delta_store.read_table(
        settings.table_uri(POLICY_CHUNKS.name), POLICY_CHUNKS.schema, columns
    )


def unchunked_documents(
    settings: Settings, documents: pl.DataFrame, config_id: str
) -> pl.DataFrame:
    """Current documents whose current version has no chunks under this configuration and is
    not held back under it."""
    done = read_chunks(settings, ["doc_id", "doc_version", "chunker_id"]).unique()
    done = done.filter(pl.col("chunker_id") == config_id)
    held = standing_holds(settings, documents, attempt_id(config_id))
    return documents.join(done, on=VERSION, how="anti").join(held, on=VERSION, how="anti")


def oversized_chunks(settings: Settings, max_tokens: int) -> int:
    """Chunks longer than the model reads: the model would silently truncate them."""
    chunks = read_chunks(settings, ["token_count"])
    return chunks.filter(pl.col("token_count") > max_tokens).height


def _record_rules(settings: Settings, run_id: str) -> None:
    """Record on the table the PII rules its chunks now follow. If a classification that was
    stored raw (`allow`) no longer is, its raw text is still in earlier table versions: they
    are forgotten, and the vector table is marked to forget its own once re-embedded."""
    uri = settings.table_uri(POLICY_CHUNKS.name)
    delta = delta_store.open_table(uri)
    if delta is None:
        return
    now = {c: settings.pii_action(c) for c in CLASSIFICATIONS}
    applied = json.dumps(now, sort_keys=True)
    recorded = delta.metadata().configuration.get(APPLIED_PII_RULES)
    if recorded == applied:
        return
    before = json.loads(recorded) if recorded else now
    tightened = [c for c in CLASSIFICATIONS if before.get(c) == "allow" and now[c] != "allow"]
    marks = {APPLIED_PII_RULES: applied}
    if tightened:
        log.warning("PII rules tightened for %s: forgetting raw chunk history", tightened)
        delta_store.forget_history(uri, run_id)
        marks[RAW_PII_IN_VECTOR_HISTORY] = "true"
    delta_store.set_properties(delta_store.open_table(uri), marks, run_id)  # history gone first


def _rows(chunker: Chunker, doc: dict, layout: Layout, config_id: str, run_id: str) -> list[dict]:
    return [
        {
            **asdict(c),
            "doc_id": doc["doc_id"],
            "doc_version": doc["doc_version"],
            "text_sha256": (
                hashlib.sha256(c.embed_text.encode()).hexdigest() if c.embed_text else None
            ),
            "owners": doc["owners"],
            "classification": doc["classification"],
            "chunker_id": config_id,
            "run_id": run_id,
        }
        for c in chunker.split(layout)
    ]


def _guarded(
    items: Iterable[tuple[dict, T]], crashed: dict[str, str], work: Callable[[dict, T], U]
) -> Iterator[tuple[dict, U]]:
    """`work(doc, item)` for each document; one whose work raises is recorded in `crashed` and
    the others go on. A detector that cannot run stops all: nothing may go unscanned."""
    for doc, item in items:
        try:
            yield doc, work(doc, item)
        except PiiDetectorError:
            raise
        except Exception as exc:
            crashed[doc["doc_id"]] = f"chunking raised {type(exc).__name__}"
            log.error("could not chunk %s: %s", doc["doc_id"], type(exc).__name__)


def _rescan_changed(settings: Settings, stale: pl.DataFrame, new_chunks: pl.DataFrame) -> int:
    """Chunks of documents versioned only by a rescan (PII detector or allow list changed) whose
    redacted text is new: chunk ids are text-addressed, so these are the ones embedded anew."""
    rescanned = stale.filter(pl.col("change") == "rescanned")["doc_id"]
    if rescanned.is_empty():
        return 0
    known = read_chunks(settings, ["chunk_id"])["chunk_id"]
    return new_chunks.filter(
        pl.col("doc_id").is_in(rescanned.implode())
        & ~pl.col("chunk_id").is_in(known.implode())
        & (pl.col("pii_action") != "blocked")
    ).height


def refresh_chunks(settings: Settings, chunker: Chunker, run_id: str) -> ChunkResult:
    """Re-chunk documents whose version or chunking changed; drop chunks of removed documents.
    A version that fails to chunk or fails a row-level expectation is held back: the
    document keeps its previous chunks and its owner is told why; the rest go on.
    One writer at a time: a merge computed from documents another refresh has since moved on
    from would delete that refresh's newer chunks."""
    with writer_lock(settings, POLICY_CHUNKS.name):
        return _refresh(settings, chunker, run_id)


def _refresh(settings: Settings, chunker: Chunker, run_id: str) -> ChunkResult:
    config_id = chunking_id(settings, chunker)
    attempt = attempt_id(config_id)
    documents = read_documents(settings)
    stale = unchunked_documents(settings, documents, config_id)
    chunked = read_chunks(settings, ["doc_id", "doc_version"]).unique()
    removed = sorted(set(chunked["doc_id"]) - set(documents["doc_id"]))
    allow = load_allow_list(settings.pii_allow_file)[0]  # as the documents were scanned with
    rows: list[dict] = []
    crashed: dict[str, str] = {}

    def layout(doc: dict, _: None) -> Layout:
        spans = [PiiSpan(**s) for s in doc["pii_spans"]]
        action = settings.pii_action(doc["classification"])
        return chunker.layout(doc["doc_id"], doc["text"], spans, action, doc["title"] or "", allow)

    laid_out = list(_guarded(((d, None) for d in stale.iter_rows(named=True)), crashed, layout))
    laid_out.sort(key=lambda pair: pair[1].capacity)  # each capacity's splitter built once
    split = _guarded(laid_out, crashed, lambda d, lay: _rows(chunker, d, lay, config_id, run_id))
    for number, (_, doc_rows) in enumerate(split, start=1):
        rows += doc_rows
        if number % 50 == 0:
            log.info("chunked %d/%d documents", number, stale.height)
    new_chunks = pl.DataFrame(rows, schema=empty_frame(POLICY_CHUNKS).schema)
    failures = failing_documents(stale, new_chunks) if rows else {}
    served = dict(chunked.iter_rows())
    held = new_holds(stale, failures, crashed, served, attempt, run_id)
    new_chunks = new_chunks.filter(~pl.col("doc_id").is_in(held["doc_id"].implode()))
    write_holds(settings, pl.concat([standing_holds(settings, documents, attempt), held]), run_id)
    done = sorted(set(stale["doc_id"]) - set(held["doc_id"]))
    touched = sorted(set(done) | set(removed))
    rescan_changed = _rescan_changed(settings, stale, new_chunks)
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
                .when_not_matched_by_source_delete(predicate=f"t.doc_id IN ({in_list(touched)})")
            ),
        )
    _record_rules(settings, run_id)
    return ChunkResult(
        documents_rechunked=len(done),
        documents_removed=len(removed),
        inserted=metrics.get("num_target_rows_inserted", 0),
        updated=metrics.get("num_target_rows_updated", 0),
        deleted=metrics.get("num_target_rows_deleted", 0),
        blocked=int((new_chunks["pii_action"] == "blocked").sum()),
        total_chunks=read_chunks(settings, ["chunk_id"]).height,
        largest_chunk_tokens=int(new_chunks["token_count"].max() or 0),
        rescan_changed=rescan_changed,
        held=held.select("doc_id", "doc_version", "owners", "reasons").to_dicts(),
    )
