import polars as pl
import pytest
from deltalake import DeltaTable

from ragfresh.pipeline import refresh
from ragfresh.search import IndexNotBuiltError, ModelMismatchError, search, search_many
from ragfresh.tables import RETRIEVAL_TRACES
from ragfresh.traces import TraceNotFoundError, explain_trace
from tests.conftest import HashEmbedder


def test_search_before_any_build_is_a_clear_error(small_settings, embedder):
    with pytest.raises(IndexNotBuiltError, match="run a refresh"):
        search(small_settings, embedder, "overdraft fee")


def test_hits_carry_receipts_and_every_search_is_traced(small_settings, embedder):
    refresh(small_settings, embedder, "build")
    result = search(small_settings, embedder, "How much is the overdraft item fee?", k=3)
    assert len(result.hits) == 3
    top = result.hits[0]
    assert top.doc_id == "retail/overdraft-fees.md" and top.doc_version == 1
    assert top.model_id == embedder.model_id and top.index_version == result.index_version
    assert top.trace_id == result.trace_id and top.owner == ["team:retail-banking"]
    assert 0 <= top.char_start < top.char_end and top.heading.startswith("Overdraft Fees")
    traces = pl.read_delta(small_settings.table_uri(RETRIEVAL_TRACES.name))
    row = traces.filter(pl.col("trace_id") == result.trace_id).row(0, named=True)
    assert row["caller"] == "app" and row["k"] == 3 and row["model_id"] == embedder.model_id
    assert [h["chunk_id"] for h in row["hits"]] == [h.chunk_id for h in result.hits]


def test_full_text_half_of_hybrid_finds_exact_terms(small_settings, embedder):
    refresh(small_settings, embedder, "build")
    [result] = search_many(small_settings, embedder, ["OFAC SDN list"], k=5)
    assert any("OFAC" in h.text for h in result.hits)


def test_many_questions_share_one_index_version_and_one_commit(small_settings, embedder):
    refresh(small_settings, embedder, "build")
    search(small_settings, embedder, "first search creates the table")
    uri = small_settings.table_uri(RETRIEVAL_TRACES.name)
    before = DeltaTable(uri).version()
    questions = ["overdraft fee", "card dispute deadline", "annual leave carry over"]
    results = search_many(small_settings, embedder, questions, k=2, caller="batch")
    assert len({r.index_version for r in results}) == 1
    assert DeltaTable(uri).version() == before + 1
    traces = pl.read_delta(uri)
    assert traces.filter(pl.col("caller") == "batch").height == 3


def test_search_refuses_an_index_built_by_another_model(small_settings, embedder):
    refresh(small_settings, HashEmbedder(), "other-model")
    with pytest.raises(ModelMismatchError, match="refresh the index with this model"):
        search(small_settings, embedder, "overdraft fee")


def test_trace_reconstructs_a_past_answer_and_flags_superseded_versions(
    small_settings, corpus, embedder
):
    refresh(small_settings, embedder, "build")
    old = search(small_settings, embedder, "overdraft item fee amount", k=5)
    old_fee = next(h for h in old.hits if "$29 per item" in h.text)
    path = corpus / "retail" / "overdraft-fees.md"
    path.write_text(path.read_text().replace("$29 per item", "$32 per item"))
    refresh(small_settings, embedder, "edit")

    report = explain_trace(small_settings, old.trace_id)
    assert report.index_retained and report.trace["question"] == "overdraft item fee amount"
    by_chunk = {h["chunk_id"]: h for h in report.hits}
    assert "$29 per item" in by_chunk[old_fee.chunk_id]["text"]  # from the old index version
    assert by_chunk[old_fee.chunk_id]["status"] == "superseded by version 2"
    overdraft_hits = [h for h in report.hits if h["doc_id"] == "retail/overdraft-fees.md"]
    assert report.stale_hits == len(overdraft_hits) > 0
    with pytest.raises(TraceNotFoundError):
        explain_trace(small_settings, "no-such-trace")
