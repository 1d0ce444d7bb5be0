"""Governed Delta tables: creation with schema and properties, reads, retried merges."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import polars as pl
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError
from deltalake.table import TableMerger

from policyfresh.store.tables import TableDef

log = logging.getLogger(__name__)

COMMIT_RETRIES = 5
COMPACT_EVERY = 100  # appends (one per search) leave small files: compact every N versions
T = TypeVar("T")


def commit_properties(run_id: str, operation: str) -> CommitProperties:
    """Commit metadata that names the run, so the Delta log says who wrote each version."""
    return CommitProperties(
        custom_metadata={"policyfresh.run_id": run_id, "policyfresh.operation": operation}
    )


def open_table(uri: str) -> DeltaTable | None:
    try:
        return DeltaTable(uri)
    except TableNotFoundError:
        return None


def _governed(table: TableDef) -> dict[str, str]:
    """Table properties policyfresh keeps set: who owns it, what it is, what the log may record."""
    return {
        "policyfresh.owner": table.owner,
        "policyfresh.description": table.description,
        "delta.dataSkippingStatsColumns": ",".join(table.stats_columns),
    }


def ensure_table(table: TableDef, uri: str, run_id: str) -> DeltaTable:
    """Open the table, creating it governed (CDF, owner, description, column tags) if absent;
    governance properties a killed creation left unset are set now."""
    delta = open_table(uri)
    if delta is None:
        delta = DeltaTable.create(
            uri,
            schema=table.schema,
            mode="ignore",
            name=table.name,
            description=table.description,
            configuration={
                "delta.enableChangeDataFeed": "true",
                "delta.dataSkippingStatsColumns": ",".join(table.stats_columns),
            },
            commit_properties=commit_properties(run_id, "create"),
        )
        log.info("created Delta table %s at %s", table.name, uri)
    wanted = _governed(table)
    present = delta.metadata().configuration
    if any(present.get(k) != v for k, v in wanted.items()):
        set_properties(delta, wanted, run_id)
    return delta


def set_properties(delta: DeltaTable, properties: dict[str, str], run_id: str) -> None:
    """Set table properties, policyfresh's own (`policyfresh.*`) included, in one commit."""
    delta.alter.set_table_properties(
        properties,
        raise_if_not_exists=False,  # else delta-rs refuses any key it does not know
        commit_properties=commit_properties(run_id, "properties"),
    )


def read_table(
    uri: str, schema: pa.Schema, columns: list[str] | None = None, where: pl.Expr | None = None
) -> pl.DataFrame:
    """Rows (filtered and projected in the scan) as polars; empty with the schema if no table.
    A column a later release of policyfresh added is null in rows written before it."""
    delta = open_table(uri)  # scanned as opened: the log is read once
    empty = pl.from_arrow(schema.empty_table())
    if delta is None:
        frame = empty.lazy()
    else:
        frame = pl.scan_delta(delta)
        stored = frame.collect_schema().names()
        added = [pl.lit(None, t).alias(n) for n, t in empty.schema.items() if n not in stored]
        frame = frame.with_columns(added) if added else frame
    if where is not None:
        frame = frame.filter(where)
    return (frame.select(columns) if columns else frame).collect()


def _arrow(frame: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    """Rows in the table's columns and types. Column descriptions and tags are set when the
    table is created; written again, any change to them would fail the commit."""
    bare = pa.schema([field.remove_metadata() for field in schema])
    return frame.select(schema.names).to_arrow().cast(bare)


def _committed(table: TableDef, commit: Callable[[], T]) -> T:
    """Run `commit` (which opens the table afresh), again when a concurrent commit wins: another
    writer's row commit, or its creation and governance of the table (a metadata commit)."""
    for attempt in range(1, COMMIT_RETRIES + 1):
        try:
            return commit()
        except CommitFailedError:
            if attempt == COMMIT_RETRIES:
                raise
            log.warning("commit conflict on %s, retry %d", table.name, attempt)
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def merge(
    table: TableDef,
    uri: str,
    source: pl.DataFrame,
    run_id: str,
    clauses: Callable[[TableMerger], TableMerger],
    extra_columns: list[str] | None = None,
) -> dict:
    """One merge commit keyed on the table's key, retried when a concurrent commit wins."""
    extra = extra_columns or []
    fields = list(table.schema) + [pa.field(c, pa.string()) for c in extra]
    data = _arrow(source, pa.schema(fields))
    predicate = " AND ".join(f"t.{k} = s.{k}" for k in table.key)

    def commit() -> dict:
        merger = ensure_table(table, uri, run_id).merge(
            data,
            predicate=predicate,
            source_alias="s",
            target_alias="t",
            merge_schema=True,  # a column added in a later release of policyfresh
            commit_properties=commit_properties(run_id, "merge"),
        )
        return clauses(merger).execute()

    return _committed(table, commit)


def upsert(merger: TableMerger) -> TableMerger:
    """Merge clauses that replace matched rows and insert the others."""
    return merger.when_matched_update_all().when_not_matched_insert_all()


def append(table: TableDef, uri: str, rows: pl.DataFrame, run_id: str) -> None:
    """Append rows in one commit; compact the small files appends leave, now and then."""
    data = _arrow(rows, table.schema)

    def commit() -> DeltaTable:
        delta = ensure_table(table, uri, run_id)
        write_deltalake(
            delta,
            data,
            mode="append",
            schema_mode="merge",  # a column added in a later release of policyfresh
            commit_properties=commit_properties(run_id, "append"),
        )
        return delta

    delta = _committed(table, commit)
    if delta.version() % COMPACT_EVERY == 0:
        delta.optimize.compact(commit_properties=commit_properties(run_id, "compact"))


def overwrite(table: TableDef, uri: str, rows: pl.DataFrame, run_id: str) -> None:
    """Replace the table's rows in one commit: for tables that hold only a current state."""
    data = _arrow(rows, table.schema)
    _committed(
        table,
        lambda: write_deltalake(
            ensure_table(table, uri, run_id),
            data,
            mode="overwrite",
            commit_properties=commit_properties(run_id, "overwrite"),
        ),
    )


def erase(uri: str, predicate: str, run_id: str) -> int:
    """Delete the rows matching `predicate` and every stored byte that held them (see
    `forget_history`); the number of rows deleted."""
    delta = open_table(uri)
    if delta is None:
        return 0
    metrics = delta.delete(predicate, commit_properties=commit_properties(run_id, "erase"))
    forget_history(uri, run_id)
    return metrics["num_deleted_rows"]


def forget_history(uri: str, run_id: str) -> None:
    """Remove the data and change-feed files of earlier versions and the log entries that
    describe them: Delta cannot rewrite a past version, so an erasure gives up the table's
    history. Run it under the table's writer lock: files not yet committed are removed too."""
    delta = open_table(uri)
    if delta is None:
        return
    retention = delta.metadata().configuration.get("delta.logRetentionDuration")
    set_properties(delta, {"delta.logRetentionDuration": "interval 0 seconds"}, run_id)
    delta.create_checkpoint()
    delta.cleanup_metadata()
    set_properties(delta, {"delta.logRetentionDuration": retention or "interval 30 days"}, run_id)
    delta.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False, full=True)
