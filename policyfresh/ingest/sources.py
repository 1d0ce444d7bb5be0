"""Find the policy files under a root and fingerprint them, stat first, without parsing."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from policyfresh.store.config import PII_ALLOW_FILE
from policyfresh.store.errors import PoliciesNotFoundError

OWNERS_FILE = "OWNERS"
NOT_REGULAR = "not a regular file (broken link, pipe or device)"
NESTED_OWNERS = "nested OWNERS files are not read: put rules in the root one"
LEAVES_ROOT = "a link that leaves the policies folder: refused"
LINKED_FOLDER = "a linked folder: its files are not read (move the folder in, or link each file)"


@dataclass(frozen=True)
class SourceFile:
    doc_id: str
    path: Path
    size_bytes: int
    modified_at: datetime
    sha256: str


@dataclass(frozen=True)
class Stamp:
    """What is known of one file: a changed size or mtime means its bytes are hashed again."""

    size: int
    mtime_ns: int
    sha256: str


@dataclass(frozen=True)
class TreeState:
    """Every file below a root that ingestion reads (OWNERS included), and those it cannot."""

    root: Path
    files: dict[str, Stamp] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    newest_mtime: float = 0.0  # of any file or folder: a removal changes its folder's

    @property
    def fingerprint(self) -> str:
        """Changes when any file's content, any file's presence or any problem changes."""
        digest = hashlib.sha256()
        for path, stamp in sorted(self.files.items()):
            digest.update(f"{path}\0{stamp.sha256}\n".encode())
        for path, reason in sorted(self.problems.items()):
            digest.update(f"{path}\0!{reason}\n".encode())
        return digest.hexdigest()[:16]

    def changes_since(self, before: TreeState | None) -> dict[str, list[str]]:
        """Paths added, changed and removed since `before` (everything is added if None)."""
        old = before.files if before else {}
        return {
            "added": sorted(self.files.keys() - old.keys()),
            "changed": sorted(
                p for p in self.files.keys() & old.keys() if self.files[p].sha256 != old[p].sha256
            ),
            "removed": sorted(old.keys() - self.files.keys()),
        }

    def to_json(self) -> str:
        files = {p: [s.size, s.mtime_ns, s.sha256] for p, s in self.files.items()}
        return json.dumps({"root": str(self.root), "files": files, "problems": self.problems})

    @classmethod
    def from_json(cls, text: str) -> TreeState:
        data = json.loads(text)
        files = {p: Stamp(*values) for p, values in data["files"].items()}
        return cls(Path(data["root"]), files, data["problems"])


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _link_problem(link: Path, root: Path) -> str | None:
    """Why a symbolic link is not read, or None: a link to a file inside the root is."""
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):  # broken, or a loop
        return NOT_REGULAR
    if target.is_dir():
        return LINKED_FOLDER
    return None if target.is_relative_to(root.resolve()) else LEAVES_ROOT


def tree_state(root: Path, known: Mapping[str, Stamp] | None = None) -> TreeState:
    """Stat every file below root; hash only those whose size or mtime differ from `known`.
    Hidden paths below the root are skipped."""
    if not root.is_dir():
        raise PoliciesNotFoundError(f"policies folder not found: {root}")
    known = known or {}
    files: dict[str, Stamp] = {}
    problems: dict[str, str] = {}
    newest = root.stat().st_mtime
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        doc_id = relative.as_posix()
        refused = _link_problem(path, root) if path.is_symlink() else None
        if refused:
            problems[doc_id] = refused
            continue
        try:
            stat = path.stat()
        except OSError:
            problems[doc_id] = NOT_REGULAR
            continue
        newest = max(newest, stat.st_mtime)
        if path.is_dir():
            continue
        if not path.is_file():
            problems[doc_id] = NOT_REGULAR
            continue
        previous = known.get(doc_id)
        if previous and (previous.size, previous.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
            files[doc_id] = previous
            continue
        try:
            with path.open("rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as exc:
            problems[doc_id] = f"unreadable: {exc.strerror or exc}"
            continue
        files[doc_id] = Stamp(stat.st_size, stat.st_mtime_ns, digest)
    return TreeState(root, files, problems, newest)


def wait_until_quiet(
    root: Path, known: Mapping[str, Stamp] | None, quiet_seconds: float, timeout: float
) -> TreeState | None:
    """The tree once nothing in it has been modified for `quiet_seconds`, so a burst of saves
    is seen as one change; None if it is still changing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    state = tree_state(root, known)
    while (idle := time.time() - state.newest_mtime) < quiet_seconds:
        wait = min(quiet_seconds - idle, quiet_seconds)
        if time.monotonic() + wait > deadline:
            return None
        time.sleep(wait)
        state = tree_state(root, state.files)
    return state


def scan_sources(
    root: Path, known: Mapping[str, Stamp] | None = None
) -> tuple[list[SourceFile], list[tuple[str, str]], TreeState]:
    """Policy files below root with their hashes, what cannot be read as (path, reason), and
    the tree state they came from. The root OWNERS and PII_ALLOW files are not policies; nested
    OWNERS files are errors."""
    state = tree_state(root, known)
    files: list[SourceFile] = []
    errors = sorted(state.problems.items())
    for doc_id, stamp in state.files.items():
        if doc_id in (OWNERS_FILE, PII_ALLOW_FILE):
            continue
        if Path(doc_id).name == OWNERS_FILE:
            errors.append((doc_id, NESTED_OWNERS))
            continue
        modified = datetime.fromtimestamp(stamp.mtime_ns / 1e9, tz=UTC)
        files.append(SourceFile(doc_id, root / doc_id, stamp.size, modified, stamp.sha256))
    return files, sorted(errors), state
