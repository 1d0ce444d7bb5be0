"""The schemas of policyfresh's tables, with column descriptions and PII tags, in one place."""

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

    @property
    def stats_columns(self) -> list[str]:
        """The columns whose min and max go into the Delta log: keys and scalars, never free
        text, since the log outlives the rows (an erased row's text would stay in it)."""
        return [
            f.name
            for f in self.schema
            if f.name in self.key or not (pa.types.is_string(f.type) or pa.types.is_nested(f.type))
        ]


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
        col("text", pa.string(), "Text as served; null when blocked", pii="redacted"),
        col("embed_text", pa.string(), "Title and heading path, then the text: what is embedded "
            "and indexed for full-text search; null when blocked", pii="redacted"),
        col("text_sha256", pa.string(), "sha256 of embed_text: what embedding reuse is keyed on"),
        col("token_count", pa.int64(), "Model tokens of embed_text, special tokens included"),
        col("owners", pa.list_(pa.string()), "Owners of the document"),
        col("classification", pa.string(), "Classification of the document"),
        col("pii_types", pa.list_(pa.string()), "PII types found inside the chunk"),
        col("pii_action", pa.string(), "none, redacted, blocked or allowed"),
        col("chunker_id", pa.string(), "Chunking and PII-rule configuration; a change re-chunks"),
        col("run_id", pa.string(), "Run that wrote the chunk"),
    ]),
)  # fmt: skip

HELD_DOCUMENTS = TableDef(
    name="held_documents",
    description="Documents held back at their last good version, and why: for their owners.",
    owner="team:data-platform",
    key=("doc_id",),
    schema=pa.schema([
        col("doc_id", pa.string(), "Document held back"),
        col("doc_version", pa.int64(), "Its current version, the one not chunked"),
        col("served_version", pa.int64(), "Last good version, still chunked and served; null "
            "when none"),
        col("owners", pa.list_(pa.string()), "Owning teams or people; empty means unowned"),
        col("classification", pa.string(), "Classification of the held version"),
        col("stage", pa.string(), "expectations (a row failed a suite) or chunking (it raised)"),
        col("reasons", pa.list_(pa.string()), "What failed, in words, never a value"),
        col("failures", pa.string(), "JSON: each failed expectation with the key columns of "
            "its failing rows"),
        col("attempt_id", pa.string(), "Chunking and suites configuration of the attempt: a "
            "change to either tries the document again"),
        col("held_at", TS, "When this version was first held"),
        col("run_id", pa.string(), "Run that first held this version"),
    ]),
)  # fmt: skip

HIT = pa.struct([
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
        col("question", pa.string(), "The question, PII replaced by <TYPE>", pii="redacted"),
        col("question_sha256", pa.string(), "HMAC-SHA256 of the question, keyed by the home"),
        col("k", pa.int64(), "Hits requested"),
        col("hits", pa.list_(HIT), "Hits served: rank, chunk, document version, score"),
        col("index_version", pa.int64(), "LanceDB table version searched"),
        col("model_id", pa.string(), "Model that embedded the question"),
        col("latency_ms", pa.float64(), "Search latency, embedding included"),
        col("caller", pa.string(), "Who searched: cli, an application name"),
        col("release", pa.int64(), "Release served (its index version); null for a candidate"),
        col("entitled", pa.list_(pa.string()), "Classifications the caller was entitled to read"),
        col("api_key_id", pa.string(), "keyed HMAC of the API key; null outside the service"),
    ]),
)  # fmt: skip

METRICS = pa.struct([
    ("hit_at_1", pa.float64()), ("hit_at_5", pa.float64()), ("mrr", pa.float64()),
    ("evidence_recall_at_5", pa.float64()), ("hit_at_5_unaffected", pa.float64()),
    ("semantic_similarity", pa.float64()), ("judge_groundedness", pa.float64()),
    ("escalation_accuracy", pa.float64()), ("pass_rate", pa.float64()),
    ("stale_served", pa.int64()), ("pii_hits", pa.int64()), ("superseded_hits", pa.int64()),
    ("duplicate_hits", pa.int64()), ("extra_retrievals", pa.int64()),
    ("latency_p50_ms", pa.float64()), ("latency_p95_ms", pa.float64()),
])  # fmt: skip

