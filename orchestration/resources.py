"""Dagster resources: thin configurable handles on policyfresh's core settings and services."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from policyfresh.index.embedding import Embedder
from policyfresh.index.ray_embedding import make_embedder
from policyfresh.quality.pipeline import StageRun
from policyfresh.store.config import Settings


class PolicyfreshResource(dg.ConfigurableResource):
    """Where the policies are read from and where state lives (defaults: `POLICYFRESH_*` env)."""

    home: str | None = None
    policies: str | None = None

    def settings(self) -> Settings:
        return Settings.load(home=self.home, policies=self.policies)


class EmbedderResource(dg.ConfigurableResource):
    """The embedding model, from its package by default; weights load on first use, once."""

    model_path: str | None = None

    def _path(self) -> Path | None:
        return Path(self.model_path) if self.model_path else None

    def embedder(self) -> Embedder:
        """The model in this process: for questions, evaluation and the model's id."""
        return Embedder(self._path())

    def bulk_embedder(self) -> Embedder:
        """What a refresh embeds its new texts with: on the Ray cluster at
        `POLICYFRESH_RAY_ADDRESS` when it is set (`make_embedder`), else in this process."""
        return make_embedder(self._path())


def stage_run(
    context: dg.AssetExecutionContext,
    policyfresh: PolicyfreshResource,
    embedder: EmbedderResource,
    bulk: bool = False,
) -> StageRun:
    """What a stage of `STAGES` works with in this run; `bulk` embeds with `bulk_embedder`."""
    model = embedder.bulk_embedder() if bulk else embedder.embedder()
    return StageRun(policyfresh.settings(), model, context.run.run_id)
