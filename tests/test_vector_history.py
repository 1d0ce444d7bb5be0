"""A PII rule tightened after the fact leaves no raw text in any vector or chunk version."""

from pathlib import Path

from policyfresh.index.vectors import vectors_dataset
from policyfresh.quality.pipeline import refresh
from policyfresh.release.releases import read_audit
from policyfresh.store.config import Settings
from policyfresh.store.tables import POLICY_CHUNKS
from tests.conftest import files_holding

FEES = "retail/overdraft-fees.md"
EMAIL = "quentin.zappa@example.org"


def test_tightening_allow_to_redact_forgets_every_raw_version(
    small_settings, embedder, monkeypatch
):
    path = small_settings.policies / FEES
    path.write_text(path.read_text() + f"\nWaivers are approved by {EMAIL}.\n")
    monkeypatch.setenv("POLICYFRESH_PII_RULES", "public=allow")
    refresh(Settings.load(), embedder, "allowed")
    vectors = Path(small_settings.vectors_uri)
    chunks = Path(small_settings.table_uri(POLICY_CHUNKS.name).removeprefix("file://"))
    assert files_holding(vectors, EMAIL) and files_holding(chunks, EMAIL)

    monkeypatch.delenv("POLICYFRESH_PII_RULES")
    summary = refresh(Settings.load(), embedder, "tightened")

    assert summary["chunks"]["documents_rechunked"] == 5
    assert files_holding(vectors, EMAIL) == [] and files_holding(chunks, EMAIL) == []
    dataset = vectors_dataset(small_settings)
    assert [v["version"] for v in dataset.versions()] == [dataset.version]
    assert read_audit(small_settings)["reason"].to_list()[-1] == "erasure"
    assert refresh(Settings.load(), embedder, "again")["vectors"]["embedded"] == 0