EVAL_RUNS = TableDef(
    name="eval_runs",
    description="One row per regression evaluation of a candidate index: metrics and verdict.",
    owner="team:data-platform",
    key=("eval_run_id",),
    schema=pa.schema([
        col("eval_run_id", pa.string(), "Evaluation run id"),
        col("evaluated_at", TS, "When the evaluation ran"),
        col("candidate_version", pa.int64(), "LanceDB version of policy_vectors evaluated"),
        col("release_before", pa.int64(), "Release served when the evaluation ran"),
        col("documents_version", pa.int64(), "Delta version of policy_documents evaluated"),
        col("chunks_version", pa.int64(), "Delta version of policy_chunks evaluated"),
        col("model_id", pa.string(), "Model that embedded the candidate and the questions"),
        col("golden_file", pa.string(), "Golden cases file, as configured"),
        col("golden_sha256", pa.string(), "sha256 of the golden cases file"),
        col("cases", pa.int64(), "Cases evaluated (those whose source policies exist)"),
        col("affected", pa.int64(), "Cases whose source policy or previous hits changed"),
        col("metrics", METRICS, "Run metrics: retrieval, semantic and behavioural"),
        col("verdict", pa.string(), "passed, blocked or unevaluated (no golden cases apply)"),
        col("reasons", pa.list_(pa.string()), "Why the candidate is blocked, case by case"),
        col("skipped", pa.list_(pa.string()), "Cases not evaluated: file, line and reason"),
        col("judge", pa.string(), "LLM judge model, or 'not configured'"),
        col("run_id", pa.string(), "Dagster run (or CLI invocation) that evaluated"),
        col("confidence_model", pa.string(), "What decided escalation: the fitted confidence "
            "model (kept or refitted, and why) or the cosine"),
    ]),
)  # fmt: skip

SOURCE = pa.struct([("doc_id", pa.string()), ("doc_version", pa.int64())])

EVAL_CASE_RESULTS = TableDef(
    name="eval_case_results",
    description="One row per golden case per evaluation: hits, each check's outcome, status.",
    owner="team:data-platform",
    key=("eval_run_id", "case_id"),
    schema=pa.schema([
        col("eval_run_id", pa.string(), "Evaluation run id"),
        col("case_id", pa.string(), "Golden case id"),
        col("case_type", pa.string(), "fact, paraphrase, multi_policy, ambiguous, out_of_scope"),
        col("risk_category", pa.string(), "low, medium or high"),
        col("must_escalate", pa.bool_(), "The corpus cannot answer: a human must"),
        col("sources", pa.list_(SOURCE), "Source policies and their versions when evaluated"),
        col("affected", pa.bool_(), "Its source policy or its previous hits changed"),
        col("affected_reason", pa.string(), "What changed, when affected"),
        col("hits", pa.list_(HIT), "Top 10 hits with document versions and scores"),
        col("hit_at_1", pa.bool_(), "A source policy is the first hit"),
        col("hit_at_5", pa.bool_(), "A source policy is in the top 5"),
        col("reciprocal_rank", pa.float64(), "1 / rank of the first source hit in the top 10"),
        col("evidence_at_5", pa.bool_(), "expected_evidence is in a top-5 hit"),
        col("stale_served", pa.bool_(), "stale_evidence is in a top-10 hit"),
        col("superseded_hits", pa.int64(), "Hits from a document version no longer current"),
        col("pii_hits", pa.int64(), "Hits with raw PII their classification does not allow"),
        col("duplicate_hits", pa.int64(), "Chunks served twice in the top 10"),
        col("retrievals", pa.int64(), "Retrieval calls traced for the case (must be 1)"),
        col("similarity", pa.float64(), "Cosine of expected_answer to the best top-5 text"),
        col("judge_score", pa.float64(), "LLM judge groundedness, null when not configured"),
        col("confidence", pa.float64(), "Confidence the corpus answers, in [0, 1]: the fitted "
            "model's, else the best hit's cosine"),
        col("escalated", pa.bool_(), "confidence under the threshold of what scored it"),
        col("passed", pa.bool_(), "Every check of the case passed"),
        col("status", pa.string(), "pass, fail or needs_review (evidence or source moved)"),
        col("failures", pa.list_(pa.string()), "What failed, in words"),
        col("expected_evidence", pa.string(), "The golden file's evidence phrase"),
        col("served_evidence", pa.string(), "Best source hit's text as served (redacted)",
            pii="redacted"),
        col("trace_id", pa.string(), "Trace of the case's retrieval in retrieval_traces"),
        col("document_rank", pa.int64(), "Rank of the first hit from a source policy in the "
            "top 50; null when none"),
        col("evidence_rank", pa.int64(), "Rank of the first hit holding expected_evidence in "
            "the top 50; null when none"),
    ]),
)  # fmt: skip

