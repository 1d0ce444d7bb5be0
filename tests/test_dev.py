"""End to end under `policyfresh dev`: a saved policy edit reaches search with nobody clicking,
on the Dagster instance a deployment runs (deploy/dagster.yaml, on a real Postgres).

Slow (290 s on two cores that others kept at a load of 5 to 10, against 256 s on SQLite just
before): it starts Debian's PostgreSQL on a free port of 127.0.0.1, builds five bundled
policies, starts the Dagster webserver and daemon and the search service (`dev --serve`) on free
ports of 127.0.0.1, edits a page and waits until both `policyfresh search` and the service serve
the edit, through `benchmarks/edit_to_served.py`, which stops the servers whatever happens; the
Postgres server is stopped by its pid after it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BUNDLED, BUNDLED_GOLDEN, REPO, SMALL, keep_only, load_benchmark
from tests.postgres import Postgres, PostgresMissingError, running_postgres

# `policyfresh dev` here and in the other module of this group never run at once: two dev servers,
# their daemons and runs would share two cores (and their free ports could meet).
pytestmark = pytest.mark.xdist_group("policyfresh-dev")

EDIT_TO_SERVED_BOUND_SECONDS = 240
DEPLOY_INSTANCE = REPO / "deploy" / "dagster.yaml"
POOL = "lancedb_writer"  # the pool of the assets that write the vector table


@pytest.fixture
def postgres(monkeypatch: pytest.MonkeyPatch) -> Iterator[Postgres]:
    """A throwaway Postgres whose DAGSTER_PG_* variables the processes started here inherit."""
    try:
        with running_postgres("dagster") as postgres:
            for name, value in postgres.env().items():
                monkeypatch.setenv(name, value)
            yield postgres
    except PostgresMissingError as missing:  # a failure that says how to install it, no skip
        raise pytest.fail.Exception(str(missing), pytrace=False) from None


def test_slow_a_saved_edit_is_served_by_a_sensor_run_with_nothing_clicked(
    tmp_path: Path, postgres: Postgres
):
    bench = load_benchmark()
    corpus = tmp_path / "corpus"  # five policies: the first build is quick, the flow the same
    shutil.copytree(BUNDLED, corpus)
    keep_only(corpus, SMALL)
    edit = bench.replacement_edit(
        corpus,
        "retail/overdraft-fees.md",
        old="$29 per item",
        new="$31 per item",
        question="How much is the overdraft fee per item?",
    )

    whole = bench.measure(
        corpus,
        BUNDLED_GOLDEN,
        tmp_path / "run",
        timeout=EDIT_TO_SERVED_BOUND_SECONDS,
        edits=[edit],
        instance_config=DEPLOY_INSTANCE,
    )

    print(bench.report(whole))
    assert not bench.group_alive(whole["dev_pid"]), "the dev server outlived measure"
    (figures,) = whole["edits"]
    # The run forked from the warm run worker `policyfresh dev` started: no import at its start.
    assert figures["launched_by_warm_worker"]
    # Requested by the policy source sensor through the daemon: nobody launched it.
    assert figures["run_tags"]["policyfresh/trigger"] == "policy_source_sensor"
    assert figures["run_tags"]["dagster/sensor_name"] == "policy_source_sensor"
    # measure returns only once a search's hits held the new fee from a release newer than
    # the one served before the edit (it raises past the bound); the old fee is gone.
    assert figures["release_after"] > figures["release_before"]
    assert not figures["old_text_still_served"]
    # The search service started beside the UI (`dev --serve`) served the new release too,
    # without a restart.
    assert figures["service_release_after"] == figures["release_after"]
    assert figures["served_by_service_seconds"] <= EDIT_TO_SERVED_BOUND_SECONDS
    times = figures["seconds_since_edit"]
    assert list(times) == list(bench.STAGES)
    ordered = [times[stage] for stage in bench.STAGES]
    assert ordered[0] >= 0 and ordered == sorted(ordered), times
    assert times["served"] <= EDIT_TO_SERVED_BOUND_SECONDS
    assert figures["dominant_stage"] in bench.STAGES

    # The instance lived in Postgres: the build `policyfresh run` made and the sensor's run are
    # both recorded there, and no SQLite storage was made beside them.
    run_id = figures["run_id"]
    recorded = postgres.query(
        "SELECT run_id, status, value FROM runs JOIN run_tags USING (run_id) "
        "WHERE key = 'policyfresh/trigger'"
    )
    assert (run_id, "SUCCESS", "policy_source_sensor") in recorded, recorded
    assert [trigger for _, _, trigger in recorded].count("cli") == 1, recorded
    assert not list((tmp_path / "run" / "home" / "dagster").rglob("*.db"))
    # The sensor's run waited in the queue until the daemon's coordinator launched it.
    lifecycle = postgres.query(
        "SELECT dagster_event_type FROM event_logs WHERE run_id = %s AND dagster_event_type "
        "LIKE 'PIPELINE_%%' ORDER BY id",
        run_id,
    )
    assert [kind for (kind,) in lifecycle] == [
        "PIPELINE_ENQUEUED",
        "PIPELINE_STARTING",
        "PIPELINE_START",
        "PIPELINE_SUCCESS",
    ], lifecycle
    # Its vector writers claimed the pool, whose one slot is kept in Postgres for every host,
    # and released it when the run ended.
    assert postgres.query(
        "SELECT value FROM run_tags WHERE run_id = %s AND key = %s", run_id, f".dagster/pool/{POOL}"
    ) == [("true",)]
    assert postgres.query(
        'SELECT "limit", using_default_limit FROM concurrency_limits WHERE concurrency_key = %s',
        POOL,
    ) == [(1, True)]
    assert postgres.query(
        "SELECT run_id FROM concurrency_slots WHERE concurrency_key = %s AND NOT deleted", POOL
    ) == [(None,)]
