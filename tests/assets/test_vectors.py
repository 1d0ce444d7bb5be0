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
    "ingest_errors:expectations": True,
    "policy_chunks:chunks_current": True,
    "policy_chunks:expectations": True,
    "policy_chunks:documents_held": True,
    "policy_vectors:expectations": True,
    "policy_vectors:vectors_reconcile": True,
    "regression_eval:eval_case_results_expectations": True,
    "regression_eval:release_gate": True,
    "document_freshness:freshness_objective": True,
    "answer_impact:expectations": True,
}


def test_refresh_job_builds_noops_and_holds_back_only_the_failing_document(
    small_settings, embedder
):
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

    # One document fails an expectation: it is held back, warned, and the other edit is served
    for doc_id, line in (
        ("hr/annual-leave.md", "Carry-over requests go to \ufffd\ufffd by 31 March."),
        ("retail/overdraft-fees.md", "From 1 March the daily overdraft fee is 3 pounds."),
    ):
        path = small_settings.policies / doc_id
        path.write_text(path.read_text() + f"\n{line}\n")
    metadata, checks = run_job(instance)
    assert checks == ALL_PASS | {"policy_chunks:documents_held": False}
    assert metadata["policy_chunks"]["held"] == 1
    assert metadata["policy_chunks"]["documents_rechunked"] == 1
    assert metadata["policy_vectors"]["embedded"] > 0 and metadata["served_index"]["published"]


def test_a_table_wide_fault_blocks_chunking(small_settings, embedder):
    instance = dg.DagsterInstance.ephemeral()
    run_job(instance)
    bad = pl.read_delta(small_settings.table_uri("policy_documents")).head(1)
    write_deltalake(  # another writer's schema: a column the suite does not know
        small_settings.table_uri("policy_documents"),
        bad.with_columns(reviewer=pl.lit("someone")).to_arrow(),
        mode="append",
        schema_mode="merge",
    )
    job = defs.resolve_job_def("refresh_policies")
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    checks = {
        f"{e.asset_key.to_user_string()}:{e.check_name}": e
        for e in result.get_asset_check_evaluations()
    }
    assert {k: c.passed for k, c in checks.items()} == {
        "policy_documents:expectations": False,
        "ingest_errors:expectations": True,
    }
    fault = checks["policy_documents:expectations"].description
    assert "table-wide expectations failed: expect_table_columns_to_match_set" in fault
    ran = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert ran == {"policy_documents", "ingest_errors"}
