import shutil

import polars as pl
import pytest
from deltalake import DeltaTable

from policyfresh.ingest import documents, pii
from policyfresh.ingest.documents import (
    EmptyPoliciesError,
    MassRemovalError,
    ingest_documents,
    ingested_tree,
    read_documents,
)
from policyfresh.ingest.pii import PiiDetectorError
from policyfresh.quality.pipeline import refresh
from policyfresh.quality.reports import build_reports
from policyfresh.serve.search import search
from policyfresh.store import delta_store
from policyfresh.store.config import Settings
from policyfresh.store.tables import INGEST_ERRORS, POLICY_DOCUMENTS, TABLES
from tests.conftest import SMALL, keep_only


def all_versions(settings):
    return read_documents(settings, current_only=False).sort("doc_id", "doc_version")


def test_first_ingest_adds_every_bundled_policy_with_governance(settings):
    result = ingest_documents(settings, run_id="r1")
    assert result.counts() == {
        "added": 22, "changed": 0, "deleted": 0, "unchanged": 0, "quarantined": 0
    }  # fmt: skip
    docs = read_documents(settings).to_pandas().set_index("doc_id")
    assert list(docs.loc["retail/overdraft-fees.md", "owners"]) == ["team:retail-banking"]
    assert docs.loc["compliance/sanctions-screening.md", "classification"] == "restricted"
    assert list(docs.loc["operations/business-continuity.txt", "owners"]) == []
    card = docs.loc["retail/card-disputes.md"]
    types = {s["entity_type"] for s in card["pii_spans"]}
    assert "CREDIT_CARD" in types
    assert all(
        card["text"][s["start"] : s["end"]] != "4111 1111 1111 1112" for s in card["pii_spans"]
    )


def test_governance_change_in_owners_file_writes_a_new_version(settings, corpus):
    ingest_documents(settings, run_id="r1")
    owners = corpus / "OWNERS"
    owners.write_text(
        "operations/** team:operations classification=confidential\n" + owners.read_text()
    )
    result = ingest_documents(settings, run_id="r2")
    assert (result.changed, result.added) == (2, 0)
    current = read_documents(settings).filter(pl.col("doc_id").str.starts_with("operations/"))
    assert current["change"].to_list() == ["governance", "governance"]
    assert current["owners"].to_list() == [["team:operations"], ["team:operations"]]
    assert set(current["doc_version"]) == {2}


def test_removed_then_restored_file_gets_tombstone_then_new_version(settings, corpus):
    ingest_documents(settings, run_id="r1")
    path = corpus / "hr" / "remote-work.md"
    content = path.read_bytes()
    path.unlink()
    assert ingest_documents(settings, run_id="r2").deleted == 1
    path.write_bytes(content)
    assert ingest_documents(settings, run_id="r3").added == 1
    history = all_versions(settings).filter(pl.col("doc_id") == "hr/remote-work.md")
    assert history.select("doc_version", "is_current", "is_deleted", "change").rows() == [
        (1, False, False, "added"),
        (2, False, True, "deleted"),
        (3, True, False, "added"),
    ]


def test_bad_new_content_keeps_the_previous_version_current(settings, corpus):
    ingest_documents(settings, run_id="r1")
    (corpus / "retail" / "overdraft-fees.md").write_bytes(b"---\ntitle: [broken\n---\nnew fee")
    first = ingest_documents(settings, run_id="r2")
    again = ingest_documents(settings, run_id="r3")
    assert (first.quarantined, first.deleted, first.changed) == (1, 0, 0)
    current = read_documents(settings).filter(pl.col("doc_id") == "retail/overdraft-fees.md")
    assert current["doc_version"].to_list() == [1]
    assert "Overdraft" in current["title"][0]
    errors = pl.read_delta(settings.table_uri(INGEST_ERRORS.name))
    assert errors["path"].to_list() == ["retail/overdraft-fees.md"]
    assert errors["reason"][0].startswith("malformed YAML front matter")
    assert again.quarantined == 1 and again.errors.height == 1


def test_table_is_governed(settings):
    ingest_documents(settings, run_id="run-42")
    table = DeltaTable(settings.table_uri(POLICY_DOCUMENTS.name))
    config = table.metadata().configuration
    assert config["delta.enableChangeDataFeed"] == "true"
    assert config["policyfresh.owner"] == "team:data-platform"
    assert table.metadata().name == "policy_documents"
    text_field = next(f for f in table.schema().fields if f.name == "text")
    assert text_field.metadata["pii"] == "contains"
    assert "unredacted" in text_field.metadata["description"]
    merges = [h for h in table.history() if h["operation"] == "MERGE"]
    assert merges[0]["policyfresh.run_id"] == "run-42"


