"""Dagster resources: thin configurable handles on ragfresh's core settings and services."""

from __future__ import annotations

import dagster as dg

from ragfresh.config import Settings


class RagfreshResource(dg.ConfigurableResource):
    """Where the policies are read from and where state lives (defaults: `RAGFRESH_*` env)."""

    home: str | None = None
    policies: str | None = None

    def settings(self) -> Settings:
        return Settings.load(home=self.home, policies=self.policies)
