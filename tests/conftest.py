"""Shared fixtures: a temporary copy of the bundled corpus and settings pointing at it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ragfresh.config import Settings

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "policies"
SHARED = REPO.parent / "shared"
HANDBOOK = SHARED / "corpora" / "18f-handbook"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A writable copy of the bundled policies."""
    target = tmp_path / "policies"
    shutil.copytree(BUNDLED, target)
    return target


@pytest.fixture
def settings(tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose home and policies live in the test's own temporary folder."""
    monkeypatch.setenv("RAGFRESH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAGFRESH_POLICIES", str(corpus))
    for name in ("RAGFRESH_LAKE_URI", "RAGFRESH_VECTORS_URI", "RAGFRESH_PII_RULES"):
        monkeypatch.delenv(name, raising=False)
    return Settings.load()
