"""Per-document freshness: when each document version was seen, embedded and first served,
and which current versions are late against the freshness objective, and whose they are."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from policyfresh.store import delta_store
from policyfresh.store.config import Settings
from policyfresh.store.tables import DOCUMENT_FRESHNESS, POLICY_CHUNKS, POLICY_DOCUMENTS

# A version not yet served is at risk past this share of the objective, late past all of it.
AT_RISK_SHARE = 0.5
STATES = ("served", "pending", "at_risk", "late")


def _uri(settings: Settings) -> str:
    return settings.table_uri(DOCUMENT_FRESHNESS.name)


def read_freshness(settings: Settings, where: pl.Expr | None = None) -> pl.DataFrame:
    return delta_store.read_table(_uri(settings), DOCUMENT_FRESHNESS.schema, where=where)


def record_seen(settings: Settings, versions: pl.DataFrame, run_id: str) -> None:
    """Start the clock for document versions ingestion just wrote (rows of policy_documents)."""
    if versions.is_empty():
        return
    rows = versions.select(
        "doc_id",
        "doc_version",
        "owners",
        "is_deleted",
        "modified_at",
        seen_at="ingested_at",
    ).with_columns(
        embedded_at=pl.lit(None, pl.Datetime("us", "UTC")),
        published_at=pl.lit(None, pl.Datetime("us", "UTC")),
        release=pl.lit(None, pl.Int64),
    )
    delta_store.merge(DOCUMENT_FRESHNESS, _uri(settings), rows, run_id, delta_store.upsert)


def record_embedded(settings: Settings, run_id: str) -> int:
    """After the vector table matched the current chunks: every pending version that has its
    chunks (or that removed its document and has none left) is now embedded."""
    pending = read_freshness(settings, pl.col("embedded_at").is_null())
    if pending.is_empty():
        return 0
    chunked = delta_store.read_table(
        settings.table_uri(POLICY_CHUNKS.name), POLICY_CHUNKS.schema, ["doc_id", "doc_version"]
    ).unique()
    live = pending.filter(~pl.col("is_deleted")).join(chunked, on=["doc_id", "doc_version"])
    removed = pending.filter(pl.col("is_deleted")).join(chunked, on="doc_id", how="anti")
    done = pl.concat([live, removed]).with_columns(embedded_at=pl.lit(datetime.now(tz=UTC)))
    if not done.is_empty():
        delta_store.merge(DOCUMENT_FRESHNESS, _uri(settings), done, run_id, delta_store.upsert)
    return done.height


def record_published(settings: Settings, release: int, run_id: str) -> int:
    """A release was published: every embedded version not yet served is served by it."""
    waiting = read_freshness(
        settings, pl.col("published_at").is_null() & pl.col("embedded_at").is_not_null()
    )
    if waiting.is_empty():
        return 0
    served = waiting.with_columns(
        published_at=pl.lit(datetime.now(tz=UTC)), release=pl.lit(release, pl.Int64)
    )
    delta_store.merge(DOCUMENT_FRESHNESS, _uri(settings), served, run_id, delta_store.upsert)
    return served.height


def document_lag(settings: Settings, now: datetime | None = None) -> pl.DataFrame:
    """The current version of every document with its lag in seconds (seen to served, or seen
    to now while it waits) and its state: served, pending, at_risk or late."""
    now = now or datetime.now(tz=UTC)
    slo = settings.freshness_slo
    current = delta_store.read_table(
        settings.table_uri(POLICY_DOCUMENTS.name),
        POLICY_DOCUMENTS.schema,
        columns=["doc_id", "doc_version"],
        where=pl.col("is_current"),
    )
    # Versions of a run killed before it wrote them are not current: they are not judged.
    frame = read_freshness(settings).join(current, on=["doc_id", "doc_version"], how="semi")
    lag = (pl.coalesce("published_at", pl.lit(now)) - pl.col("seen_at")).dt.total_milliseconds()
    return (
        frame.with_columns(lag_seconds=(lag / 1000).round(1))
        .with_columns(
            state=pl.when(pl.col("published_at").is_not_null())
            .then(pl.lit("served"))
            .when(pl.col("lag_seconds") >= slo)
            .then(pl.lit("late"))
            .when(pl.col("lag_seconds") >= slo * AT_RISK_SHARE)
            .then(pl.lit("at_risk"))
            .otherwise(pl.lit("pending"))
        )
        .sort("doc_id")
    )


def freshness_summary(settings: Settings, now: datetime | None = None) -> dict:
    """Counts by state, the objective, and the documents waiting too long with their owners."""
    lag = document_lag(settings, now)
    waiting = lag.filter(pl.col("state").is_in(["at_risk", "late"])).sort(
        "lag_seconds", descending=True
    )
    served = lag.filter(pl.col("state") == "served")["lag_seconds"]
    return {
        "objective_seconds": settings.freshness_slo,
        **{state: int((lag["state"] == state).sum()) for state in STATES},
        "served_lag_p50_seconds": served.median() if served.len() else None,
        "served_lag_max_seconds": served.max() if served.len() else None,
        "waiting": [
            {
                "doc_id": row["doc_id"],
                "doc_version": row["doc_version"],
                "owners": row["owners"] or ["(unowned)"],
                "state": row["state"],
                "lag_seconds": row["lag_seconds"],
                "removal": row["is_deleted"],
            }
            for row in waiting.iter_rows(named=True)
        ],
    }
