"""Trace retention as Dagster runs it: materializing `retrieval_traces` deletes expired ones."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from assets.traces import retrieval_traces
from orchestration.resources import EmbedderResource, PolicyfreshResource
from policyfresh.serve.trace_store import read_traces, write_traces
from tests.test_trace_store import trace


def test_materializing_the_traces_enforces_their_retention(settings):
    expired = datetime.now(tz=UTC) - timedelta(days=settings.trace_retention_days + 1)
    write_traces(settings, [trace("an expired question", expired), trace("a recent one")], "t")
    result = dg.materialize(
        [retrieval_traces],
        resources={"policyfresh": PolicyfreshResource(), "embedder": EmbedderResource()},
    )
    [event] = result.get_asset_materialization_events()
    metadata = event.event_specific_data.materialization.metadata
    assert (metadata["deleted"].value, metadata["kept"].value) == (1, 1)
    assert read_traces(settings)["question"].to_list() == ["a recent one"]
