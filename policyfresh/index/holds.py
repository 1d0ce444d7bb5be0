"""Hold a document back at its last good version: when its new version fails a row-level
expectation of the documents or chunks suite, or fails to chunk, its old chunks keep serving,
every other document flows on, and `held_documents` tells its owner why."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import polars as pl

from policyfresh.store import delta_store
from policyfresh.store.config import Settings
from policyfresh.store.suites import (
    HOLDS_DOCUMENTS,
    MAX_FAILED_ROWS,
    ROW_KEYS,
    load_suite,
    suite_path,
    suite_sha256,
    validate,
)
from policyfresh.store.tables import HELD_DOCUMENTS, empty_frame

VERSION = ["doc_id", "doc_version"]


def attempt_id(config_id: str) -> str:
    """The chunking configuration and the suites a version is tried under: a change to either
    tries every held document again."""
    suites = "".join(suite_sha256(load_suite(suite_path(t))) for t in HOLDS_DOCUMENTS)
    return f"{config_id}/suites-{suite_sha256({'suites': suites})[:8]}"


def read_holds(settings: Settings) -> pl.DataFrame:
    return delta_store.read_table(settings.table_uri(HELD_DOCUMENTS.name), HELD_DOCUMENTS.schema)


def standing_holds(settings: Settings, documents: pl.DataFrame, attempt: str) -> pl.DataFrame:
    """Holds of documents still at the held version, tried under this configuration: trying
    them again would fail again, so they are not."""
    holds = read_holds(settings).filter(pl.col("attempt_id") == attempt)
    return holds.join(documents.select(VERSION), on=VERSION, how="semi")


def failing_documents(
    documents: pl.DataFrame, chunks: pl.DataFrame
) -> dict[str, list[dict[str, Any]]]:
    """Each document whose new version or new chunks fail a row-level expectation, with
    the failures that name its rows. Table-level expectations are the table check's to judge."""
    found: dict[str, list[dict[str, Any]]] = {}
    for table, rows in zip(HOLDS_DOCUMENTS, (documents, chunks), strict=True):
        if rows.is_empty():
            continue
        result = validate(rows, load_suite(suite_path(table)), ROW_KEYS[table], limit=None)
        for failure in result.failures:
            by_document: dict[str, list[dict[str, Any]]] = {}
            for row in failure["rows"] or []:
                by_document.setdefault(row["doc_id"], []).append(row)
            for doc_id, its_rows in by_document.items():
                found.setdefault(doc_id, []).append(
                    {
                        **failure,
                        "suite": table,
                        "unexpected_count": len(its_rows),
                        "rows": its_rows[:MAX_FAILED_ROWS],
                    }
                )
    return found


def _reason(failure: dict[str, Any]) -> str:
    column = failure["column"]
    on = f" on {', '.join(column) if isinstance(column, list) else column}" if column else ""
    count = failure["unexpected_count"]
    return f"{failure['suite']}: {failure['expectation']}{on} ({count} row{'s' * (count != 1)})"


def new_holds(
    tried: pl.DataFrame,
    failures: dict[str, list[dict[str, Any]]],
    crashed: dict[str, str],
    served: dict[str, int],
    attempt: str,
    run_id: str,
) -> pl.DataFrame:
    """Hold rows for the tried documents that failed: an expectation, or chunking itself."""
    now = datetime.now(tz=UTC)
    rows = [
        {
            "doc_id": doc["doc_id"],
            "doc_version": doc["doc_version"],
            "served_version": served.get(doc["doc_id"]),
            "owners": doc["owners"],
            "classification": doc["classification"],
            "stage": "chunking" if doc["doc_id"] in crashed else "expectations",
            "reasons": (
                [crashed[doc["doc_id"]]]
                if doc["doc_id"] in crashed
                else [_reason(f) for f in failures[doc["doc_id"]]]
            ),
            "failures": json.dumps(failures.get(doc["doc_id"], []), default=str),
            "attempt_id": attempt,
            "held_at": now,
            "run_id": run_id,
        }
        for doc in tried.iter_rows(named=True)
        if doc["doc_id"] in crashed or doc["doc_id"] in failures
    ]
    return pl.DataFrame(rows, schema=empty_frame(HELD_DOCUMENTS).schema)


def write_holds(settings: Settings, holds: pl.DataFrame, run_id: str) -> None:
    """Replace the table with the holds standing now, unless they are the ones it has."""
    compared = ["doc_id", "doc_version", "attempt_id", "reasons"]
    before = read_holds(settings).select(compared).sort("doc_id")
    if before.equals(holds.select(compared).sort("doc_id")):
        return
    delta_store.overwrite(
        HELD_DOCUMENTS, settings.table_uri(HELD_DOCUMENTS.name), holds.sort("doc_id"), run_id
    )


def held_summary(settings: Settings) -> list[dict[str, Any]]:
    """The documents held back now: version held, version served, owners and why."""
    held = read_holds(settings).sort("doc_id")
    return held.select("doc_id", "doc_version", "served_version", "owners", "reasons").to_dicts()


def describe_hold(held: dict[str, Any]) -> str:
    """One line for a person: the document, its owners, what still serves and why."""
    served = held["served_version"]
    serving = f"serving v{served}" if served is not None else "never served"
    owners = ", ".join(held["owners"]) or "(unowned)"
    return (
        f"{held['doc_id']} v{held['doc_version']} (owners {owners}), {serving}: "
        f"{'; '.join(held['reasons'])}"
    )
