"""Great Expectations suites (`expectations/<table>.json`): load them, run one over rows, and
publish the results as GX Data Docs under the home."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from policyfresh.store.config import Settings
from policyfresh.store.tables import (
    ANSWER_IMPACT,
    EVAL_CASE_RESULTS,
    INGEST_ERRORS,
    POLICY_CHUNKS,
    POLICY_DOCUMENTS,
    VECTORS,
)

log = logging.getLogger(__name__)

SUITES = Path(__file__).resolve().parents[2] / "expectations"
MAX_FAILED_ROWS = 50  # per failed expectation, in check metadata and reports
RESULT_FORMAT = "COMPLETE"
# What names a failing row: the table's key, with the document for rows a document can be
# held back by, and never a column that may carry a value (an ingest error's reason).
ROW_KEYS: dict[str, tuple[str, ...]] = {
    POLICY_DOCUMENTS.name: POLICY_DOCUMENTS.key,
    POLICY_CHUNKS.name: ("doc_id", "chunk_id"),
    INGEST_ERRORS.name: ("path", "content_sha256"),
    EVAL_CASE_RESULTS.name: EVAL_CASE_RESULTS.key,
    VECTORS: ("doc_id", "chunk_id"),
    ANSWER_IMPACT.name: ANSWER_IMPACT.key,
}
# Tables whose failing rows hold their documents back (see `policyfresh.index.holds`) rather than
# stop the run, up to `Settings.max_held_share` of their rows.
HOLDS_DOCUMENTS = (POLICY_DOCUMENTS.name, POLICY_CHUNKS.name)
# GX keeps each failing value beside its row: values may be PII, so only counts and keys stay.
VALUE_LISTS = (
    "partial_unexpected_list",
    "unexpected_list",
    "partial_unexpected_counts",
    "partial_unexpected_index_list",
    "unexpected_index_query",
)
OBSERVATIONS = ("observed_value", "details")  # kept for table-level expectations: column names
DATA_DOCS_SITE = "policyfresh"


@dataclass(frozen=True)
class Validation:
    """The outcome of one suite over some rows: each failed expectation with the key columns
    of its failing rows (never their values, which may be PII). A failure with `rows` None is
    about the table as a whole (its columns, its size)."""

    success: bool
    evaluated: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    failing_rows: int = 0


def suite_path(table: str, folder: Path = SUITES) -> Path:
    return folder / f"{table}.json"


def load_suite(path: Path) -> dict[str, Any]:
    """The suite as GX serializes it: a name and a list of {type, kwargs} expectations."""
    suite = json.loads(path.read_text(encoding="utf-8"))
    if not suite.get("name") or not isinstance(suite.get("expectations"), list):
        raise ValueError(f"{path}: a suite needs a `name` and a list of `expectations`")
    return suite


def suite_sha256(suite: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(suite, sort_keys=True).encode()).hexdigest()


def render_suite(suite: dict[str, Any]) -> str:
    """The suite as stored: read back through GX (an unknown expectation or argument fails
    here), without the ids GX adds, keys sorted: rebuilding never changes the file."""
    rebuilt = _gx_suite(suite).to_json_dict()
    stored = {
        "name": rebuilt["name"],
        "meta": {k: v for k, v in rebuilt["meta"].items() if k != "great_expectations_version"},
        "expectations": [
            {"type": e["type"], "kwargs": e["kwargs"], **({"meta": e["meta"]} if e["meta"] else {})}
            for e in rebuilt["expectations"]
        ],
    }
    return json.dumps(stored, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _gx_suite(suite: dict[str, Any]):  # -> gx.ExpectationSuite
    """The suite as GX reads it. GX logs an expectation it cannot read and drops it: here
    that is an error naming the suite, not a check that silently does less."""
    import great_expectations as gx

    copied = copy.deepcopy(suite)  # GX writes into what it is given
    built = gx.ExpectationSuite(
        name=copied["name"], expectations=copied["expectations"], meta=copied.get("meta")
    )
    lost = Counter(e["type"] for e in suite["expectations"]) - Counter(
        e.expectation_type for e in built.expectations
    )
    if lost:
        raise ValueError(f"suite {suite['name']}: GX cannot read {', '.join(sorted(lost))}")
    return built


def suite_parameters(model_id: str, dimensions: int) -> dict[str, Any]:
    """Values the suites refer to as `{"$PARAMETER": name}`: the configured model."""
    return {"model_ids": [model_id], "dimensions": dimensions}


def _context(settings: Settings | None):  # -> gx.data_context.EphemeralDataContext
    """A GX context in memory, with analytics off; with settings, its stores and Data Docs live
    under the home, and the Data Docs load every file from there (`policyfresh.store.data_docs`)."""
    import great_expectations as gx  # ~3 s and ~250 MB: only when a check runs
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        FilesystemStoreBackendDefaults,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    common = {"progress_bars": ProgressBarsConfig(globally=False), "analytics_enabled": False}
    if settings is None:
        config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(), **common)
        return gx.get_context(mode="ephemeral", project_config=config)
    views = {"module_name": "policyfresh.store.data_docs"}
    page = {"view": {**views, "class_name": "OfflinePageView"}}
    config = DataContextConfig(
        store_backend_defaults=FilesystemStoreBackendDefaults(root_directory=str(gx_dir(settings))),
        data_docs_sites={
            DATA_DOCS_SITE: {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(data_docs_dir(settings)),
                },
                "site_index_builder": {
                    "class_name": "DefaultSiteIndexBuilder",
                    "view": {**views, "class_name": "OfflineIndexPageView"},
                },
                "site_section_builders": {
                    "expectations": page,
                    "validations": page,
                    "profiling": page,
                },
            }
        },
        **common,
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def gx_dir(settings: Settings) -> Path:
    """GX's stores: the suites and the last validation result of each table."""
    return settings.home / "reports" / "gx"


