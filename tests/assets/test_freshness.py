"""The freshness check as Dagster runs it: a late document fails it, named with its owners."""

from datetime import timedelta

import dagster as dg
import polars as pl

from assets.freshness import document_freshness, freshness_objective
from orchestration.resources import PolicyfreshResource
from policyfresh.ingest.documents import ingest_documents, read_documents
from policyfresh.store import delta_store
from policyfresh.store.freshness import read_freshness
from policyfresh.store.tables import DOCUMENT_FRESHNESS

CHECK_ONLY = dg.Definitions(
    assets=[document_freshness],
    asset_checks=[freshness_objective],
    jobs=[dg.define_asset_job("freshness", dg.AssetSelection.checks(freshness_objective))],
    resources={"policyfresh": PolicyfreshResource()},
)


def run_check(instance) -> dg.AssetCheckEvaluation:
    result = CHECK_ONLY.resolve_job_def("freshness").execute_in_process(instance=instance)
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def seen_earlier(settings, seconds: int) -> None:
    """Move every version's clock back, as if ingestion had seen it `seconds` ago."""
    rows = read_freshness(settings).with_columns(pl.col("seen_at") - timedelta(seconds=seconds))
    delta_store.merge(
        DOCUMENT_FRESHNESS, settings.table_uri(DOCUMENT_FRESHNESS.name), rows, "test",
        delta_store.upsert,
    )  # fmt: skip


def test_a_late_document_fails_the_check_with_its_owner(small_settings, monkeypatch):
    ingest_documents(small_settings, "ingest")  # seen, never embedded nor published
    owners = dict(read_documents(small_settings).select("doc_id", "owners").iter_rows())
    instance = dg.DagsterInstance.ephemeral()
    assert run_check(instance).passed  # just seen: within the 10 minute objective

    seen_earlier(small_settings, seconds=400)
    warned = run_check(instance)  # past half of the objective
    assert not warned.passed and warned.severity == dg.AssetCheckSeverity.WARN
    monkeypatch.setenv("POLICYFRESH_FRESHNESS_SLO", "5m")
    failed = run_check(instance)
    assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR
    assert failed.metadata["late"].value == 5
    assert "hr/annual-leave.md v1 (" + ", ".join(owners["hr/annual-leave.md"]) in (
        failed.description
    )
    waiting = {w["doc_id"]: w for w in failed.metadata["waiting"].value}
    assert waiting["hr/annual-leave.md"]["owners"] == owners["hr/annual-leave.md"]
