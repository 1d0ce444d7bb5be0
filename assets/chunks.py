"""Chunking stage: current documents become model-sized, PII-gated `policy_chunks`."""

import dagster as dg

from assets.metadata import table_asset
from orchestration.automation import FOLLOWS_UPSTREAM
from orchestration.resources import EmbedderResource, RagfreshResource
from ragfresh.chunking import Chunker
from ragfresh.chunks import chunking_id, oversized_chunks, refresh_chunks, unchunked_documents
from ragfresh.documents import read_documents
from ragfresh.tables import POLICY_CHUNKS


@dg.asset(
    name=POLICY_CHUNKS.name,
    deps=["policy_documents"],
    **table_asset(POLICY_CHUNKS, group="indexing", layer="silver", kinds={"deltalake", "polars"}),
    automation_condition=FOLLOWS_UPSTREAM,
    check_specs=[
        dg.AssetCheckSpec(
            "chunks_current",
            asset=POLICY_CHUNKS.name,
            blocking=True,
            description="Every current document version is chunked under the current "
            "chunking and PII configuration, and no chunk is longer than the model reads.",
        )
    ],
)
def policy_chunks(
    context: dg.AssetExecutionContext, ragfresh: RagfreshResource, embedder: EmbedderResource
):
    """Re-chunk only documents with a new version, token-aware, with offsets; PII redacted."""
    settings, chunker = ragfresh.settings(), Chunker.for_model(embedder.embedder())
    result = refresh_chunks(settings, chunker, run_id=context.run.run_id)
    context.log.info("policy_chunks: %s", result)
    yield dg.MaterializeResult(
        metadata={
            "documents_rechunked": result.documents_rechunked,
            "documents_removed": result.documents_removed,
            "inserted": result.inserted,
            "updated": result.updated,
            "deleted": result.deleted,
            "blocked": result.blocked,
            "largest_chunk_tokens": result.largest_chunk_tokens,
            "failed": dg.MetadataValue.json([{"doc_id": d, "reason": r} for d, r in result.failed]),
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
