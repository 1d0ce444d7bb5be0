"""A stored table validated as its check does: once per version, into Data Docs, judged as a
whole: a fault blocks, a few failing documents are held back."""

import json
from dataclasses import replace

import lancedb
import numpy as np
import polars as pl
import pyarrow as pa
from deltalake import write_deltalake

from policyfresh.index.chunking import Chunker
from policyfresh.index.chunks import refresh_chunks
from policyfresh.index.vectors import sync_vectors
from policyfresh.ingest.documents import ingest_documents
from policyfresh.quality.table_checks import table_fault, validate_table
from policyfresh.store.suites import data_docs_dir, load_suite, suite_parameters, suite_path
from policyfresh.store.tables import POLICY_DOCUMENTS, VECTORS

PII = "maria.okafor@example.com"


def test_a_table_version_already_validated_is_not_validated_again(small_settings):
    ingest_documents(small_settings, "ingest")
    suite = load_suite(suite_path("policy_documents"))
    first = validate_table(small_settings, POLICY_DOCUMENTS.name, suite)
    assert not first.reused and first.validation.success and first.rows == 5
    again = validate_table(small_settings, POLICY_DOCUMENTS.name, suite)
    assert again.reused and again.validation == first.validation
    assert again.table_version == first.table_version
    stricter = {**suite, "expectations": suite["expectations"][:1]}
    assert not validate_table(small_settings, POLICY_DOCUMENTS.name, stricter).reused
    path = small_settings.policies / "hr" / "annual-leave.md"
    path.write_text(path.read_text() + "\nA new rule.\n")
    ingest_documents(small_settings, "edit")
    moved = validate_table(small_settings, POLICY_DOCUMENTS.name, suite)
    assert not moved.reused and moved.table_version == first.table_version + 1


def test_bad_vectors_in_lancedb_are_named_and_block(small_settings, embedder):
    ingest_documents(small_settings, "ingest")
    refresh_chunks(small_settings, Chunker.for_model(embedder), "chunk")
    sync_vectors(small_settings, embedder)
    table = lancedb.connect(small_settings.vectors_uri).open_table(VECTORS)
    row = table.to_lance().to_table(limit=1)
    doubled = np.asarray(row["vector"][0].as_py(), dtype=np.float32) * 2  # LanceDB refuses NaN
    planted = row.set_column(
        row.schema.get_field_index("chunk_id"), "chunk_id", pa.array(["planted"])
    ).set_column(
        row.schema.get_field_index("vector"),
        "vector",
        pa.FixedSizeListArray.from_arrays(pa.array(doubled), embedder.dimensions),
    )
    table.add(planted)
    suite = load_suite(suite_path(VECTORS))
    parameters = suite_parameters(embedder.model_id, embedder.dimensions)
    checked = validate_table(small_settings, VECTORS, suite, parameters)
    failed = {f["column"]: f["rows"] for f in checked.validation.failures}
    doc_id = row["doc_id"][0].as_py()
    assert failed == {"norm": [{"doc_id": doc_id, "chunk_id": "planted"}]}
    assert (
        table_fault(small_settings, VECTORS, checked)
        == f"1 of {checked.rows} rows fail the suite: none may fail"
    )
    other = suite_parameters("another-model@384", embedder.dimensions)
    every_row = validate_table(small_settings, VECTORS, suite, other).validation.failing_rows
    assert every_row == checked.rows


def _mojibake(settings, doc_ids: list[str]) -> None:
    """Append new versions whose text lost characters in a conversion (U+FFFD), with PII."""
    documents = pl.read_delta(settings.table_uri(POLICY_DOCUMENTS.name))
    bad = documents.filter(pl.col("doc_id").is_in(doc_ids)).with_columns(
        doc_version=pl.col("doc_version") + 1,
        text=pl.col("text") + f"\nContact {PII} \ufffd\ufffd for the fee.",
    )
    write_deltalake(settings.table_uri(POLICY_DOCUMENTS.name), bad.to_arrow(), mode="append")


def test_a_few_failing_documents_are_no_fault_but_a_larger_share_is(small_settings):
    ingest_documents(small_settings, "ingest")
    suite = load_suite(suite_path(POLICY_DOCUMENTS.name))
    _mojibake(small_settings, ["hr/annual-leave.md"])
    checked = validate_table(small_settings, POLICY_DOCUMENTS.name, suite)
    assert checked.validation.failing_rows == 1 and checked.rows == 6
    assert table_fault(small_settings, POLICY_DOCUMENTS.name, checked) is None
    strict = replace(small_settings, max_held_share=0.1)
    assert table_fault(strict, POLICY_DOCUMENTS.name, checked) == (
        "1 of 6 rows fail the suite: more than 10% of them"
    )


def test_results_are_published_to_data_docs_without_a_value(small_settings):
    ingest_documents(small_settings, "ingest")
    _mojibake(small_settings, ["hr/annual-leave.md"])
    suite = load_suite(suite_path(POLICY_DOCUMENTS.name))
    checked = validate_table(small_settings, POLICY_DOCUMENTS.name, suite)
    [failure] = checked.validation.failures
    assert failure["rows"] == [{"doc_id": "hr/annual-leave.md", "doc_version": 2}]
    docs = data_docs_dir(small_settings)
    index = (docs / "index.html").read_text()
    assert "policy_documents" in index
    [page] = (docs / "validations" / "policy_documents").rglob("*.html")
    assert "hr/annual-leave.md" in page.read_text()
    stored = [p for p in small_settings.home.joinpath("reports").rglob("*") if p.is_file()]
    assert not [p for p in stored if PII.encode() in p.read_bytes()]
    assert PII not in json.dumps(failure)
