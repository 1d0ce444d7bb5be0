"""The sensors tick by tick on a persistent instance, and the runs they request, executed."""

import json
import os
import shutil
import threading
import time

import dagster as dg
import lancedb
import pytest

from orchestration.definitions import defs
from orchestration.resources import EmbedderResource, PolicyfreshResource
from orchestration.sensors import policy_source_sensor, stale_embeddings_sensor
from policyfresh.index.embedding import default_model_path
from policyfresh.index.vectors import VECTORS

LEAVE = "hr/annual-leave.md"
NO_CHANGE = "no change in 6 files"  # five policies and OWNERS
ALL_CURRENT = "vectors match the current chunks and model; nothing waits"


@pytest.fixture
def instance(tmp_path, small_settings, monkeypatch):
    monkeypatch.setenv("POLICYFRESH_SOURCE_QUIET", "0.3s")
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield instance


class Ticks:
    """Evaluates a sensor as the daemon does, carrying its cursor from tick to tick."""

    def __init__(self, sensor, instance, **resources):
        self.sensor, self.instance, self.cursor, self.events = sensor, instance, None, []
        self.skipped: str | None = None
        self.resources = {"policyfresh": PolicyfreshResource(), "embedder": EmbedderResource()}
        self.resources |= resources

    def tick(self) -> list[dg.RunRequest]:
        """The run requests of one tick; `skipped` keeps the reason it gave for none."""
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.cursor, resources=self.resources
        )
        result = self.sensor(context)
        if isinstance(result, dg.SkipReason):
            self.events, self.skipped = [], result.skip_message
            return []
        self.cursor = result.cursor or self.cursor
        self.events = list(result.asset_events or [])
        self.skipped = result.skip_reason.skip_message if result.skip_reason else None
        return list(result.run_requests or [])

    def skip(self) -> str:
        """One tick that must request nothing: the reason it gave."""
        requests = self.tick()
        assert requests == [] and self.skipped, (requests, self.skipped)
        return self.skipped

    def checks(self) -> list[dg.AssetCheckEvaluation]:
        """The check evaluations the last tick reported."""
        return [e for e in self.events if isinstance(e, dg.AssetCheckEvaluation)]


def execute(instance, request: dg.RunRequest, job: str) -> dict:
    """Run what the sensor asked for, as the daemon would launch it."""
    result = defs.resolve_job_def(job).execute_in_process(instance=instance, tags=request.tags)
    assert result.success
    return {
        e.asset_key.to_user_string(): {k: getattr(v, "value", v) for k, v in e.metadata.items()}
        for e in (
            m.event_specific_data.materialization for m in result.get_asset_materialization_events()
        )
    }


def settle_mtimes(root):
    """Age every file so the folder counts as quiet at once."""
    old = time.time() - 60
    for path in [root, *root.rglob("*")]:
        os.utime(path, (old, old))


def test_source_sensor_requests_one_run_per_change_and_none_for_a_touch(
    instance, small_settings, embedder
):
    root = small_settings.policies
    settle_mtimes(root)
    source = Ticks(policy_source_sensor, instance)
    (first,) = source.tick()  # a new home: build it
    assert first.tags["policyfresh/trigger"] == "policy_source_sensor"
    assert execute(instance, first, "refresh_policies")["policy_documents"]["added"] == 5
    assert source.skip() == NO_CHANGE

    later = time.time() + 5
    os.utime(root / LEAVE, (later, later))
    assert source.skip() == NO_CHANGE, "a touch changes no content"

    path = root / LEAVE
    path.write_text(path.read_text() + "\n\nStaff may carry over ten days of leave.\n")
    (edit,) = source.tick()
    assert edit.tags["policyfresh/changes"] == "1 changed" and edit.run_key != first.run_key
    done = execute(instance, edit, "refresh_policies")
    assert done["policy_documents"]["changed"] == 1 and done["served_index"]["published"]
    assert source.skip() == NO_CHANGE

    (root / "retail" / "overdraft-fees.md").unlink()
    (removal,) = source.tick()
    assert removal.tags["policyfresh/changes"] == "1 removed"
    assert execute(instance, removal, "refresh_policies")["policy_documents"]["deleted"] == 1
    assert source.skip() == "no change in 5 files"


def test_the_source_sensor_waits_for_a_run_in_flight(instance, small_settings):
    root = small_settings.policies
    settle_mtimes(root)
    source = Ticks(policy_source_sensor, instance)
    source.cursor = json.dumps({"tree": _tree_json(root)})
    (root / LEAVE).write_text("# Leave\n\nRewritten.\n")
    settle_mtimes(root)
    queued = instance.create_run_for_job(defs.resolve_job_def("refresh_policies"))
    assert source.skip() == f"policies changed; waiting for run {queued.run_id} to finish"
    instance.report_run_canceled(queued)
    (edit,) = source.tick()
    assert edit.tags["policyfresh/changes"] == "1 changed"


