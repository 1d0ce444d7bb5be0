"""The schemas of ragfresh's tables, with column descriptions and PII tags, in one place."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
PII_SPAN = pa.struct([("entity_type", pa.string()), ("start", pa.int64()), ("end", pa.int64())])


def col(name: str, dtype: pa.DataType, description: str, pii: str = "none") -> pa.Field:
    """A column whose metadata carries its description and PII tag (none, contains, redacted)."""
    return pa.field(name, dtype, metadata={"description": description, "pii": pii})


@dataclass(frozen=True)
class TableDef:
    name: str
    description: str
    owner: str
    schema: pa.Schema
    key: tuple[str, ...]


POLICY_DOCUMENTS = TableDef(
    name="policy_documents",
    description="Every version of every policy document, with owners, classification and PII.",
    owner="team:data-platform",
    key=("doc_id", "doc_version"),
    schema=pa.schema([
        col("doc_id", pa.string(), "POSIX path of the file relative to the policies root"),
        col("doc_version", pa.int64(), "1 for the first ingested content, +1 per change"),
        col("is_current", pa.bool_(), "True on the latest version of the document"),
        col("is_deleted", pa.bool_(), "True on a tombstone: the file was removed"),
        col("change", pa.string(), "added, changed, governance, rescanned (PII) or deleted"),
        col("content_sha256", pa.string(), "sha256 of the file's bytes"),
        col("title", pa.string(), "Front matter title, else first heading, else file name"),
        col("owners", pa.list_(pa.string()), "Owning teams or people; empty means unowned"),
        col("classification", pa.string(), "public, internal, confidential or restricted"),
        col("source_path", pa.string(), "Where the file was read from"),
        col("format", pa.string(), "markdown, text, html, pdf or docx"),
        col("size_bytes", pa.int64(), "File size in bytes"),
        col("modified_at", TS, "File modification time"),
        col("ingested_at", TS, "When this version was written"),
        col("pii_spans", pa.list_(PII_SPAN), "Detected PII: type and character span in text"),
        col("pii_detector", pa.string(), "Detector configuration that found pii_spans"),
        col("text", pa.string(), "Extracted text, original and unredacted", pii="contains"),
        col("run_id", pa.string(), "Dagster run (or CLI invocation) that wrote this version"),
    ]),
)  # fmt: skip

INGEST_ERRORS = TableDef(
    name="ingest_errors",
    description="Files that could not be ingested, with the reason; the run went on without them.",
    owner="team:data-platform",
    key=("path", "content_sha256", "reason"),
    schema=pa.schema([
        col("path", pa.string(), "POSIX path relative to the policies root"),
        col("content_sha256", pa.string(), "sha256 of the bad file's bytes, when readable"),
        col("reason", pa.string(), "Why the file was not ingested"),
        col("error_at", TS, "When the error was first seen"),
        col("run_id", pa.string(), "Run that first saw it"),
    ]),
)  # fmt: skip

POLICY_CHUNKS = TableDef(
    name="policy_chunks",
    description="Current chunks of current documents, PII redacted, sized for the model.",
    owner="team:data-platform",
    key=("chunk_id",),
    schema=pa.schema([
        col("chunk_id", pa.string(), "Hash of document, text and repeat: unchanged text keeps it"),
        col("doc_id", pa.string(), "Document the chunk belongs to"),
        col("doc_version", pa.int64(), "Document version the offsets refer to"),
        col("chunk_index", pa.int64(), "Position of the chunk in the document"),
        col("heading", pa.string(), "Markdown heading path above the chunk, ' > ' separated"),
        col("char_start", pa.int64(), "Start offset in the document version's text"),
        col("char_end", pa.int64(), "End offset (exclusive) in the document version's text"),
        col("text", pa.string(), "Text as embedded and served; null when blocked", pii="redacted"),
        col("text_sha256", pa.string(), "sha256 of text: what embedding reuse is keyed on"),
        col("token_count", pa.int64(), "Model tokens, special tokens included"),
        col("owners", pa.list_(pa.string()), "Owners of the document"),
        col("classification", pa.string(), "Classification of the document"),
        col("pii_types", pa.list_(pa.string()), "PII types found inside the chunk"),
        col("pii_action", pa.string(), "none, redacted, blocked or allowed"),
        col("chunker_id", pa.string(), "Chunking and PII-rule configuration; a change re-chunks"),
        col("run_id", pa.string(), "Run that wrote the chunk"),
    ]),
)  # fmt: skip

TRACE_HIT = pa.struct([
    ("rank", pa.int64()), ("chunk_id", pa.string()), ("doc_id", pa.string()),
    ("doc_version", pa.int64()), ("score", pa.float64()),
])  # fmt: skip

RETRIEVAL_TRACES = TableDef(
    name="retrieval_traces",
    description="One row per search: what was asked, what was served, from which index version.",
    owner="team:data-platform",
    key=("trace_id",),
    schema=pa.schema([
        col("trace_id", pa.string(), "Receipt id returned with every hit"),
        col("searched_at", TS, "When the search ran"),
        col("question", pa.string(), "The question as asked", pii="contains"),
        col("question_sha256", pa.string(), "sha256 of the question"),
        col("k", pa.int64(), "Hits requested"),
        col("hits", pa.list_(TRACE_HIT), "Hits served: rank, chunk, document version, score"),
        col("index_version", pa.int64(), "LanceDB table version searched"),
        col("model_id", pa.string(), "Model that embedded the question"),
        col("latency_ms", pa.float64(), "Search latency, embedding included"),
        col("caller", pa.string(), "Who searched: cli, an application name"),
    ]),
)  # fmt: skip

TABLES = {t.name: t for t in (POLICY_DOCUMENTS, INGEST_ERRORS, POLICY_CHUNKS, RETRIEVAL_TRACES)}


def empty_frame(table: TableDef) -> pl.DataFrame:
    """A polars frame with the table's columns and no rows."""
    return pl.from_arrow(table.schema.empty_table())
