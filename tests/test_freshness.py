"""Per-document freshness: each version's clock from seen to embedded to served, and who is
late when a release is held back."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from policyfresh.index.chunking import Chunker
from policyfresh.index.chunks import refresh_chunks
from policyfresh.ingest import documents
from policyfresh.ingest.documents import ingest_documents, read_documents
from policyfresh.quality.pipeline import STAGES, refresh
from policyfresh.store.freshness import (
    document_lag,
    freshness_summary,
    read_freshness,
    record_embedded,
)
from tests.conftest import HashEmbedder

LEAVE = "hr/annual-leave.md"


def test_versions_move_from_seen_to_served_and_a_removal_is_tracked(small_settings, embedder):
    built = refresh(small_settings, embedder, "build")
    assert built["not_run"] == [] and set(built["seconds"]) == {s.key for s in STAGES.values()}
    release = built["release"]["release"]
    lag = document_lag(small_settings)
    assert lag.height == 5 and set(lag["state"]) == {"served"}
    assert set(lag["release"]) == {release}
    assert (lag["embedded_at"] >= lag["seen_at"]).all()
    assert (lag["published_at"] >= lag["embedded_at"]).all()

    path = small_settings.policies / LEAVE
    path.write_text(path.read_text() + "\n\nStaff may carry over ten days of leave.\n")
    (small_settings.policies / "retail" / "card-disputes.md").unlink()
    ingest_documents(small_settings, "edit")
    waiting = document_lag(small_settings).filter(pl.col("state") != "served")
    assert waiting.sort("doc_id").select("doc_id", "doc_version", "is_deleted").rows() == [
        (LEAVE, 2, False), ("retail/card-disputes.md", 2, True)
    ]  # fmt: skip
    assert waiting["embedded_at"].is_null().all()

    edited = refresh(small_settings, embedder, "edit")
    assert edited["release"]["published"]
    lag = document_lag(small_settings)
    assert set(lag["state"]) == {"served"}
    served = lag.filter(pl.col("doc_id").is_in([LEAVE, "retail/card-disputes.md"]))
    assert set(served["release"]) == {edited["release"]["release"]}
    history = read_freshness(small_settings).filter(pl.col("doc_id") == LEAVE)
    assert history.sort("doc_version")["release"].to_list() == [
        release,
        edited["release"]["release"],
    ]


def test_a_document_not_chunked_is_not_counted_as_embedded(small_settings):
    ingest_documents(small_settings, "ingest")
    refresh_chunks(small_settings, Chunker.for_model(HashEmbedder()), "chunk")
    # A version ingested after chunking has no chunks yet: it must stay pending.
    path = small_settings.policies / LEAVE
    path.write_text(path.read_text() + "\n\nA new rule.\n")
    ingest_documents(small_settings, "edit")
    assert record_embedded(small_settings, "vectors") == 5  # the leave policy's v1 included
    pending = read_freshness(small_settings, pl.col("embedded_at").is_null())
    assert pending.select("doc_id", "doc_version").rows() == [(LEAVE, 2)]


def test_a_blocked_release_leaves_documents_late_with_their_owners(small_settings):
    strict = replace(small_settings.gate, min_hit_at_5=1.0, min_evidence_recall_at_5=1.0)
    settings = replace(small_settings, freshness_slo=60.0, gate=strict)
    result = refresh(settings, HashEmbedder(), "hash")  # random vectors miss a perfect gate
    assert result["eval"]["verdict"] == "blocked" and not result["release"]["published"]
    owners = dict(read_documents(settings).select("doc_id", "owners").iter_rows())
    now = datetime.now(tz=UTC)
    assert {r["state"] for r in document_lag(settings, now).iter_rows(named=True)} == {"pending"}
    at_risk = freshness_summary(settings, now + timedelta(seconds=40))
    assert at_risk["at_risk"] == 5 and at_risk["late"] == 0
    late = freshness_summary(settings, now + timedelta(seconds=90))
    assert late["late"] == 5 and late["served"] == 0
    named = {w["doc_id"]: w["owners"] for w in late["waiting"]}
    assert named[LEAVE] == owners[LEAVE] and named[LEAVE]
    assert all(w["lag_seconds"] >= 90 for w in late["waiting"])


def test_a_run_killed_before_writing_its_versions_leaves_no_phantom(small_settings, monkeypatch):
    ingest_documents(small_settings, "ingest")
    path = small_settings.policies / LEAVE
    original = path.read_text()
    path.write_text(original + "\nA rule that never lands.\n")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed between the freshness and the documents commits")

    with monkeypatch.context() as patch:
        patch.setattr(documents, "_write_versions", killed)
        with pytest.raises(KeyboardInterrupt):
            ingest_documents(small_settings, "killed")
    path.write_text(original)  # reverted before the next run
    ingest_documents(small_settings, "next")
    lag = document_lag(small_settings)
    assert lag.filter(pl.col("doc_id") == LEAVE)["doc_version"].to_list() == [1]
