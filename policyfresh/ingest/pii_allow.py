"""The deployment's PII allow list (`policies/PII_ALLOW`): terms and patterns the detector
keeps verbatim (a trademark, a product), one a line, with `#` comments like OWNERS."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AllowEntry:
    """One line: a term (matched as a whole word, case as written) or a `/regex/`."""

    written: str
    pattern: re.Pattern[str]
    line: int


@dataclass(frozen=True)
class AllowList:
    entries: tuple[AllowEntry, ...] = ()

    @property
    def digest(self) -> str:
        """Short hash of the entries: part of the detector's id, so an edit rescans."""
        joined = "\n".join(e.written for e in self.entries)
        return hashlib.sha256(joined.encode()).hexdigest()[:12]

    def matches(self, text: str) -> list[tuple[int, int, str]]:
        """Where each entry matches text: (start, end, entry as written)."""
        return [
            (m.start(), m.end(), e.written)
            for e in self.entries
            for m in e.pattern.finditer(text)
            if m.end() > m.start()
        ]


NO_ALLOW = AllowList()


def parse_allow_list(text: str) -> tuple[AllowList, list[str]]:
    """Parse PII_ALLOW; a bad line is returned as a reason (never its value) and skipped."""
    entries: list[AllowEntry] = []
    errors: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = re.split(r"(?:^|\s)#", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        if len(line) > 2 and line.startswith("/") and line.endswith("/"):
            try:
                pattern = re.compile(line[1:-1])
            except re.error as exc:
                errors.append(f"line {number}: invalid pattern ({exc.msg})")
                continue
        else:
            pattern = re.compile(rf"(?<!\w){re.escape(line)}(?!\w)")
        entries.append(AllowEntry(line, pattern, number))
    return AllowList(tuple(entries)), errors


def load_allow_list(path: Path) -> tuple[AllowList, list[str]]:
    """The allow list at `path` (empty when absent); an unreadable file is one error."""
    if not path.exists():
        return NO_ALLOW, []
    try:
        return parse_allow_list(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return NO_ALLOW, [f"unreadable: {exc}"]
