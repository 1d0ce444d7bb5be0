"""The whole asset graph, materialized by Dagster from the same Definitions the UI loads."""

import dagster as dg

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
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    return metadata, checks


def test_refresh_job_builds_then_noops_with_reconciliation_passing(small_settings, embedder):
    instance = dg.DagsterInstance.ephemeral()
    first, checks = run_job(instance)
    assert checks == {"chunks_current": True, "vectors_reconcile": True}
    assert first["policy_chunks"]["documents_rechunked"] == 5
    vectors = first["policy_vectors"]
    assert vectors["embedded"] == vectors["dagster/row_count"] > 0
    assert vectors["model_id"] == embedder.model_id and vectors["embeddings_per_second"] > 0

    second, checks = run_job(instance)
    assert checks == {"chunks_current": True, "vectors_reconcile": True}
    assert second["policy_vectors"]["embedded"] == 0
    assert second["policy_vectors"]["table_version"] == vectors["table_version"]
    assert second["policy_chunks"]["documents_rechunked"] == 0
