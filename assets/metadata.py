"""Asset metadata shared by every stage: column schemas with PII tags, markdown tables."""

from __future__ import annotations

from typing import Any

import dagster as dg
import polars as pl

from policyfresh.store.tables import TableDef


def table_metadata(table: TableDef) -> dict[str, Any]:
    """Definition metadata of a table asset: its column schema with PII tags and its key.
    (Its location depends on the run's resource, so materializations report `dagster/uri`.)"""
    columns = [
        dg.TableColumn(
            name=f.name,
            type=str(f.type),
            description=f.metadata[b"description"].decode(),
            tags={"pii": f.metadata[b"pii"].decode()},
        )
        for f in table.schema
    ]
    return {
        "dagster/column_schema": dg.TableSchema(columns=columns),
        "primary_key": ", ".join(table.key),
    }


def table_asset(table: TableDef, *, group: str, layer: str, kinds: set[str]) -> dict[str, Any]:
    """What every table asset declares alike: group, owner, kinds, tags and column schema.
    Its `pii` tag is the strongest column tag: contains, else redacted, else none."""
    tags = {f.metadata[b"pii"].decode() for f in table.schema}
    pii = next((t for t in ("contains", "redacted") if t in tags), "none")
    return {
        "group_name": group,
        "owners": [table.owner],
        "kinds": kinds,
        "tags": {"pii": pii, "layer": layer},
        "metadata": table_metadata(table),
    }


def markdown_table(frame: pl.DataFrame, limit: int = 50) -> dg.MetadataValue:
    """A small markdown table of the first rows, with a line saying how many were left out."""
    if frame.is_empty():
        return dg.MetadataValue.md("_nothing_")
    shown = frame.head(limit)
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + " --- |" * shown.width]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.iter_rows()]
    if frame.height > limit:
        lines.append(f"\n_{frame.height - limit} more rows not shown_")
    return dg.MetadataValue.md("\n".join(lines))
