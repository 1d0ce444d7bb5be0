"""Find the policy files under a root and fingerprint them, without parsing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ragfresh.errors import PoliciesNotFoundError

OWNERS_FILE = "OWNERS"


@dataclass(frozen=True)
class SourceFile:
    doc_id: str
    path: Path
    size_bytes: int
    modified_at: datetime
    sha256: str


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def scan_sources(root: Path) -> tuple[list[SourceFile], list[tuple[str, str]]]:
    """Files below root, hashed; hidden paths (below the root) and the root OWNERS file are
    skipped; what cannot be read comes back as (path, reason)."""
    if not root.is_dir():
        raise PoliciesNotFoundError(f"policies folder not found: {root}")
    files: list[SourceFile] = []
    errors: list[tuple[str, str]] = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        doc_id = relative.as_posix()
        if path.is_dir() or doc_id == OWNERS_FILE or any(p.startswith(".") for p in relative.parts):
            continue
        if path.name == OWNERS_FILE:
            errors.append((doc_id, "nested OWNERS files are not read: put rules in the root one"))
            continue
        if not path.is_file():
            errors.append((doc_id, "not a regular file (broken link, pipe or device)"))
            continue
        try:
            stat = path.stat()
            with path.open("rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as exc:
            errors.append((doc_id, f"unreadable: {exc.strerror or exc}"))
            continue
        modified = datetime.fromtimestamp(stat.st_mtime, tz=UTC)
        files.append(SourceFile(doc_id, path, stat.st_size, modified, digest))
    return files, errors
