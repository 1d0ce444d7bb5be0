"""The whole asset graph, materialized by Dagster from the same Definitions the UI loads."""

import dagster as dg
import polars as pl
from deltalake import write_deltalake

from orchestration.definitions import defs


def run_job(instance):
    result = defs.resolve_job_def("refresh_policies").execute_in_process(instance=instance)
    assert result.success
    metadata = {
        m.asset_key.to_user_string(): {k: getattr(v, "value", v) for k, v in m.metadata.items()}
        for m in (
            e.event_specific_data.materialization for e in result.get_asset_materialization_events()
        )
    }
    checks = {
        f"{e.asset_key.to_user_string()}:{e.check_name}": e.passed
        for e in result.get_asset_check_evaluations()
    }
    return metadata, checks


ALL_PASS = {
    "policy_documents:expectations": True,
    "policy_chunks:chunks_current": True,
    "policy_chunks:expectations": True,
    "policy_vectors:vectors_reconcile": True,
    "regression_eval:release_gate": True,
    "document_freshness:freshness_objective": True,
}


def test_refresh_job_builds_then_noops_with_reconciliation_passing(small_settings, embedder):
    instance = dg.DagsterInstance.ephemeral()
    first, checks = run_job(instance)
    assert checks == ALL_PASS
    assert first["policy_chunks"]["documents_rechunked"] == 5
    vectors = first["policy_vectors"]
    assert vectors["embedded"] == vectors["dagster/row_count"] > 0
    assert vectors["model_id"] == embedder.model_id and vectors["embeddings_per_second"] > 0
    assert first["regression_eval"]["verdict"] == "passed"
    assert first["served_index"]["published"]
    assert first["served_index"]["release"] == vectors["table_version"]

    second, checks = run_job(instance)
    assert checks == ALL_PASS
    assert second["policy_vectors"]["embedded"] == 0
    assert second["policy_vectors"]["table_version"] == vectors["table_version"]
    assert second["policy_chunks"]["documents_rechunked"] == 0
    assert second["regression_eval"]["reused"] and not second["served_index"]["published"]


def test_a_failing_expectation_suite_blocks_chunking(small_settings, embedder):
    instance = dg.DagsterInstance.ephemeral()
    run_job(instance)
    bad = pl.read_delta(small_settings.table_uri("policy_documents")).head(1)
    write_deltalake(
        small_settings.table_uri("policy_documents"),
        bad.with_columns(classification=pl.lit("secret")).to_arrow(),
        mode="append",
    )
    job = defs.resolve_job_def("refresh_policies")
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"expectations": False}
    ran = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert ran == {"policy_documents", "ingest_errors"}
