"""What the last complete refresh left behind: if the sources, tables, model and settings are
exactly as it left them, another refresh has nothing to do. Checked with stat calls and
table versions only: no model load, no parsing, no Great Expectations."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from policyfresh.index.chunking import CHUNKER_VERSION
from policyfresh.index.vectors import vectors_dataset
from policyfresh.ingest.documents import ingested_tree
from policyfresh.ingest.pii import detector_id
from policyfresh.ingest.pii_allow import load_allow_list
from policyfresh.ingest.sources import tree_state
from policyfresh.store import delta_store
from policyfresh.store.config import Settings
from policyfresh.store.local_state import read_state, write_state
from policyfresh.store.tables import TABLES

LAST_REFRESH = "last_refresh"
# Tables a refresh writes; traces are written by searches and do not count.
WRITTEN = sorted(set(TABLES) - {"retrieval_traces"})


def _sha256(path: Path | None) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path else None


def _vectors_marks(settings: Settings) -> dict[str, Any]:
    """Version and tags of the vector table."""
    dataset = vectors_dataset(settings)
    if dataset is None:
        return {"version": None, "tags": {}}
    tags = {name: tag["version"] for name, tag in dataset.tags.list().items()}
    return {"version": dataset.version, "tags": tags}


def current_marks(settings: Settings, model_id: str) -> dict[str, Any]:
    """Everything a refresh reads or writes, reduced to fingerprints and versions."""
    known = ingested_tree(settings)
    tree = tree_state(settings.policies, known.files if known else None)
    versions = {}
    for name in WRITTEN:
        delta = delta_store.open_table(settings.table_uri(name))
        versions[name] = delta.version() if delta else None
    return {
        "policies": tree.fingerprint,
        "ingested": known.fingerprint if known else None,
        "tables": versions,
        "vectors": _vectors_marks(settings),
        "model_id": model_id,
        "golden_sha256": _sha256(settings.golden_cases),
        "settings": repr(settings),
        "code": [CHUNKER_VERSION, detector_id(load_allow_list(settings.pii_allow_file)[0])],
    }


def record_refresh(settings: Settings, model_id: str, summary: dict[str, Any]) -> None:
    """Remember what a completed refresh left, with the summary it printed."""
    marks = current_marks(settings, model_id)
    write_state(settings, LAST_REFRESH, json.dumps({"marks": marks, "summary": summary}))


def unchanged_since_refresh(settings: Settings, model_id: str) -> dict[str, Any] | None:
    """The last refresh's summary if nothing moved since it, else None."""
    text = read_state(settings, LAST_REFRESH)
    if text is None:
        return None
    last = json.loads(text)
    marks = current_marks(settings, model_id)
    if marks["policies"] != marks["ingested"] or marks != last["marks"]:
        return None
    return last["summary"]
