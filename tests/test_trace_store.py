"""Stored traces: the question redacted, its hash keyed by the home's secret, kept for a while."""

import hashlib
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from policyfresh.serve.trace_store import (
    MAX_CALLER,
    prune_traces,
    read_traces,
    trace_secret,
    write_traces,
)
from policyfresh.store.config import Settings
from policyfresh.store.tables import RETRIEVAL_TRACES

EMAIL = "maria.okafor@example.com"
QUESTION = f"Can {EMAIL} still waive the overdraft fee?"


def trace(question: str, searched_at: datetime | None = None) -> dict:
    return {
        "trace_id": uuid.uuid4().hex,
        "searched_at": searched_at or datetime.now(tz=UTC),
        "question": question,
        "k": 5,
        "hits": [],
        "index_version": 1,
        "model_id": "m",
        "latency_ms": 1.0,
        "caller": "cli",
        "release": 1,
        "entitled": ["public"],
        "api_key_id": None,
    }


def stored_bytes(settings: Settings) -> bytes:
    table = Path(settings.table_uri(RETRIEVAL_TRACES.name).removeprefix("file://"))
    return b"".join(p.read_bytes() for p in table.rglob("*") if p.is_file())


def test_the_stored_question_is_redacted_and_its_hash_keyed(settings):
    write_traces(settings, [trace(QUESTION), trace(QUESTION)], run_id="t")
    first, second = read_traces(settings).to_dicts()
    assert EMAIL not in first["question"] and "<EMAIL_ADDRESS>" in first["question"]
    assert EMAIL.encode() not in stored_bytes(settings)
    assert first["question_sha256"] == second["question_sha256"]  # the same question groups
    assert first["question_sha256"] != hashlib.sha256(QUESTION.encode()).hexdigest()
    assert stat.S_IMODE(trace_secret(settings).stat().st_mode) == 0o600


def test_the_stored_caller_is_redacted_then_capped(settings):
    long = f"agent-for {EMAIL} " + "x" * 200
    write_traces(settings, [trace(QUESTION) | {"caller": long}], run_id="t")
    [stored] = read_traces(settings)["caller"].to_list()
    assert stored.startswith("agent-for <EMAIL_ADDRESS> x") and len(stored) == MAX_CALLER
    assert EMAIL.encode() not in stored_bytes(settings)


def test_another_home_hashes_the_same_question_differently(settings, tmp_path):
    other = Settings.load(home=tmp_path / "other")
    write_traces(settings, [trace(QUESTION)], run_id="t")
    write_traces(other, [trace(QUESTION)], run_id="t")
    [ours], [theirs] = (read_traces(s)["question_sha256"].to_list() for s in (settings, other))
    assert ours != theirs


def test_traces_past_retention_are_deleted_from_every_stored_file(settings, monkeypatch):
    monkeypatch.setenv("POLICYFRESH_TRACE_RETENTION_DAYS", "30")
    settings = Settings.load()
    old = datetime.now(tz=UTC) - timedelta(days=31)
    write_traces(settings, [trace("when is the old fee charged", old)], run_id="t")
    write_traces(settings, [trace("what is the new fee")], run_id="t")
    assert b"old fee" in stored_bytes(settings)  # stored as written, so its absence means erased

    assert prune_traces(settings, run_id="t") == {"deleted": 1, "kept": 1, "impact_deleted": 0}
    assert read_traces(settings)["question"].to_list() == ["what is the new fee"]
    assert b"old fee" not in stored_bytes(settings)
    assert prune_traces(settings, run_id="t") == {"deleted": 0, "kept": 1, "impact_deleted": 0}
