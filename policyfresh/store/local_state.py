"""Small records under the home that let work be skipped when nothing moved: the source tree
last ingested, the versions the last run left, check results by table version. Losing one
costs time, never correctness: the work is done again."""

from __future__ import annotations

import os
from pathlib import Path

from policyfresh.store.config import Settings


def state_path(settings: Settings, name: str) -> Path:
    return settings.home / "state" / f"{name}.json"


def read_state(settings: Settings, name: str) -> str | None:
    try:
        return state_path(settings, name).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def write_state(settings: Settings, name: str, text: str) -> None:
    """Replace the record atomically: a reader never sees half of it."""
    path = state_path(settings, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