def data_docs_dir(settings: Settings) -> Path:
    return settings.home / "reports" / "data_docs"


def validate(
    frame: pl.DataFrame,
    suite: dict[str, Any],
    key: Sequence[str],
    parameters: dict[str, Any] | None = None,
    limit: int | None = MAX_FAILED_ROWS,
    docs: Settings | None = None,
) -> Validation:
    """Run the suite over the frame (GX validates pandas); failing rows are named by their
    `key` columns, at most `limit` per expectation. With `docs`, the result, stripped of
    values, is published to the home's Data Docs."""
    context = _context(docs)
    batch = (
        context.data_sources.add_pandas("policyfresh")
        .add_dataframe_asset(suite["name"])
        .add_batch_definition_whole_dataframe("whole table")
        .get_batch(batch_parameters={"dataframe": frame.to_pandas()})
    )
    gx_suite = _gx_suite(suite)
    result_format = {"result_format": RESULT_FORMAT, "unexpected_index_column_names": list(key)}
    result = batch.validate(
        gx_suite, result_format=result_format, expectation_parameters=parameters or {}
    )
    failing: set[tuple] = set()
    failures = []
    for r in result.results:
        found = r.result.get("unexpected_index_list")
        rows = None if found is None else _key_rows(found, key)
        kind, kwargs = r.expectation_config.type, r.expectation_config.kwargs
        table_level = kind.startswith("expect_table_")
        for name in VALUE_LISTS if table_level else VALUE_LISTS + OBSERVATIONS:
            r.result.pop(name, None)
        if rows:  # Data Docs list the failing rows by key where GX would list their values
            named = [", ".join(f"{k}={v}" for k, v in row.items()) for row in rows]
            r.result["partial_unexpected_list"] = named[:MAX_FAILED_ROWS]
            r.result["unexpected_index_list"] = rows[:MAX_FAILED_ROWS]
        if r.success:
            continue
        failing.update(tuple(row.values()) for row in rows or [])
        failures.append(
            {
                "expectation": kind,
                "column": kwargs.get("column") or kwargs.get("column_list"),
                "unexpected_count": r.result.get("unexpected_count"),
                "rows": rows if rows is None or limit is None else rows[:limit],
                **({"observed": r.result.get("observed_value")} if table_level else {}),
            }
        )
    if docs is not None:
        _publish(context, gx_suite, result, docs)
    log.info(
        "suite %s: %d expectations, %d failed", suite["name"], len(result.results), len(failures)
    )
    return Validation(bool(result.success), len(result.results), failures, len(failing))


def _key_rows(found: list[dict[str, Any]], key: Sequence[str]) -> list[dict[str, Any]]:
    """The distinct key columns of failing rows. GX lists the checked column's value beside
    them; it is dropped here: it may be PII, a key is not."""
    rows: dict[tuple, dict[str, Any]] = {}
    for row in found:
        keyed = {k: getattr(row[k], "item", lambda v=row[k]: v)() for k in key}
        rows.setdefault(tuple(keyed.values()), keyed)
    return list(rows.values())


def _publish(context, suite, result, settings: Settings) -> None:
    """Keep this table's latest result in the store and render its pages and the Data Docs
    index from it (the other tables' pages stay as their own checks wrote them), with the files
    the pages load."""
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    from policyfresh.store.data_docs import copy_vendored

    store = context.validation_results_store
    for old in store.list_keys():
        if old.expectation_suite_identifier.name == suite.name:
            store.remove_key(old)
    shutil.rmtree(data_docs_dir(settings) / "validations" / suite.name, ignore_errors=True)
    context.suites.add_or_update(suite)
    run = RunIdentifier(run_name="policyfresh", run_time=datetime.now(tz=UTC))
    suite_id = ExpectationSuiteIdentifier(name=suite.name)
    result_id = ValidationResultIdentifier(suite_id, run, "table")
    store.set(result_id, result)
    context.build_data_docs(resource_identifiers=[suite_id, result_id])  # and the index
    copy_vendored(data_docs_dir(settings))


if __name__ == "__main__":  # python -m policyfresh.store.suites: rewrite the suites as stored
    for path in sorted(SUITES.glob("*.json")):
        path.write_text(render_suite(load_suite(path)), encoding="utf-8")
        print(path, file=sys.stderr)
