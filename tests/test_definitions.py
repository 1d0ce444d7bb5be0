"""A snapshot of every asset spec: keys, deps, owners, kinds, tags, groups and automation."""

import dagster as dg

from orchestration.definitions import defs
from policyfresh.quality.pipeline import STAGES
from policyfresh.store.tables import TABLES

FOLLOWS = "eager after runs, upstream blocking checks passed"
EXPECTED = {
    "policy_documents": {
        "deps": [], "group": "ingestion", "owners": ["team:data-platform"],
        "kinds": ["deltalake", "polars"], "tags": {"layer": "bronze", "pii": "contains"},
        "automation": None,
    },
    "ingest_errors": {
        "deps": [], "group": "ingestion", "owners": ["team:data-platform"],
        "kinds": ["deltalake", "polars"], "tags": {"layer": "bronze", "pii": "none"},
        "automation": None,
    },
    "policy_chunks": {
        "deps": ["policy_documents"], "group": "indexing", "owners": ["team:data-platform"],
        "kinds": ["deltalake", "polars"], "tags": {"layer": "silver", "pii": "redacted"},
        "automation": FOLLOWS,
    },
    "policy_vectors": {
        "deps": ["policy_chunks"], "group": "indexing", "owners": ["team:data-platform"],
        "kinds": ["lancedb", "pytorch"], "tags": {"layer": "gold", "pii": "redacted"},
        "automation": FOLLOWS,
    },
    "regression_eval": {
        "deps": ["policy_vectors"], "group": "evaluation", "owners": ["team:data-platform"],
        "kinds": ["deltalake", "lancedb"], "tags": {"layer": "quality", "pii": "redacted"},
        "automation": FOLLOWS,
    },
    "served_index": {
        "deps": ["regression_eval"], "group": "serving", "owners": ["team:data-platform"],
        "kinds": ["deltalake", "lancedb"], "tags": {"layer": "serving", "pii": "redacted"},
        "automation": FOLLOWS,
    },
    "answer_impact": {
        "deps": ["served_index"], "group": "serving", "owners": ["team:data-platform"],
        "kinds": ["deltalake", "lancedb"], "tags": {"layer": "audit", "pii": "redacted"},
        "automation": FOLLOWS,
    },
    "query_encoder": {
        "deps": ["served_index"], "group": "serving", "owners": ["team:data-platform"],
        "kinds": ["onnx", "pytorch"], "tags": {"layer": "serving", "pii": "none"},
        "automation": FOLLOWS,
    },
    "document_freshness": {
        "deps": ["served_index"], "group": "serving", "owners": ["team:data-platform"],
        "kinds": ["deltalake"], "tags": {"layer": "quality", "pii": "none"},
        "automation": None,
    },
    "quality_reports": {
        "deps": ["answer_impact", "served_index"], "group": "reporting",
        "owners": ["team:data-platform"], "kinds": ["html"],
        "tags": {"layer": "quality", "pii": "redacted"}, "automation": FOLLOWS,
    },
    "retrieval_traces": {
        "deps": ["served_index"], "group": "serving", "owners": ["team:data-platform"],
        "kinds": ["deltalake"], "tags": {"layer": "audit", "pii": "redacted"},
        "automation": "daily at 03:00",
    },
}  # fmt: skip


def snapshot(spec):
    condition = spec.automation_condition
    return {
        "deps": sorted(d.asset_key.to_user_string() for d in spec.deps),
        "group": spec.group_name,
        "owners": list(spec.owners),
        "kinds": sorted(spec.kinds),
        "tags": {k: v for k, v in spec.tags.items() if not k.startswith("dagster/")},
        "automation": condition.get_label() if condition else None,
    }


def test_asset_specs_match_the_snapshot():
    specs = {s.key.to_user_string(): snapshot(s) for s in defs.resolve_all_asset_specs()}
    assert specs == EXPECTED


def test_every_asset_has_a_description_and_table_assets_a_column_schema():
    for spec in defs.resolve_all_asset_specs():
        assert spec.description, spec.key
        if spec.key.to_user_string() in TABLES:
            schema = spec.metadata["dagster/column_schema"]
            assert all(c.description and "pii" in c.tags for c in schema.columns)


def test_vector_writes_share_one_pool_and_the_checks_block():
    for key in ("policy_vectors", "served_index"):  # both write the LanceDB table or its tags
        assert defs.resolve_assets_def(key).op.pool == "lancedb_writer"
    graph = defs.resolve_asset_graph()
    checks = {
        f"{key.asset_key.to_user_string()}:{key.name}": graph.get_check_spec(key).blocking
        for key in graph.asset_check_keys
    }
    assert checks == {
        "policy_documents:expectations": True,
        "ingest_errors:expectations": True,
        "policy_chunks:chunks_current": True,
        "policy_chunks:expectations": True,
        "policy_chunks:documents_held": False,  # warns the owners; the rest flow on
        "policy_vectors:expectations": True,
        "policy_vectors:vectors_reconcile": True,
        "regression_eval:eval_case_results_expectations": True,
        "regression_eval:release_gate": False,  # enforced by publication; reports follow
        "document_freshness:freshness_objective": False,  # warns, then fails; blocks nothing
        "answer_impact:expectations": True,
    }


def test_the_sensors_run_from_the_start_and_runs_stay_in_one_process():
    sensors = {s.name: s for s in defs.sensors}
    assert set(sensors) == {
        "policy_source_sensor",
        "stale_embeddings_sensor",
        "policyfresh_automation",
    }
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in sensors.values())
    assert isinstance(sensors["policyfresh_automation"], dg.AutomationConditionSensorDefinition)
    policy = (
        defs.resolve_assets_def("served_index")
        .specs_by_key[dg.AssetKey("served_index")]
        .freshness_policy
    )
    assert policy.fail_window.to_timedelta().total_seconds() == 600
    assert defs.resolve_job_def("refresh_policies").executor_def is dg.in_process_executor


def test_the_job_and_the_plain_refresh_are_one_wiring_of_the_stages():
    """Every step of the refresh job is a stage of `STAGES`, with its dependencies, in an order
    the job could run; the plain refresh runs the same stages: none is skipped by either."""
    job = defs.resolve_job_def("refresh_policies")
    graph = job.asset_layer.asset_graph
    steps = {
        key.to_user_string()
        for key in job.asset_layer.executable_asset_keys
        if key.to_user_string() != "ingest_errors"  # written by the documents stage
    }
    assert steps == set(STAGES)
    for name, stage in STAGES.items():
        deps = {parent.to_user_string() for parent in graph.get(dg.AssetKey(name)).parent_keys}
        assert deps == set(stage.after), name
    order = list(STAGES)
    for name, stage in STAGES.items():
        assert all(order.index(before) < order.index(name) for before in stage.after), name
