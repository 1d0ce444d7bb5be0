"""A real Dagster materialization over a corpus that gains, changes, loses and breaks files."""

import dagster as dg
import polars as pl
import pyarrow as pa
from deltalake import DeltaTable

from assets.documents import policy_documents
from orchestration.resources import EmbedderResource, PolicyfreshResource
from policyfresh.store.tables import INGEST_ERRORS, POLICY_DOCUMENTS


def materialize(settings, instance):
    resource = PolicyfreshResource(home=str(settings.home), policies=str(settings.policies))
    result = dg.materialize(
        [policy_documents],
        resources={"policyfresh": resource, "embedder": EmbedderResource()},
        instance=instance,
    )
    assert result.success
    return {
        m.asset_key.to_user_string(): {k: getattr(v, "value", v) for k, v in m.metadata.items()}
        for m in result.asset_materializations_for_node("policy_documents")
    }


def test_materialization_versions_tombstones_quarantine_and_cdf(settings, corpus):
    instance = dg.DagsterInstance.ephemeral()
    first = materialize(settings, instance)["policy_documents"]
    assert (first["added"], first["quarantined"]) == (22, 0)
    uri = settings.table_uri(POLICY_DOCUMENTS.name)
    version_after_build = DeltaTable(uri).version()

    (corpus / "retail" / "overdraft-fees.md").write_text(
        (corpus / "retail" / "overdraft-fees.md").read_text().replace("$", "USD ")
    )
    (corpus / "hr" / "parental-leave.md").unlink()
    (corpus / "finance" / "gifts.md").write_text(
        "---\ntitle: Gifts\n---\nGifts over $50 need approval.\n"
    )
    (corpus / "finance" / "scan.pdf").write_bytes(b"%PDF-1.7 truncated")
    (corpus / "finance" / "notes.txt").write_bytes(b"\xff\xfe\x00bad")
    second = materialize(settings, instance)
    docs = second["policy_documents"]
    assert (docs["added"], docs["changed"], docs["deleted"], docs["quarantined"]) == (1, 1, 1, 2)
    assert docs["unchanged"] == 20
    assert "overdraft-fees.md" in docs["changes"]
    assert {e["path"] for e in second["ingest_errors"]["files"]} == {
        "finance/scan.pdf",
        "finance/notes.txt",
    }

    versions = pl.read_delta(uri)
    tomb = versions.filter(pl.col("doc_id") == "hr/parental-leave.md").sort("doc_version")
    assert tomb.select("is_current", "is_deleted").rows() == [(False, False), (True, True)]
    fee = versions.filter(pl.col("doc_id") == "retail/overdraft-fees.md").sort("doc_version")
    assert fee["doc_version"].to_list() == [1, 2] and fee["is_current"].to_list() == [False, True]
    errors = pl.read_delta(settings.table_uri(INGEST_ERRORS.name)).sort("path")
    assert errors["path"].to_list() == ["finance/notes.txt", "finance/scan.pdf"]
    assert errors["reason"][0].startswith("binary content")
    assert errors["reason"][1].startswith("unreadable PDF")

    cdf = pl.DataFrame(pa.table(DeltaTable(uri).load_cdf(starting_version=version_after_build + 1)))
    changes = set(zip(cdf["doc_id"], cdf["_change_type"], strict=True))
    assert ("finance/gifts.md", "insert") in changes
    assert ("hr/parental-leave.md", "update_postimage") in changes
    assert ("retail/overdraft-fees.md", "insert") in changes

    versions_before_noop = {
        name: DeltaTable(settings.table_uri(name)).version()
        for name in (POLICY_DOCUMENTS.name, INGEST_ERRORS.name)
    }
    third = materialize(settings, instance)["policy_documents"]
    assert (third["added"], third["changed"], third["deleted"], third["unchanged"]) == (0, 0, 0, 22)
    assert versions_before_noop == {
        name: DeltaTable(settings.table_uri(name)).version() for name in versions_before_noop
    }
