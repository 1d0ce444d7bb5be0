"""Validate a stored table against its suite, as its blocking check does: a Delta table, or the
LanceDB vectors seen through what their suite checks; each table version is validated once."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

from policyfresh.index.vectors import vectors_dataset
from policyfresh.store import delta_store
from policyfresh.store.config import Settings
from policyfresh.store.local_state import read_state, write_state
from policyfresh.store.suites import (
    HOLDS_DOCUMENTS,
    RESULT_FORMAT,
    ROW_KEYS,
    Validation,
    suite_sha256,
    validate,
)
from policyfresh.store.tables import TABLES, VECTORS


@dataclass(frozen=True)
class TableValidation:
    """A table's validation at one version; `reused` when that version was validated before
    with the same suite, so it was not read or validated again."""

    validation: Validation
    rows: int
    table_version: int | None
    reused: bool


VECTOR_CHECKED = {
    "chunk_id": pl.String,
    "doc_id": pl.String,
    "model_id": pl.String,
    "dimensions": pl.Int64,
    "norm": pl.Float64,
    "finite": pl.Boolean,
}


def _vector_rows(settings: Settings) -> pl.DataFrame:
    """What the vectors suite checks of each LanceDB row: its keys, model, and its vector's
    dimension, norm and finiteness (computed batch by batch, never all vectors at once)."""
    dataset = vectors_dataset(settings)
    columns = ["chunk_id", "doc_id", "model_id", "vector"]
    batches = dataset.to_batches(columns=columns) if dataset else []
    frames = []
    for batch in batches:
        vectors = batch.column("vector")
        size = vectors.type.list_size
        matrix = np.asarray(vectors.values.to_numpy(zero_copy_only=False), dtype=np.float64)
        matrix = matrix.reshape(len(batch), size)
        frames.append(
            pl.from_arrow(batch.drop_columns(["vector"])).with_columns(
                dimensions=pl.lit(size, pl.Int64),
                norm=pl.Series(np.linalg.norm(matrix, axis=1)),
                finite=pl.Series(np.isfinite(matrix).all(axis=1)),
            )
        )
    return pl.concat(frames) if frames else pl.DataFrame(schema=VECTOR_CHECKED)


def table_rows(settings: Settings, table: str) -> pl.DataFrame:
    """The table as it is stored: no cast to the expected schema, so a wrong one shows."""
    if table == VECTORS:
        return _vector_rows(settings)
    return delta_store.read_table(settings.table_uri(table), TABLES[table].schema)


def _version(settings: Settings, table: str) -> int | None:
    if table == VECTORS:
        dataset = vectors_dataset(settings)
        return dataset.version if dataset is not None else None
    delta = delta_store.open_table(settings.table_uri(table))
    return delta.version() if delta else None


def validate_table(
    settings: Settings,
    table: str,
    suite: dict[str, Any],
    parameters: dict[str, Any] | None = None,
) -> TableValidation:
    """Validate the stored table against its suite and publish it to Data Docs, unless this
    version already was validated with this suite and these parameters."""
    key = {
        "table": table,
        "table_version": _version(settings, table),
        "suite_sha256": suite_sha256(suite),
        "parameters": parameters or {},
        "result_format": RESULT_FORMAT,
    }
    record = f"check_{table}"
    cached = json.loads(read_state(settings, record) or "{}")
    if cached.get("key") == key:
        return TableValidation(
            Validation(**cached["validation"]), cached["rows"], key["table_version"], True
        )
    frame = table_rows(settings, table)
    validation = validate(frame, suite, ROW_KEYS[table], parameters, docs=settings)
    write_state(
        settings,
        record,
        json.dumps(
            {"key": key, "rows": frame.height, "validation": asdict(validation)}, default=str
        ),
    )
    return TableValidation(validation, frame.height, key["table_version"], False)


def table_fault(settings: Settings, table: str, checked: TableValidation) -> str | None:
    """Why the table as a whole is bad, or None. A table-level expectation that fails is a
    fault; failing rows are one only past the share of rows that may be held back."""
    whole = [f["expectation"] for f in checked.validation.failures if f["rows"] is None]
    if whole:
        return f"table-wide expectations failed: {', '.join(whole)}"
    failing = checked.validation.failing_rows
    limit = settings.max_held_share if table in HOLDS_DOCUMENTS else 0.0
    if failing and failing > limit * checked.rows:
        allowed = f"more than {limit:.0%} of them" if limit else "none may fail"
        return f"{failing} of {checked.rows} rows fail the suite: {allowed}"
    return None
