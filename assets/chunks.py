"""Chunking stage: current documents become model-sized, PII-gated `policy_chunks`."""

import dagster as dg
import polars as pl

from assets.metadata import markdown_table, table_asset
from orchestration.automation import FOLLOWS_UPSTREAM
from orchestration.resources import EmbedderResource, PolicyfreshResource, stage_run
from policyfresh.index.chunking import Chunker
from policyfresh.index.chunks import (
    chunking_id,
    oversized_chunks,
    unchunked_documents,
)
from policyfresh.index.holds import describe_hold, read_holds
from policyfresh.ingest.documents import read_documents
from policyfresh.quality.pipeline import STAGES
from policyfresh.store.tables import POLICY_CHUNKS

HELD_COLUMNS = ["doc_id", "doc_version", "served_version", "owners", "stage", "reasons"]


STAGE = STAGES[POLICY_CHUNKS.name]


@dg.asset(
    name=POLICY_CHUNKS.name,
    deps=STAGE.after,
    **table_asset(POLICY_CHUNKS, group="indexing", layer="silver", kinds={"deltalake", "polars"}),
    automation_condition=FOLLOWS_UPSTREAM,
    check_specs=[
        dg.AssetCheckSpec(
            "chunks_current",
            asset=POLICY_CHUNKS.name,
            blocking=True,
            description="Every current document version is chunked under the current "
            "chunking and PII configuration, or held back, and no chunk is longer than the "
            "model reads.",
        ),
        dg.AssetCheckSpec(
            "documents_held",
            asset=POLICY_CHUNKS.name,
            description="No document is held back at its last good version. A held document "
            "warns its owners and blocks nothing: the other documents flow on.",
        ),
    ],
)
def policy_chunks(
    context: dg.AssetExecutionContext, policyfresh: PolicyfreshResource, embedder: EmbedderResource
):
    """Re-chunk only documents with a new version, token-aware, with offsets; PII redacted."""
    run = stage_run(context, policyfresh, embedder)
    settings, chunker = run.settings, Chunker.for_model(run.embedder)
    result = STAGE.work(run)
    context.log.info("policy_chunks: %s", result)
    yield dg.MaterializeResult(
        metadata={
            "documents_rechunked": result.documents_rechunked,
            "documents_removed": result.documents_removed,
            "inserted": result.inserted,
            "updated": result.updated,
            "deleted": result.deleted,
            "blocked": result.blocked,
            "rescan_changed": result.rescan_changed,
            "largest_chunk_tokens": result.largest_chunk_tokens,
            "held": len(result.held),
            "dagster/row_count": result.total_chunks,
            "dagster/uri": settings.table_uri(POLICY_CHUNKS.name),
        }
    )
    behind = unchunked_documents(settings, read_documents(settings), chunking_id(settings, chunker))
    oversized = oversized_chunks(settings, chunker.max_tokens)
    yield dg.AssetCheckResult(
        check_name="chunks_current",
        passed=behind.is_empty() and not oversized,
        metadata={
            "documents_not_chunked": dg.MetadataValue.json(behind["doc_id"].to_list()),
            "chunks_over_token_limit": oversized,
        },
    )
    held = read_holds(settings)
    yield dg.AssetCheckResult(
        check_name="documents_held",
        passed=held.is_empty(),
        severity=dg.AssetCheckSeverity.WARN,
        description=_held(held),
        metadata={"held": markdown_table(held.select(HELD_COLUMNS))},
    )


def _held(held: pl.DataFrame) -> str | None:
    """Who is held back, at which version, serving which, and why: for the check's summary."""
    if held.is_empty():
        return None
    return f"{held.height} held back: " + "; ".join(
        describe_hold(h) for h in held.head(10).iter_rows(named=True)
    )
