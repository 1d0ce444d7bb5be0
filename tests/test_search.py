import shutil

import polars as pl
import pytest
from deltalake import DeltaTable

from policyfresh.index.chunking import Chunker
from policyfresh.index.chunks import refresh_chunks
from policyfresh.index.vectors import open_vectors, sync_vectors
from policyfresh.ingest.documents import ingest_documents
from policyfresh.quality.pipeline import refresh
from policyfresh.serve.search import IndexNotBuiltError, ModelMismatchError, search, search_many
from policyfresh.serve.traces import TraceNotFoundError, explain_trace
from policyfresh.store.config import CLASSIFICATIONS, Settings
from policyfresh.store.errors import PolicyfreshError
from policyfresh.store.tables import RETRIEVAL_TRACES
from tests.conftest import HANDBOOK, HashEmbedder


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


def test_full_text_half_of_hybrid_finds_exact_terms(small_settings, corpus, embedder):
    (corpus / "forms.md").write_text("# Forms\n\nFile disputes on form QX7731B only.\n")
    refresh(small_settings, embedder, "build")
    table = open_vectors(small_settings)
    fts = table.search("QX7731B", query_type="fts").limit(3).to_polars()
    assert fts["doc_id"].to_list() == ["forms.md"]
    [result] = search_many(small_settings, embedder, ["QX7731B"], k=3)
    assert result.hits[0].doc_id == "forms.md"


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


def test_search_refuses_an_index_built_by_another_model(small_settings, embedder, monkeypatch):
    monkeypatch.setenv("POLICYFRESH_GOLDEN_CASES", "none")  # published unevaluated
    ungated = Settings.load()
    assert refresh(ungated, HashEmbedder(), "other-model")["release"]["published"]
    with pytest.raises(ModelMismatchError, match="refresh the index with this model"):
        search(ungated, embedder, "overdraft fee")


def test_search_serves_only_a_published_release(small_settings, embedder):
    ingest_documents(small_settings, "ingest")
    refresh_chunks(small_settings, Chunker.for_model(embedder), "chunk")
    sync_vectors(small_settings, embedder)  # an index, but no evaluation and no release
    with pytest.raises(IndexNotBuiltError, match=r"no release .* is published yet"):
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


def test_trace_tells_a_governance_version_from_a_text_change(small_settings, corpus, embedder):
    refresh(small_settings, embedder, "build")
    old = search(small_settings, embedder, "How are customer complaints handled?", k=5)
    doc = "compliance/complaints-handling.md"  # owned through OWNERS, not front matter
    assert any(h.doc_id == doc for h in old.hits)
    owners = corpus / "OWNERS"
    owners.write_text(f"{doc} team:complaints\n" + owners.read_text())
    assert refresh(small_settings, embedder, "new-owner")["vectors"]["embedded"] == 0
    report = explain_trace(small_settings, old.trace_id)
    statuses = {h["status"] for h in report.hits if h["doc_id"] == doc}
    assert statuses == {"current (version 2 has the same text)"}
    assert report.stale_hits == 0


def test_a_trace_whose_index_version_is_gone_says_so(small_settings, embedder):
    refresh(small_settings, embedder, "build")
    result = search(small_settings, embedder, "overdraft fee", k=2)
    uri = small_settings.table_uri(RETRIEVAL_TRACES.name)
    DeltaTable(uri).update(updates={"index_version": "999"})
    report = explain_trace(small_settings, result.trace_id)
    assert not report.index_retained
    assert all(h["text"] is None for h in report.hits)


def test_trace_appends_are_compacted_every_so_often(small_settings, embedder, monkeypatch):
    from policyfresh.store import delta_store

    monkeypatch.setattr(delta_store, "COMPACT_EVERY", 2)
    refresh(small_settings, embedder, "build")
    for n in range(4):
        search(small_settings, embedder, f"question {n}")
    history = DeltaTable(small_settings.table_uri(RETRIEVAL_TRACES.name)).history()
    assert any(h["operation"] == "OPTIMIZE" for h in history)


def test_a_caller_reads_only_its_classifications_and_the_trace_says_which(small_settings, embedder):
    refresh(small_settings, embedder, "build")
    sentence = "Thresholds may never be raised by more than 3 percentage points in one change."
    everything = search(small_settings, embedder, sentence, k=3)
    assert everything.hits[0].classification == "restricted"
    internal = search(small_settings, embedder, sentence, k=3, entitled=["public", "internal"])
    assert len(internal.hits) == 3, "filtered inside the query, before ranking"
    assert {h.classification for h in internal.hits} <= {"public", "internal"}
    traces = pl.read_delta(small_settings.table_uri(RETRIEVAL_TRACES.name))
    by_id = {row["trace_id"]: row for row in traces.iter_rows(named=True)}
    assert by_id[internal.trace_id]["entitled"] == ["internal", "public"]
    assert by_id[everything.trace_id]["entitled"] == sorted(CLASSIFICATIONS)
    assert by_id[internal.trace_id]["api_key_id"] is None
    with pytest.raises(PolicyfreshError, match="may read no classification"):
        search(small_settings, embedder, sentence, entitled=[])


LEAVE_PAGES = [
    f"travel-and-leave/{name}.md"
    for name in ("paid-parental-leave", "leave", "fmla", "advanced-sick-leave",
                 "voluntary-leave-transfer-program", "overtime", "going-out-of-office")
]  # fmt: skip


def test_a_fact_inside_a_long_section_is_served_in_the_top_5(tmp_path, embedder, monkeypatch):
    # The 18F handbook's parental leave page: the section is found first, but the one sentence
    # that answers shares its chunk with five other rules of the same section.
    for page in LEAVE_PAGES:
        target = tmp_path / "policies" / page
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(HANDBOOK / "pages" / page, target)
    monkeypatch.setenv("POLICYFRESH_GOLDEN_CASES", "none")
    settings = Settings.load(home=tmp_path / "home", policies=tmp_path / "policies")
    refresh(settings, embedder, "build")
    question = "If I split my baby leave into pieces, when does the stay-on period start?"
    evidence = "the 12 week period still begins after your *final* day of PPL"
    result = search(settings, embedder, question, k=5)
    assert result.hits[0].doc_id == "travel-and-leave/paid-parental-leave.md"
    assert any(evidence in h.text for h in result.hits)
