"""Validate a table against its Great Expectations suite (`expectations/<table>.json`)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ragfresh import delta_store
from ragfresh.config import Settings
from ragfresh.local_state import read_state, write_state
from ragfresh.tables import TableDef

log = logging.getLogger(__name__)

SUITES = Path(__file__).resolve().parents[1] / "expectations"
MAX_FAILED_ROWS = 50  # per failed expectation, in check metadata
RESULT_FORMAT = "COMPLETE"


@dataclass(frozen=True)
class Validation:
    """The outcome of one suite over one table: each failed expectation with the key columns
    of its failing rows (never their values, which may be PII)."""

    success: bool
    evaluated: int
    failures: list[dict[str, Any]] = field(default_factory=list)


def suite_path(table: str, folder: Path = SUITES) -> Path:
    return folder / f"{table}.json"


def load_suite(path: Path) -> dict[str, Any]:
    """The suite as GX serializes it: a name and a list of {type, kwargs} expectations."""
    suite = json.loads(path.read_text(encoding="utf-8"))
    if not suite.get("name") or not isinstance(suite.get("expectations"), list):
        raise ValueError(f"{path}: a suite needs a `name` and a list of `expectations`")
    return suite


def validate(frame: pl.DataFrame, suite: dict[str, Any], key: Sequence[str]) -> Validation:
    """Run the suite over the frame in an ephemeral GX context (GX validates pandas); failing
    rows are named by their `key` columns."""
    import great_expectations as gx  # ~3 s and ~250 MB: only when a check runs
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("ragfresh")
        .add_dataframe_asset(suite["name"])
        .add_batch_definition_whole_dataframe("whole table")
        .get_batch(batch_parameters={"dataframe": frame.to_pandas()})
    )
    gx_suite = gx.ExpectationSuite(name=suite["name"], expectations=suite["expectations"])
    result_format = {"result_format": RESULT_FORMAT, "unexpected_index_column_names": list(key)}
    result = batch.validate(gx_suite, result_format=result_format)
    failures = [
        {
            "expectation": r.expectation_config.type,
            "column": r.expectation_config.kwargs.get("column")
            or r.expectation_config.kwargs.get("column_list"),
            "unexpected_count": r.result.get("unexpected_count"),
            "rows": _key_rows(r.result.get("unexpected_index_list") or [], key),
        }
        for r in result.results
        if not r.success
    ]
    log.info(
        "suite %s: %d expectations, %d failed", suite["name"], len(result.results), len(failures)
    )
    return Validation(bool(result.success), len(result.results), failures)


def _key_rows(found: list[dict[str, Any]], key: Sequence[str]) -> list[dict[str, Any]]:
    """The distinct key columns of failing rows, at most `MAX_FAILED_ROWS`. GX lists the
    checked column's value beside them; it is dropped here: it may be PII, a key is not."""
    rows: list[dict[str, Any]] = []
    for row in found:
        keyed = {k: getattr(row[k], "item", lambda v=row[k]: v)() for k in key}
        if keyed not in rows:
            rows.append(keyed)
        if len(rows) == MAX_FAILED_ROWS:
            break
    return rows


@dataclass(frozen=True)
class TableValidation:
    """A table's validation at one Delta version; `reused` when that version was validated
    before with the same suite, so it was not read or validated again."""

    validation: Validation
    rows: int
    table_version: int | None
    reused: bool


def validate_table(settings: Settings, table: TableDef, suite: dict[str, Any]) -> TableValidation:
    """Validate the table against its suite, unless this version already was."""
    uri = settings.table_uri(table.name)
    delta = delta_store.open_table(uri)
    key = {
        "uri": uri,
        "table_version": delta.version() if delta else None,
        "suite_sha256": hashlib.sha256(json.dumps(suite, sort_keys=True).encode()).hexdigest(),
        "result_format": RESULT_FORMAT,
    }
    record = f"check_{table.name}"
    cached = json.loads(read_state(settings, record) or "{}")
    if cached.get("key") == key:
        return TableValidation(
            Validation(**cached["validation"]), cached["rows"], key["table_version"], True
        )
    frame = delta_store.read_table(uri, table.schema)
    validation = validate(frame, suite, table.key)
    write_state(
        settings,
        record,
        json.dumps(
            {"key": key, "rows": frame.height, "validation": asdict(validation)}, default=str
        ),
    )
    return TableValidation(validation, frame.height, key["table_version"], False)
