"""Chunking stage: current documents become model-sized, PII-gated `policy_chunks`."""

import dagster as dg

from assets.metadata import table_metadata
from orchestration.resources import EmbedderResource, RagfreshResource
from ragfresh.chunking import Chunker
from ragfresh.chunks import refresh_chunks
from ragfresh.config import Settings
from ragfresh.tables import POLICY_CHUNKS

_settings = Settings.load()


@dg.asset(
    name=POLICY_CHUNKS.name,
    deps=["policy_documents"],
    group_name="indexing",
    owners=["team:data-platform"],
    kinds={"deltalake", "polars"},
    tags={"pii": "redacted", "layer": "silver"},
    metadata=table_metadata(POLICY_CHUNKS, _settings.table_uri(POLICY_CHUNKS.name)),
    automation_condition=dg.AutomationCondition.eager(),
)
def policy_chunks(
    context: dg.AssetExecutionContext, ragfresh: RagfreshResource, embedder: EmbedderResource
) -> dg.MaterializeResult:
    """Re-chunk only documents with a new version, token-aware, with offsets; PII redacted."""
    result = refresh_chunks(
        ragfresh.settings(), Chunker.for_model(embedder.embedder()), run_id=context.run.run_id
    )
    context.log.info("policy_chunks: %s", result)
    return dg.MaterializeResult(
        metadata={
            "documents_rechunked": result.documents_rechunked,
            "documents_removed": result.documents_removed,
            "inserted": result.inserted,
            "updated": result.updated,
            "deleted": result.deleted,
            "blocked": result.blocked,
            "dagster/row_count": result.total_chunks,
            "max_tokens_written": result.max_tokens,
        }
    )
