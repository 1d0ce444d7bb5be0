"""How search traces are stored: the question and the caller redacted, the question's hash
keyed by a secret of the home, and nothing kept past the retention."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from policyfresh.store import delta_store
from policyfresh.store.config import Settings
from policyfresh.store.locks import writer_lock
from policyfresh.store.tables import ANSWER_IMPACT, RETRIEVAL_TRACES, empty_frame

log = logging.getLogger(__name__)

MAX_CALLER = 100  # characters of a caller's name kept, after redaction


def trace_secret(settings: Settings) -> Path:
    """The file holding the home's secret key (question hashes, API key ids), made (readable by
    its owner only) on first use."""
    path = settings.home / "secrets" / "trace_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return path
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(32))
    return path


def question_hash(key: bytes, question: str) -> str:
    """HMAC-SHA256 of the question: repeats group together, and nobody without the key can
    confirm a guessed question (a plain hash of a short question is easy to guess)."""
    return hmac.new(key, question.encode(), hashlib.sha256).hexdigest()


def stored_traces(settings: Settings, traces: list[dict[str, Any]]) -> pl.DataFrame:
    """Trace rows as stored: PII in the question and the caller replaced by typed placeholders
    (the caller then cut to `MAX_CALLER` characters), the question's hash keyed."""
    from policyfresh.ingest.pii import (  # Presidio is slow to import: only when writing
        detect_pii,
        redact,
    )

    key = trace_secret(settings).read_bytes()
    callers = {c: redact(c, detect_pii(c))[0][:MAX_CALLER] for c in {t["caller"] for t in traces}}
    rows = [
        {
            **t,
            "question": redact(t["question"], detect_pii(t["question"]))[0],
            "question_sha256": question_hash(key, t["question"]),
            "caller": callers[t["caller"]],
        }
        for t in traces
    ]
    return pl.DataFrame(rows, schema=empty_frame(RETRIEVAL_TRACES).schema)


def write_traces(settings: Settings, traces: list[dict[str, Any]], run_id: str) -> None:
    """Append trace rows, as stored, in one commit."""
    rows = stored_traces(settings, traces)
    with writer_lock(settings, RETRIEVAL_TRACES.name):  # never while traces are erased
        delta_store.append(RETRIEVAL_TRACES, _uri(settings), rows, run_id=run_id)


def _uri(settings: Settings) -> str:
    return settings.table_uri(RETRIEVAL_TRACES.name)


def read_traces(
    settings: Settings, where: pl.Expr | None = None, columns: list[str] | None = None
) -> pl.DataFrame:
    return delta_store.read_table(_uri(settings), RETRIEVAL_TRACES.schema, columns, where)


def prune_traces(settings: Settings, run_id: str) -> dict[str, int]:
    """Delete traces older than the retention, and the impact rows of those answers, with
    every stored byte that held them."""
    cutoff = datetime.now(tz=UTC) - timedelta(days=settings.trace_retention_days)
    expired = pl.col("searched_at") < cutoff
    predicate = f"searched_at < '{cutoff.isoformat()}'"
    counts = {}
    for table in (RETRIEVAL_TRACES, ANSWER_IMPACT):
        uri = settings.table_uri(table.name)
        deleted = delta_store.read_table(uri, table.schema, ["searched_at"], expired).height
        if deleted:
            with writer_lock(settings, table.name):
                deleted = delta_store.erase(uri, predicate, run_id)
            log.info("deleted %d %s rows older than %d days", deleted, table.name,
                     settings.trace_retention_days)  # fmt: skip
        counts[table.name] = deleted
    return {
        "deleted": counts[RETRIEVAL_TRACES.name],
        "kept": read_traces(settings, columns=["trace_id"]).height,
        "impact_deleted": counts[ANSWER_IMPACT.name],
    }
