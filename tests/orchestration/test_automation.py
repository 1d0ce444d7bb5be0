"""Declarative automation: a failed blocking check upstream stops what follows, across runs."""

import dagster as dg
import polars as pl
from deltalake import write_deltalake

from assets.chunks import policy_chunks
from assets.documents import policy_documents
from orchestration.automation import FOLLOWS_UPSTREAM
from orchestration.definitions import defs

# The same two stages under `eager()` alone, for comparison.
EAGER = dg.Definitions(
    assets=[
        policy_documents,
        policy_chunks.map_asset_specs(
            lambda spec: spec.replace_attributes(
                automation_condition=dg.AutomationCondition.eager()
            )
        ),
    ],
    resources=defs.resources,
)


def requested(graph, instance, cursor=None):
    result = dg.evaluate_automation_conditions(defs=graph, instance=instance, cursor=cursor)
    keys = {r.key.to_user_string() for r in result.results if r.true_subset.size}
    return keys, result.cursor


def test_an_upstream_failed_blocking_check_holds_downstream_assets(small_settings, embedder):
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_job_def("refresh_policies")
    assert job.execute_in_process(instance=instance).success
    _, ours = requested(defs, instance)
    _, eager = requested(EAGER, instance)

    uri = small_settings.table_uri("policy_documents")
    bad = pl.read_delta(uri).head(1).with_columns(reviewer=pl.lit("someone"))
    write_deltalake(uri, bad.to_arrow(), mode="append", schema_mode="merge")  # a wrong schema
    documents = dg.AssetSelection.assets("policy_documents", "ingest_errors")
    run = job.execute_in_process(
        instance=instance,
        asset_selection=list(documents.resolve(defs.resolve_asset_graph())),
        raise_on_error=False,
    )
    assert {
        f"{e.asset_key.to_user_string()}:{e.check_name}": e.passed
        for e in run.get_asset_check_evaluations()
    } == {"policy_documents:expectations": False, "ingest_errors:expectations": True}

    assert "policy_chunks" not in requested(defs, instance, ours)[0]
    assert "policy_chunks" in requested(EAGER, instance, eager)[0]  # would chunk the bad rows


def test_a_confirmation_without_a_run_does_not_rebuild_what_follows():
    """`stale_embeddings_sensor` confirms `served_index` with a materialization that no run
    made: what follows it (reports, the query encoder) is rebuilt after runs only."""

    @dg.asset
    def upstream() -> None: ...

    @dg.asset(deps=[upstream], automation_condition=FOLLOWS_UPSTREAM)
    def downstream() -> None: ...

    @dg.asset(deps=[upstream], automation_condition=dg.AutomationCondition.eager())
    def eager_downstream() -> None: ...

    graph = dg.Definitions(assets=[upstream, downstream, eager_downstream])
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([upstream, downstream, eager_downstream], instance=instance).success
    _, cursor = requested(graph, instance)

    instance.report_runless_asset_event(dg.AssetMaterialization("upstream"))
    keys, cursor = requested(graph, instance, cursor)
    assert keys == {"eager_downstream"}  # eager() alone would rebuild on the confirmation

    assert dg.materialize([upstream], instance=instance).success
    assert "downstream" in requested(graph, instance, cursor)[0]