RELEASES = TableDef(
    name="releases",
    description="Evaluated candidate indexes; a published one is what search serves.",
    owner="team:data-platform",
    key=("release",),
    schema=pa.schema([
        col("release", pa.int64(), "Release id: the LanceDB version of policy_vectors"),
        col("created_at", TS, "When the candidate was evaluated"),
        col("published_at", TS, "When it was first published; null if never"),
        col("documents_version", pa.int64(), "Delta version of policy_documents"),
        col("chunks_version", pa.int64(), "Delta version of policy_chunks"),
        col("model_id", pa.string(), "Model of its vectors"),
        col("golden_sha256", pa.string(), "Golden cases file it was evaluated with"),
        col("eval_run_id", pa.string(), "Evaluation that decided its verdict"),
        col("verdict", pa.string(), "passed, blocked or unevaluated"),
        col("reasons", pa.list_(pa.string()), "Why it was blocked"),
    ]),
)  # fmt: skip

RELEASE_AUDIT = TableDef(
    name="release_audit",
    description="Every change of the served release: publish and rollback, by whom and why.",
    owner="team:data-platform",
    key=("event_id",),
    schema=pa.schema([
        col("event_id", pa.string(), "Event id"),
        col("at", TS, "When the served release changed"),
        col("action", pa.string(), "publish or rollback"),
        col("release", pa.int64(), "Release served from then on"),
        col("previous_release", pa.int64(), "Release served before; null for the first"),
        col("actor", pa.string(), "Who: a user name, or the run that published"),
        col("reason", pa.string(), "Why"),
    ]),
)  # fmt: skip

DOCUMENT_FRESHNESS = TableDef(
    name="document_freshness",
    description="How long each document version took from being seen to being served.",
    owner="team:data-platform",
    key=("doc_id", "doc_version"),
    schema=pa.schema([
        col("doc_id", pa.string(), "Document"),
        col("doc_version", pa.int64(), "Version of policy_documents (a tombstone for a removal)"),
        col("owners", pa.list_(pa.string()), "Owning teams or people; empty means unowned"),
        col("is_deleted", pa.bool_(), "True when this version is the document's removal"),
        col("modified_at", TS, "File modification time; null for a removal"),
        col("seen_at", TS, "When ingestion wrote this version: the start of its lag"),
        col("embedded_at", TS, "When the vector table first matched this version"),
        col("published_at", TS, "When a release holding this version was first published"),
        col("release", pa.int64(), "That release"),
    ]),
)  # fmt: skip

VECTORS = "policy_vectors"  # the LanceDB table of `policyfresh.index.vectors`

