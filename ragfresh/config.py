"""Where ragfresh keeps its state and reads its policies: one home, every location a URI."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

CLASSIFICATIONS = ("public", "internal", "confidential", "restricted")
PII_ACTIONS = ("redact", "block", "allow")


def _parse_pii_rules(spec: str) -> dict[str, str]:
    """Parse `restricted=block,public=allow` into {classification: action}."""
    rules: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        classification, _, action = item.partition("=")
        if classification not in CLASSIFICATIONS or action not in PII_ACTIONS:
            raise ValueError(
                f"invalid PII rule {item!r}: expected <classification>=<action> with "
                f"classification in {CLASSIFICATIONS} and action in {PII_ACTIONS}"
            )
        rules[classification] = action
    return rules


@dataclass(frozen=True)
class Settings:
    """Resolved configuration of one ragfresh deployment."""

    home: Path
    policies: Path
    lake_uri: str
    vectors_uri: str
    pii_rules: dict[str, str] = field(default_factory=dict)
    vector_index_min_rows: int = 10_000
    version_retention_days: int = 90

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def locks(self) -> Path:
        return self.home / "locks"

    def table_uri(self, name: str) -> str:
        return f"{self.lake_uri.rstrip('/')}/{name}"

    def pii_action(self, classification: str) -> str:
        return self.pii_rules.get(classification, "redact")

    @classmethod
    def load(cls, home: str | Path | None = None, policies: str | Path | None = None) -> Settings:
        """Settings from arguments, else `RAGFRESH_*` environment variables, else defaults."""
        env = os.environ
        home_path = Path(home or env.get("RAGFRESH_HOME") or ".ragfresh").resolve()
        policies_path = Path(policies or env.get("RAGFRESH_POLICIES") or "policies").resolve()
        return cls(
            home=home_path,
            policies=policies_path,
            lake_uri=env.get("RAGFRESH_LAKE_URI") or (home_path / "lake").as_uri(),
            vectors_uri=env.get("RAGFRESH_VECTORS_URI") or str(home_path / "vectors"),
            pii_rules=_parse_pii_rules(env.get("RAGFRESH_PII_RULES", "")),
            vector_index_min_rows=int(env.get("RAGFRESH_VECTOR_INDEX_MIN_ROWS", "10000")),
            version_retention_days=int(env.get("RAGFRESH_VERSION_RETENTION_DAYS", "90")),
        )
