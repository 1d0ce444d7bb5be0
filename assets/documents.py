"""Ingestion stage: the policies folder becomes the governed `policy_documents` table."""

import dagster as dg
import polars as pl

from assets.metadata import markdown_table, table_asset
from orchestration.resources import EmbedderResource, PolicyfreshResource, stage_run
from policyfresh.ingest.sources import OWNERS_FILE
from policyfresh.quality.pipeline import STAGES
from policyfresh.store.tables import INGEST_ERRORS, POLICY_DOCUMENTS

STAGE = STAGES[POLICY_DOCUMENTS.name]
BRONZE = {"group": "ingestion", "layer": "bronze", "kinds": {"deltalake", "polars"}}


@dg.multi_asset(
    specs=[
        dg.AssetSpec(table.name, description=table.description, **table_asset(table, **BRONZE))
        for table in (POLICY_DOCUMENTS, INGEST_ERRORS)
    ],
    name=STAGE.name,
)
def policy_documents(
    context: dg.AssetExecutionContext, policyfresh: PolicyfreshResource, embedder: EmbedderResource
):
    """Scan, parse, hash, detect PII and resolve owners; write only what changed."""
    run = stage_run(context, policyfresh, embedder)
    settings, result = run.settings, STAGE.work(run)
    changes = result.new_versions.select(
        "doc_id",
        "change",
        "doc_version",
        pl.col("owners").list.join(", "),
        "classification",
        pl.col("pii_spans").list.len().alias("pii_found"),
    )
    context.log.info("policy_documents: %s", result.counts())
    yield dg.MaterializeResult(
        asset_key=POLICY_DOCUMENTS.name,
        metadata={
            **result.counts(),
            "dagster/uri": settings.table_uri(POLICY_DOCUMENTS.name),
            "table_version": result.table_version,
            "pii_found": int(changes["pii_found"].sum()),
            "changes": markdown_table(changes),
        },
    )
    errors = result.errors.select("path", "reason")
    owners_file = pl.col("path") == OWNERS_FILE
    yield dg.MaterializeResult(
        asset_key=INGEST_ERRORS.name,
        metadata={
            "quarantined": result.quarantined,
            "dagster/uri": settings.table_uri(INGEST_ERRORS.name),
            "files": dg.MetadataValue.json(errors.filter(~owners_file).to_dicts()),
            "owners_file_errors": dg.MetadataValue.json(
                errors.filter(owners_file)["reason"].to_list()
            ),
        },
    )
