"""Owners and classification of a document: front matter first, then the OWNERS rules."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pathspec

from policyfresh.ingest.parsing import ParseError
from policyfresh.store.config import CLASSIFICATIONS

DEFAULT_CLASSIFICATION = "internal"
_OWNER = re.compile(r"^(team:[a-z0-9][a-z0-9._-]*|[^@\s]+@[^@\s]+\.[^@\s]+)$")


@dataclass(frozen=True)
class OwnerRule:
    """One line of an OWNERS file: a gitignore-style glob, owners, an optional classification."""

    pattern: str
    owners: tuple[str, ...]
    classification: str | None
    line: int

    @cached_property
    def _spec(self) -> pathspec.PathSpec:
        return pathspec.PathSpec.from_lines("gitignore", [self.pattern])

    def matches(self, doc_id: str) -> bool:
        return self._spec.match_file(doc_id)


@dataclass(frozen=True)
class Governance:
    owners: tuple[str, ...]
    classification: str


def _check_owner(owner: str, where: str) -> str:
    if not _OWNER.match(owner):
        # The value is not repeated: a reason reaches tables, logs and the CLI, and a person's
        # name in the wrong field is PII.
        raise ParseError(f"{where}: invalid owner (expected team:<name> or an email)")
    return owner


def _check_classification(value: str, where: str) -> str:
    if value not in CLASSIFICATIONS:
        raise ParseError(f"{where}: unknown classification (one of {CLASSIFICATIONS})")
    return value


def parse_owner_rules(text: str) -> tuple[list[OwnerRule], list[str]]:
    """Parse an OWNERS file; bad lines are returned as reasons and skipped, the rest apply."""
    rules: list[OwnerRule] = []
    errors: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        pattern, *tokens = line.split()
        try:
            owners, classification = [], None
            for token in tokens:
                if token.startswith("classification="):
                    classification = _check_classification(token.split("=", 1)[1], f"line {number}")
                else:
                    owners.append(_check_owner(token, f"line {number}"))
            if not owners and classification is None:
                raise ParseError(f"line {number}: a pattern with no owner and no classification")
            rules.append(OwnerRule(pattern, tuple(owners), classification, number))
        except ParseError as exc:
            errors.append(str(exc))
    return rules, errors


def load_owner_rules(path: Path) -> tuple[list[OwnerRule], list[str]]:
    """Rules from an OWNERS file (none when absent); an unreadable file is one error."""
    if not path.exists():
        return [], []
    try:
        return parse_owner_rules(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"unreadable: {exc}"]


def resolve_governance(
    doc_id: str,
    front_matter: dict[str, Any],
    rules: list[OwnerRule],
    fallback: Governance | None = None,
) -> Governance:
    """Front matter `owner`/`classification` win; else, field by field, the first matching rule;
    else the fallback (what a document had while the OWNERS file is broken)."""
    declared = front_matter.get("owner", front_matter.get("owners"))
    if isinstance(declared, str):
        declared = [declared]
    if declared is not None and not (
        isinstance(declared, list) and all(isinstance(o, str) for o in declared)
    ):
        raise ParseError("front matter `owner` must be a string or a list of strings")
    owners = tuple(_check_owner(o.strip(), "front matter") for o in declared or [])
    classification = front_matter.get("classification")
    if classification is not None:
        classification = _check_classification(str(classification).strip(), "front matter")
    for rule in rules:
        if (not owners or classification is None) and rule.matches(doc_id):
            owners = owners or rule.owners
            classification = classification or rule.classification
    if fallback is not None:
        owners = owners or fallback.owners
        classification = classification or fallback.classification
    return Governance(owners=owners, classification=classification or DEFAULT_CLASSIFICATION)
