"""One bad document is held back at its last good version; it never blocks the others."""

import json
from dataclasses import asdict

import polars as pl
from deltalake import DeltaTable

from policyfresh.index import chunks
from policyfresh.index.chunking import Chunker
from policyfresh.index.chunks import refresh_chunks
from policyfresh.index.holds import read_holds
from policyfresh.index.vectors import vectors_dataset
from policyfresh.ingest.documents import ingest_documents
from policyfresh.quality.pipeline import refresh
from policyfresh.release.releases import served_release
from policyfresh.store.tables import HELD_DOCUMENTS

PII = "maria.okafor@example.com"
LEAVE, FEES = "hr/annual-leave.md", "retail/overdraft-fees.md"
LOST = "Carry-over requests go to \ufffd\ufffd by 31 March."  # characters lost upstream
NEW_FEE = "From 1 March the daily overdraft fee is 3 pounds."


def served_text(settings, doc_id: str) -> tuple[set[int], str]:
    """The versions and text of a document in the release search serves."""
    release = served_release(vectors_dataset(settings))
    rows = pl.from_arrow(
        vectors_dataset(settings, release).to_table(columns=["doc_id", "doc_version", "text"])
    ).filter(pl.col("doc_id") == doc_id)
    return set(rows["doc_version"]), " ".join(rows["text"])


def append(settings, doc_id: str, line: str) -> None:
    path = settings.policies / doc_id
    path.write_text(path.read_text() + f"\n{line}\n")


def test_a_failing_document_is_held_while_another_owners_edit_is_served(small_settings, embedder):
    refresh(small_settings, embedder, "build")
    append(small_settings, LEAVE, f"Write to {PII}. {LOST}")
    append(small_settings, FEES, NEW_FEE)
    summary = refresh(small_settings, embedder, "edit")

    [held] = summary["chunks"]["held"]
    assert held["doc_id"] == LEAVE and held["doc_version"] == 2
    assert held["reasons"] == [
        "policy_documents: expect_column_values_to_not_match_regex on text (1 row)"
    ]
    assert summary["release"]["published"]
    assert served_text(small_settings, LEAVE)[0] == {1}  # the last good version serves on
    versions, text = served_text(small_settings, FEES)
    assert versions == {2} and NEW_FEE in text

    [row] = read_holds(small_settings).to_dicts()
    assert row["served_version"] == 1 and row["stage"] == "expectations"
    assert row["owners"] == ["hr-policies@northwind-bank.com"]
    [failure] = json.loads(row["failures"])
    assert failure["suite"] == "policy_documents" and failure["column"] == "text"
    assert failure["rows"] == [{"doc_id": LEAVE, "doc_version": 2}]
    assert PII not in json.dumps(row, default=str)

    path = small_settings.policies / LEAVE
    path.write_text(path.read_text().replace(LOST, "Carry-over requests go to HR."))
    fixed = refresh(small_settings, embedder, "fix")
    assert fixed["chunks"]["held"] == [] and read_holds(small_settings).is_empty()
    assert served_text(small_settings, LEAVE)[0] == {3}


def chunk(settings, embedder, run_id: str) -> dict:
    """Ingest and chunk only: holds are decided there."""
    ingest_documents(settings, run_id)
    return asdict(refresh_chunks(settings, Chunker.for_model(embedder), run_id))


def test_a_standing_hold_is_not_tried_again_until_the_document_changes(
    small_settings, embedder, monkeypatch
):
    chunk(small_settings, embedder, "build")
    append(small_settings, LEAVE, LOST)
    assert chunk(small_settings, embedder, "hold")["held"]
    uri = small_settings.table_uri(HELD_DOCUMENTS.name)
    written = DeltaTable(uri).version()

    def tried(*args):
        raise AssertionError("a held version was validated again with nothing changed")

    monkeypatch.setattr(chunks, "failing_documents", tried)
    again = chunk(small_settings, embedder, "noop")
    assert again["documents_rechunked"] == 0
    assert again["held"] == []  # none new; the standing one is kept
    assert read_holds(small_settings)["doc_id"].to_list() == [LEAVE]
    assert DeltaTable(uri).version() == written
    monkeypatch.undo()
    append(small_settings, LEAVE, "A new line, still with the lost characters.")
    assert chunk(small_settings, embedder, "edit")["held"][0]["doc_version"] == 3
