"""Shared fixtures: a temporary copy of the bundled corpus and settings pointing at it."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from ragfresh.config import Settings
from ragfresh.embedding import Embedder

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


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real model, loaded once for the whole session."""
    model = Embedder()
    model.load()
    return model


class HashEmbedder(Embedder):
    """Deterministic vectors from text hashes, under another model id: for bookkeeping tests."""

    def __init__(self, name: str = "hash-embedder", dimensions: int = 384) -> None:
        super().__init__(name=name)
        self.dimensions = dimensions

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.dimensions}"

    def encode(self, texts, batch_size=64, progress=None):
        seeds = [int(hashlib.sha256(t.encode()).hexdigest()[:8], 16) for t in texts]
        vectors = np.stack([np.random.default_rng(s).random(self.dimensions) for s in seeds])
        return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def keep_only(corpus: Path, doc_ids: list[str]) -> None:
    """Trim a corpus copy down to a few documents (and its OWNERS file)."""
    for path in corpus.rglob("*"):
        relative = path.relative_to(corpus).as_posix()
        if path.is_file() and relative != "OWNERS" and relative not in doc_ids:
            path.unlink()


SMALL = [
    "retail/card-disputes.md",
    "retail/overdraft-fees.md",
    "compliance/complaints-handling.md",
    "compliance/sanctions-screening.md",
    "hr/annual-leave.md",
]


@pytest.fixture
def small_settings(settings: Settings, corpus: Path) -> Settings:
    """Settings over five bundled policies that carry planted PII and several classifications."""
    keep_only(corpus, SMALL)
    return settings