PURGE_AUDIT = TableDef(
    name="purge_audit",
    description="Every erasure of a document: who asked, when, why, and what was removed.",
    owner="team:data-platform",
    key=("purge_id",),
    schema=pa.schema([
        col("purge_id", pa.string(), "Erasure id"),
        col("purged_at", TS, "When the erasure finished"),
        col("doc_id", pa.string(), "Document erased, with every version it had"),
        col("versions", pa.list_(pa.int64()), "Its versions that were stored"),
        col("requested_by", pa.string(), "Who asked: a user name"),
        col("reason", pa.string(), "Why, as given, PII replaced by <TYPE>", pii="redacted"),
        col("rows_erased", pa.map_(pa.string(), pa.int64()), "Rows removed or redacted, by table"),
        col("releases_dropped", pa.list_(pa.int64()), "Releases that held it: no longer kept"),
        col("republished_release", pa.int64(), "Release served after, without it; null if none"),
    ]),
)  # fmt: skip

ANSWER_IMPACT = TableDef(
    name="answer_impact",
    description="Earlier answers a publication made wrong: per answer and hit, old and new text.",
    owner="team:data-platform",
    key=("event_id", "trace_id", "rank"),
    schema=pa.schema([
        col("event_id", pa.string(), "The publication: its event in release_audit"),
        col("published_at", TS, "When the publication changed the served release"),
        col("action", pa.string(), "publish or rollback"),
        col("release", pa.int64(), "Release served from then on"),
        col("previous_release", pa.int64(), "Release served before it"),
        col("trace_id", pa.string(), "The answer: its trace in retrieval_traces"),
        col("searched_at", TS, "When the answer was given"),
        col("caller", pa.string(), "Who searched"),
        col("api_key_id", pa.string(), "keyed HMAC of the API key; null outside the service"),
        col("served_release", pa.int64(), "Release the answer was served from"),
        col("affected_by", pa.int64(), "Release of the first publication that changed what the "
            "answer quoted"),
        col("new", pa.bool_(), "True when this publication is that first one"),
        col("question", pa.string(), "The question, PII replaced by <TYPE>", pii="redacted"),
        col("rank", pa.int64(), "Rank of the affected hit in the answer"),
        col("doc_id", pa.string(), "Document quoted; (erased) once purged"),
        col("doc_version", pa.int64(), "Document version quoted"),
        col("chunk_id", pa.string(), "Chunk quoted"),
        col("status", pa.string(), "changed, removed, moved (to new_doc_id) or erased"),
        col("old_text", pa.string(), "Text served then; null once erased or no longer kept",
            pii="redacted"),
        col("new_doc_id", pa.string(), "Document serving the best match now; null if none"),
        col("new_text", pa.string(), "Best matching chunk served now, by heading and text",
            pii="redacted"),
        col("owners", pa.list_(pa.string()), "Owners of the quoted document"),
        col("classification", pa.string(), "Classification of the quoted chunk when served"),
        col("new_classification", pa.string(), "Classification of the chunk served in its place"),
    ]),
)  # fmt: skip

# Not a governed table of TABLES: it holds who writes which table now, and no history matters.
WRITER_LEASES = TableDef(
    name="_writer_leases",
    description="Who writes each table now, until when: the single writer across machines.",
    owner="team:data-platform",
    key=("table_name",),
    schema=pa.schema([
        col("table_name", pa.string(), "The table the holder alone may write"),
        col("holder", pa.string(), "host:pid:random of the process that holds the lease"),
        col("acquired_at", TS, "When the holder took or last renewed the lease"),
        col("expires_at", TS, "When another process may take it, unless it is renewed"),
    ]),
)  # fmt: skip


TABLES = {
    t.name: t
    for t in (
        POLICY_DOCUMENTS, INGEST_ERRORS, POLICY_CHUNKS, HELD_DOCUMENTS, RETRIEVAL_TRACES,
        EVAL_RUNS, EVAL_CASE_RESULTS, RELEASES, RELEASE_AUDIT, DOCUMENT_FRESHNESS, PURGE_AUDIT,
        ANSWER_IMPACT,
    )
}  # fmt: skip


def empty_frame(table: TableDef) -> pl.DataFrame:
    """A polars frame with the table's columns and no rows."""
    return pl.from_arrow(table.schema.empty_table())