def test_a_burst_of_saves_requests_one_run(instance, small_settings, monkeypatch):
    monkeypatch.setenv("POLICYFRESH_SOURCE_QUIET", "1s")  # twenty times the editor's pause
    root = small_settings.policies
    settle_mtimes(root)
    source = Ticks(policy_source_sensor, instance)
    source.cursor = json.dumps({"tree": _tree_json(root)})  # as if already built
    begun = threading.Event()

    def burst():
        for number in range(30):
            (root / f"burst-{number}.md").write_text(f"# Burst {number}\n\nSaved by an editor.")
            begun.set()
            time.sleep(0.05)  # the editor's pace between saves, not a synchronisation

    writer = threading.Thread(target=burst)
    writer.start()
    assert begun.wait(timeout=60)
    requests = source.tick()  # starts mid-burst and waits for the folder to go quiet
    writer.join(timeout=60)
    assert not writer.is_alive()
    assert source.skip() == "no change in 36 files"
    assert len(requests) == 1 and requests[0].tags["policyfresh/changes"] == "30 added"


def _tree_json(root):
    from policyfresh.ingest.sources import tree_state

    return tree_state(root).to_json()


def test_a_revert_requests_a_run_again(instance, small_settings):
    root = small_settings.policies
    settle_mtimes(root)
    source = Ticks(policy_source_sensor, instance)
    source.cursor = json.dumps({"tree": _tree_json(root)})
    path = root / LEAVE
    original = path.read_text()
    keys = []
    for text in (original + "\nEdited.\n", original):
        path.write_text(text)
        settle_mtimes(root)
        keys += [r.run_key for r in source.tick()]
    assert len(keys) == 2 and len(set(keys)) == 2


def test_stale_sensor_fires_on_a_deleted_row_and_a_new_model_only(
    instance, small_settings, embedder, tmp_path
):
    settle_mtimes(small_settings.policies)
    (build,) = Ticks(policy_source_sensor, instance).tick()
    execute(instance, build, "refresh_policies")
    stale = Ticks(stale_embeddings_sensor, instance)
    assert stale.skip() == ALL_CURRENT

    table = lancedb.connect(small_settings.vectors_uri).open_table(VECTORS)
    gone = table.search().limit(1).to_list()[0]["chunk_id"]
    table.delete(f"chunk_id = '{gone}'")
    (repair,) = stale.tick()
    assert repair.tags["policyfresh/trigger"] == "stale_embeddings_sensor"
    assert "1 missing vectors" in repair.tags["policyfresh/reason"]
    repaired = execute(instance, repair, "refresh_vectors")
    assert repaired["policy_vectors"]["embedded"] == 1  # its vector went with the row
    assert repaired["served_index"]["published"]
    assert stale.skip() == ALL_CURRENT

    upgraded = tmp_path / "upgraded-model"
    shutil.copytree(default_model_path(), upgraded)
    config = json.loads((upgraded / "config.json").read_text())
    (upgraded / "config.json").write_text(json.dumps({**config, "note": "upgraded"}))
    new_model = Ticks(
        stale_embeddings_sensor, instance, embedder=EmbedderResource(model_path=str(upgraded))
    )
    (upgrade,) = new_model.tick()
    assert "model mismatch vectors" in upgrade.tags["policyfresh/reason"]


def test_stale_sensor_confirms_the_served_index_for_its_freshness_policy(
    instance, small_settings, embedder, monkeypatch
):
    settle_mtimes(small_settings.policies)
    (build,) = Ticks(policy_source_sensor, instance).tick()
    execute(instance, build, "refresh_policies")
    key = dg.AssetKey("served_index")
    published = instance.get_latest_materialization_event(key)
    resources = {"policyfresh": PolicyfreshResource(), "embedder": EmbedderResource()}

    def confirmations(cursor):
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
        result = stale_embeddings_sensor(context)
        return result.asset_events, result.cursor

    _, cursor = confirmations(None)  # its first look reports the freshness check
    assert confirmations(cursor)[0] == []  # just published: nothing to confirm
    monkeypatch.setenv("POLICYFRESH_FRESHNESS_SLO", "0.1s")
    time.sleep(max(0.0, published.timestamp + 0.06 - time.time()))  # past half the objective
    (confirmed,), _ = confirmations(cursor)
    assert confirmed.asset_key == key
    release = published.asset_materialization.metadata["release"].value
    assert confirmed.metadata["release"].value == release


def test_the_freshness_check_is_reported_when_a_waiting_document_changes_state(
    instance, small_settings
):
    from policyfresh.ingest.documents import ingest_documents
    from tests.assets.test_freshness import seen_earlier

    stale = Ticks(stale_embeddings_sensor, instance)
    stale.tick()
    (first,) = stale.checks()  # the first look judges the empty table
    assert first.passed
    ingest_documents(small_settings, "ingest")  # five versions seen, none served
    stale.tick()
    assert stale.checks() == [], "pending within the objective: the verdict did not change"
    seen_earlier(small_settings, seconds=400)
    stale.tick()
    (at_risk,) = stale.checks()
    assert not at_risk.passed and at_risk.severity == dg.AssetCheckSeverity.WARN
    stale.tick()
    assert stale.checks() == []
    seen_earlier(small_settings, seconds=300)
    stale.tick()
    (late,) = stale.checks()
    assert not late.passed and late.severity == dg.AssetCheckSeverity.ERROR
    assert "hr/annual-leave.md v1" in late.description
