import json

import polars as pl
import pytest

from ragfresh.chunking import Chunker
from ragfresh.chunks import read_chunks, refresh_chunks
from ragfresh.documents import ingest_documents, read_documents
from ragfresh.expectations import (
    MAX_FAILED_ROWS,
    SUITES,
    load_suite,
    suite_path,
    validate,
    validate_table,
)
from ragfresh.tables import POLICY_DOCUMENTS


def test_every_suite_is_named_after_its_table():
    names = sorted(p.stem for p in SUITES.glob("*.json"))
    assert names == ["policy_chunks", "policy_documents"]
    for name in names:
        assert load_suite(suite_path(name))["name"] == name


def test_real_tables_pass_their_suites(settings, corpus, embedder, monkeypatch):
    monkeypatch.setenv("RAGFRESH_PII_RULES", "restricted=block")
    settings = type(settings).load()
    ingest_documents(settings, run_id="r1")
    (corpus / "hr" / "remote-work.md").unlink()
    ingest_documents(settings, run_id="r2")  # a tombstone: no text, no hash, no size
    assert refresh_chunks(settings, Chunker.for_model(embedder), run_id="r1").blocked > 0
    documents = read_documents(settings, current_only=False)
    assert documents["is_deleted"].any()
    result = validate(documents, load_suite(suite_path("policy_documents")), POLICY_DOCUMENTS.key)
    assert result.success and result.evaluated == 10, result.failures
    chunks = validate(read_chunks(settings), load_suite(suite_path("policy_chunks")), ("chunk_id",))
    assert chunks.success, chunks.failures


def test_a_bad_table_fails_naming_its_rows_by_key_and_never_their_values(settings):
    ingest_documents(settings, run_id="r1")
    documents = read_documents(settings, current_only=False)
    planted = documents.head(1).with_columns(classification=pl.lit("jane.doe@example.com"))
    bad = pl.concat([documents, planted])
    result = validate(bad, load_suite(suite_path("policy_documents")), POLICY_DOCUMENTS.key)
    assert not result.success
    failed = {(f["expectation"], str(f["column"])) for f in result.failures}
    assert ("expect_column_values_to_be_in_set", "classification") in failed
    assert ("expect_compound_columns_to_be_unique", "['doc_id', 'doc_version']") in failed
    wrong = next(f for f in result.failures if f["column"] == "classification")
    row = planted.row(0, named=True)
    assert wrong["unexpected_count"] == 1
    assert wrong["rows"] == [{"doc_id": row["doc_id"], "doc_version": row["doc_version"]}]
    assert "jane.doe" not in json.dumps(result.failures)


def test_failing_rows_are_capped_per_expectation(settings):
    ingest_documents(settings, run_id="r1")
    documents = read_documents(settings, current_only=False)
    many = pl.concat([documents.with_columns(doc_version=pl.lit(v)) for v in range(1, 4)])
    bad = many.with_columns(classification=pl.lit("secret"))
    result = validate(bad, load_suite(suite_path("policy_documents")), POLICY_DOCUMENTS.key)
    wrong = next(f for f in result.failures if f["column"] == "classification")
    assert wrong["unexpected_count"] == bad.height > MAX_FAILED_ROWS
    assert len(wrong["rows"]) == MAX_FAILED_ROWS


def test_a_suite_without_expectations_is_rejected(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="needs a `name` and a list of `expectations`"):
        load_suite(path)


def test_a_table_version_already_validated_is_not_validated_again(small_settings):
    ingest_documents(small_settings, "ingest")
    suite = load_suite(suite_path("policy_documents"))
    first = validate_table(small_settings, POLICY_DOCUMENTS, suite)
    assert not first.reused and first.validation.success and first.rows == 5
    again = validate_table(small_settings, POLICY_DOCUMENTS, suite)
    assert again.reused and again.validation == first.validation
    assert again.table_version == first.table_version
    stricter = {**suite, "expectations": suite["expectations"][:1]}
    assert not validate_table(small_settings, POLICY_DOCUMENTS, stricter).reused
    path = small_settings.policies / "hr" / "annual-leave.md"
    path.write_text(path.read_text() + "\nA new rule.\n")
    ingest_documents(small_settings, "edit")
    moved = validate_table(small_settings, POLICY_DOCUMENTS, suite)
    assert not moved.reused and moved.table_version == first.table_version + 1
