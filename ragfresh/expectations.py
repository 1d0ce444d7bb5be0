"""Validate a table against its Great Expectations suite (`expectations/<table>.json`)."""

from __future__ import annotations

import hashlib
import json
import logging
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


@dataclass(frozen=True)
class Validation:
    """The outcome of one suite over one table: what failed, with GX's own observed values."""

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


def validate(frame: pl.DataFrame, suite: dict[str, Any]) -> Validation:
    """Run the suite over the frame in an ephemeral GX context (GX validates pandas)."""
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
    result = batch.validate(gx_suite)
    failures = [
        {
            "expectation": r.expectation_config.type,
            "column": r.expectation_config.kwargs.get("column")
            or r.expectation_config.kwargs.get("column_list"),
            "unexpected_count": r.result.get("unexpected_count"),
            "examples": [str(v)[:80] for v in (r.result.get("partial_unexpected_list") or [])[:3]],
        }
        for r in result.results
        if not r.success
    ]
    log.info(
        "suite %s: %d expectations, %d failed", suite["name"], len(result.results), len(failures)
    )
    return Validation(bool(result.success), len(result.results), failures)


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
    }
    record = f"check_{table.name}"
    cached = json.loads(read_state(settings, record) or "{}")
    if cached.get("key") == key:
        return TableValidation(
            Validation(**cached["validation"]), cached["rows"], key["table_version"], True
        )
    frame = delta_store.read_table(uri, table.schema)
    validation = validate(frame, suite)
    write_state(
        settings,
        record,
        json.dumps(
            {"key": key, "rows": frame.height, "validation": asdict(validation)}, default=str
        ),
    )
    return TableValidation(validation, frame.height, key["table_version"], False)