def test_whole_18f_handbook_ingests_with_nothing_quarantined(handbook_ingested):
    handbook, result = handbook_ingested
    assert result.quarantined == 0, result.errors.to_dicts()
    assert result.added == 246
    texts = read_documents(handbook)["text"]
    assert texts.str.contains("{% page", literal=True).any()  # Liquid tags survive as text


def test_broken_owners_file_keeps_every_documents_governance(settings, corpus):
    ingest_documents(settings, run_id="r1")
    owners = corpus / "OWNERS"
    owners.write_text(
        owners.read_text().replace("classification=confidential", "classification=secret")
    )
    result = ingest_documents(settings, run_id="r2")
    assert (result.changed, result.unchanged, result.quarantined) == (0, 22, 0)
    errors = pl.read_delta(settings.table_uri(INGEST_ERRORS.name))
    assert set(errors["path"]) == {"OWNERS"}
    assert all("unknown classification (one of" in r for r in errors["reason"])
    sanctions = corpus / "compliance" / "anti-money-laundering.md"  # confidential by OWNERS
    sanctions.write_text(sanctions.read_text() + "\nReviewed again this quarter.\n")
    owners.write_bytes(b"\xff\xfe not utf-8")
    edited = ingest_documents(settings, run_id="r3")
    assert edited.changed == 1
    row = read_documents(settings).filter(pl.col("doc_id") == "compliance/anti-money-laundering.md")
    assert (row["owners"][0].to_list(), row["classification"][0]) == (
        ["team:compliance"],
        "confidential",
    )


def test_empty_policies_folder_refuses_to_tombstone_everything(settings, corpus):
    ingest_documents(settings, run_id="r1")
    for path in corpus.rglob("*"):
        if path.is_file():
            path.unlink()
    with pytest.raises(EmptyPoliciesError, match="refusing to tombstone all 22 documents"):
        ingest_documents(settings, run_id="r2")
    assert read_documents(settings).height == 22


def test_removing_more_than_a_quarter_of_live_documents_stops_until_confirmed(
    settings, corpus, monkeypatch
):
    ingest_documents(settings, run_id="r1")
    shutil.rmtree(corpus / "hr")  # 6 of 22: a half-synced or unmounted folder looks the same
    with pytest.raises(MassRemovalError, match="6 of 22 live documents would be removed"):
        ingest_documents(settings, run_id="r2")
    assert read_documents(settings).height == 22  # nothing removed
    monkeypatch.setenv("POLICYFRESH_ALLOW_MASS_DELETE", "1")
    confirmed = ingest_documents(Settings.load(), run_id="r3")
    assert confirmed.deleted == 6 and read_documents(settings).height == 16


def test_a_new_pii_detector_rescans_stored_documents(settings, monkeypatch):
    ingest_documents(settings, run_id="r1")
    monkeypatch.setattr(documents, "detector_id", lambda allow: "presidio/next")
    result = ingest_documents(settings, run_id="r2")
    assert result.changed == 22
    current = read_documents(settings)
    assert set(current["change"]) == {"rescanned"} and set(current["pii_detector"]) == {
        "presidio/next"
    }
    assert ingest_documents(settings, run_id="r3").changed == 0


def test_a_very_long_document_is_scanned_not_rejected(settings, corpus):
    # Past spaCy's default limit of 1,000,000 characters, in few tokens: NER time is per token.
    paragraph = ("retentionschedule" * 60 + " ") * 4 + "\n\n"
    text = "# Archive\n\n" + paragraph * 250 + "Contact maria.okafor@northwind-bank.com.\n"
    assert len(text) > 1_000_000
    (corpus / "archive.md").write_text(text)
    result = ingest_documents(settings, run_id="r1")
    assert result.quarantined == 0
    spans = read_documents(settings).filter(pl.col("doc_id") == "archive.md")["pii_spans"][0]
    assert [s["entity_type"] for s in spans] == ["EMAIL_ADDRESS"]


def test_a_killed_table_creation_is_governed_on_the_next_run(settings):
    from deltalake import DeltaTable as Table

    Table.create(settings.table_uri(POLICY_DOCUMENTS.name), schema=POLICY_DOCUMENTS.schema)
    ingest_documents(settings, run_id="after-kill")
    config = Table(settings.table_uri(POLICY_DOCUMENTS.name)).metadata().configuration
    assert config["policyfresh.owner"] == "team:data-platform"


def _ingest_in_process(home: str, policies: str) -> int:
    from policyfresh.store.config import Settings

    return ingest_documents(Settings.load(home=home, policies=policies), run_id="race").added


