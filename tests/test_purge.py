"""Erasure: after `purge`, no stored byte under the home holds the document's text."""

import polars as pl
import pytest

from policyfresh.index.vectors import reconcile
from policyfresh.ingest.documents import ingest_documents, read_documents
from policyfresh.quality.pipeline import refresh
from policyfresh.release.purge import ERASED, PurgeError, purge_document
from policyfresh.release.releases import ReleaseError, read_audit, rollback
from policyfresh.serve.search import search
from policyfresh.serve.trace_store import read_traces
from policyfresh.store import delta_store
from policyfresh.store.tables import EVAL_CASE_RESULTS, PURGE_AUDIT
from tests.conftest import files_holding

DISPUTES = "retail/card-disputes.md"
SECRET = "Zebra clause QX4471 sets the chargeback holdback at seventeen percent"
EDIT = "Zebra clause QX4471 now sets the chargeback holdback at nine percent"


def test_a_purged_document_leaves_no_byte_behind_and_the_rest_serves_on(small_settings, embedder):
    path = small_settings.policies / DISPUTES
    original = path.read_text()
    path.write_text(original + f"\n{SECRET}.\n")
    refresh(small_settings, embedder, "build")
    path.write_text(original + f"\n{EDIT}.\n")
    refresh(small_settings, embedder, "edit")
    asked = search(small_settings, embedder, "What is the chargeback holdback in clause QX4471?")
    assert asked.hits[0].doc_id == DISPUTES
    assert files_holding(small_settings.home, SECRET)  # stored as written: the probe can see it

    with pytest.raises(PurgeError, match="still holds a stored version"):
        purge_document(small_settings, DISPUTES, reason="takedown")
    path.unlink()
    result = purge_document(
        small_settings, DISPUTES, reason="request from jane.roe@example.com", requested_by="dpo"
    )

    assert result.versions == [1, 2] and result.releases_dropped
    assert files_holding(small_settings.home, SECRET) == []
    assert files_holding(small_settings.home, EDIT) == []
    assert read_documents(small_settings, current_only=False).filter(doc_id=DISPUTES).is_empty()
    assert reconcile(small_settings, embedder.model_id)["orphaned"] == 0
    # The served release is the index without it; the older ones are gone, rollback says so.
    after = search(small_settings, embedder, "What is the chargeback holdback in clause QX4471?")
    assert after.release == result.republished_release
    assert DISPUTES not in {h.doc_id for h in after.hits}
    with pytest.raises(ReleaseError, match="no longer kept"):
        rollback(small_settings, to=result.releases_dropped[0], actor="t", reason="t")
    assert read_audit(small_settings)["reason"].to_list()[-1] == "erasure"
    # Receipts keep their rank and score; what they pointed at is erased.
    [trace] = read_traces(small_settings, pl.col("trace_id") == asked.trace_id).to_dicts()
    assert trace["hits"][0]["doc_id"] == ERASED and trace["hits"][0]["chunk_id"] is None
    cases = delta_store.read_table(
        small_settings.table_uri(EVAL_CASE_RESULTS.name), EVAL_CASE_RESULTS.schema
    )
    erased = cases.filter(
        pl.col("hits").list.eval(pl.element().struct["doc_id"] == ERASED).list.any()
    )
    assert erased.height and erased["served_evidence"].is_null().all()
    [audit] = delta_store.read_table(
        small_settings.table_uri(PURGE_AUDIT.name), PURGE_AUDIT.schema
    ).to_dicts()
    assert audit["requested_by"] == "dpo" and audit["reason"] == "request from <EMAIL_ADDRESS>"

    # The next refresh converges without it and changes nothing more.
    summary = refresh(small_settings, embedder, "after")
    assert summary["vectors"]["embedded"] == 0
    assert set(reconcile(small_settings, embedder.model_id).values()) == {0}


def test_purging_a_document_never_stored_is_an_error_that_changes_nothing(small_settings):
    ingest_documents(small_settings, "build")
    before = read_documents(small_settings, current_only=False)
    with pytest.raises(PurgeError, match=r"nothing stored for 'retail/no-such\.md'"):
        purge_document(small_settings, "retail/no-such.md", reason="typo")
    assert read_documents(small_settings, current_only=False).equals(before)
