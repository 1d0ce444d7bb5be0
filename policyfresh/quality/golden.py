"""Golden cases: the questions whose answers the index must keep finding, read from a CSV file
and validated line by line."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from policyfresh.store.errors import PolicyfreshError

COLUMNS = (
    "case_id", "user_question", "expected_answer", "case_type", "risk_category",
    "must_escalate", "source_policy", "expected_evidence", "stale_evidence",
)  # fmt: skip
CASE_TYPES = ("fact", "paraphrase", "multi_policy", "ambiguous", "out_of_scope")
RISKS = ("low", "medium", "high")
BOOLEANS = {"true": True, "false": False}


class GoldenFileError(PolicyfreshError):
    """A golden cases file that cannot be used; the message lists every problem with its line."""


@dataclass(frozen=True)
class GoldenCase:
    case_id: str
    user_question: str
    expected_answer: str
    case_type: str
    risk_category: str
    must_escalate: bool
    source_policy: tuple[str, ...]
    expected_evidence: str
    stale_evidence: str
    line: int


@dataclass(frozen=True)
class GoldenSet:
    path: Path
    sha256: str
    cases: list[GoldenCase]

    def where(self, case: GoldenCase) -> str:
        """`file:line`, for messages about one case."""
        return f"{self.path}:{case.line}"


def normalize(text: str) -> str:
    """Whitespace folded: evidence is matched verbatim, whitespace aside."""
    return " ".join(text.split())


def _case(row: dict[str, str], line: int) -> tuple[GoldenCase | None, list[str]]:
    problems = []
    values = {k: (row.get(k) or "").strip() for k in COLUMNS}
    for name in ("case_id", "user_question"):
        if not values[name]:
            problems.append(f"empty {name}")
    if values["case_type"] not in CASE_TYPES:
        problems.append(f"case_type {values['case_type']!r} is not one of {', '.join(CASE_TYPES)}")
    if values["risk_category"] not in RISKS:
        problems.append(f"risk_category {values['risk_category']!r} is not one of {RISKS}")
    escalate = BOOLEANS.get(values["must_escalate"].lower())
    if escalate is None:
        problems.append(f"must_escalate {values['must_escalate']!r} is not true or false")
    sources = tuple(s.strip() for s in values["source_policy"].split("|") if s.strip())
    if escalate is False and not sources:
        problems.append("no source_policy: only a must_escalate case may have none")
    if sources and not values["expected_evidence"]:
        problems.append("a case with a source_policy needs its expected_evidence")
    if problems:
        return None, problems
    case = GoldenCase(
        case_id=values["case_id"],
        user_question=values["user_question"],
        expected_answer=values["expected_answer"],
        case_type=values["case_type"],
        risk_category=values["risk_category"],
        must_escalate=bool(escalate),
        source_policy=sources,
        expected_evidence=normalize(values["expected_evidence"]),
        stale_evidence=normalize(values["stale_evidence"]),
        line=line,
    )
    return case, []


def load_golden(path: Path) -> GoldenSet:
    """Read and validate a golden file; every problem is reported, each with its line."""
    try:
        data = path.read_bytes()
        text = data.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise GoldenFileError(f"cannot read golden cases {path}: {exc}") from exc
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    missing = [c for c in COLUMNS if c not in header]
    unknown = [c for c in header if c not in COLUMNS]
    parts = []
    if missing:
        parts.append(f"missing columns {missing}")
    if unknown:
        parts.append(f"unknown columns {unknown}")
    if parts:
        raise GoldenFileError(f"{path}:1: " + "; ".join(parts))
    cases: list[GoldenCase] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if None in row:
            problems.append(f"{path}:{line}: more fields than columns")
            continue
        case, errors = _case(row, line)
        problems += [f"{path}:{line}: {e}" for e in errors]
        if case is None:
            continue
        if case.case_id in seen:
            problems.append(
                f"{path}:{line}: duplicate case_id {case.case_id!r} (first on line "
                f"{seen[case.case_id]})"
            )
            continue
        seen[case.case_id] = line
        cases.append(case)
    if problems:
        raise GoldenFileError("invalid golden cases:\n  " + "\n  ".join(problems))
    return GoldenSet(path=path, sha256=hashlib.sha256(data).hexdigest(), cases=cases)