def test_two_concurrent_ingests_write_each_version_once(settings):
    import multiprocessing

    ingest_documents(settings, run_id="create")  # both racers then merge into one table
    (settings.policies / "retail" / "overdraft-fees.md").write_text("# Overdraft\n\nNo fees.\n")
    (settings.policies / "finance" / "gifts.md").write_text("# Gifts\n\nUp to $50.\n")
    args = (str(settings.home), str(settings.policies))
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.starmap(_ingest_in_process, [args, args])
        pool.close()  # the workers leave by themselves, their exit handlers run: a SIGTERM from
        pool.join()  # the pool's exit once left one waited on forever (the suite, 2026-12-03)
    versions = read_documents(settings, current_only=False)
    assert versions.select("doc_id", "doc_version").is_duplicated().sum() == 0
    current = versions.filter(pl.col("is_current"))
    assert current["doc_id"].n_unique() == current.height == 23
    fee = current.filter(pl.col("doc_id") == "retail/overdraft-fees.md")
    assert fee["doc_version"].to_list() == [2]


def test_a_file_over_the_size_limit_is_quarantined_unread_and_the_rest_go_on(
    settings, corpus, monkeypatch
):
    (corpus / "huge.txt").write_text("A clause.\n" * 5_000)  # 50,000 bytes
    monkeypatch.setenv("POLICYFRESH_MAX_FILE_BYTES", "40000")  # the bundled ones are smaller
    result = ingest_documents(Settings.load(), run_id="r1")
    assert result.added == 22 and result.quarantined == 1
    [reason] = result.errors.filter(pl.col("path") == "huge.txt")["reason"].to_list()
    assert reason == "50000 bytes, more than POLICYFRESH_MAX_FILE_BYTES=40000: not read"


def test_a_pii_detector_that_cannot_load_stops_ingestion_before_any_write(settings, monkeypatch):
    monkeypatch.setattr(pii, "NER_MODEL", "no_such_ner_model")
    pii._models.cache_clear()  # the session's analyzer was built with the real model
    with pytest.raises(PiiDetectorError, match="no_such_ner_model is not installed"):
        ingest_documents(settings, run_id="r1")
    # A model whose package metadata is there but that fails to load fails in the file loop:
    # it must stop the run too, not quarantine every file as a bad one.
    monkeypatch.setattr(documents, "detector_id", lambda allow: "presidio/broken-model")
    with pytest.raises(PiiDetectorError, match="pip install no_such_ner_model"):
        ingest_documents(settings, run_id="r2")
    assert all(delta_store.open_table(settings.table_uri(name)) is None for name in TABLES)
    assert ingested_tree(settings) is None


NOTICES = """# Legal Notices

Formal notices may be sent to legal-support@northwind-bank.com at any time.

The notices clerk, Octavia Okonkwo (octavia.okonkwo@northwind-bank.com), logs each one.

Staff may give a notice's fee refund to the charity Marie Curie.
"""


def test_policy_words_and_role_addresses_are_served_and_an_allow_list_edit_rescans(
    settings, corpus, embedder
):
    """Served verbatim: a fee table's "Discontinued", a product name, a role address; a
    person's name and address are not. Adding a term to PII_ALLOW rescans every document,
    re-embeds only the chunk it changes and shows in the owner's report."""
    keep_only(corpus, [*SMALL, "retail/account-fees.md"])
    (corpus / "legal").mkdir()
    (corpus / "legal" / "notices.md").write_text(NOTICES)
    refresh(settings, embedder, "r1")
    fees = search(settings, embedder, "What is the extended overdraft fee?").hits
    assert any("Discontinued; no daily" in h.text for h in fees)
    checking = search(settings, embedder, "Monthly fee of Everyday Checking").hits
    assert checking[0].doc_id == "retail/account-fees.md"
    assert "| Everyday Checking | $8 |" in checking[0].text
    notices = search(settings, embedder, "To which address may formal notices be sent?").hits
    served = next(h.text for h in notices if h.doc_id == "legal/notices.md")
    assert "legal-support@northwind-bank.com" in served
    assert "Okonkwo" not in served and "octavia.okonkwo" not in served

    (corpus / "PII_ALLOW").write_text("# charities and trademarks\nMarie Curie\n")
    result = refresh(settings, embedder, "r2")
    assert result["documents"]["changed"] == 7 and result["vectors"]["embedded"] == 1
    assert set(read_documents(settings)["change"]) == {"rescanned"}
    report = build_reports(settings, embedder.model_id)
    html = "".join(r.path.read_text() for r in report.owners)
    assert "Marie Curie" in html and "EMAIL_ADDRESS 1, PERSON 1" in html
    assert "Okonkwo" not in html
