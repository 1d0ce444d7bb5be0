"""The `ragfresh` command as a user runs it: a real process, a real Dagster instance."""

import json
import os
import subprocess
import sys

import dagster as dg


def ragfresh(settings, *args):
    env = {
        **os.environ,
        "RAGFRESH_HOME": str(settings.home),
        "RAGFRESH_POLICIES": str(settings.policies),
    }
    return subprocess.run(
        [sys.executable, "-m", "ragfresh.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_run_json_summary_and_runs_recorded_in_the_instance(settings, corpus):
    (corpus / "broken.md").write_bytes(b"---\n: : :\n---\nx")
    done = ragfresh(settings, "run", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["documents"] == {
        "added": 22, "changed": 0, "deleted": 0, "unchanged": 0, "quarantined": 1
    }  # fmt: skip
    assert summary["quarantined_files"][0]["path"] == "broken.md"
    instance = dg.DagsterInstance.from_config(str(settings.dagster_home))
    run = instance.get_run_by_id(summary["run_id"])
    assert run is not None and run.is_success
    assert instance.get_latest_materialization_event(dg.AssetKey("policy_documents")) is not None

    text = ragfresh(settings, "run")
    assert text.returncode == 0, text.stderr
    assert "documents: added 0, changed 0, deleted 0, unchanged 22, quarantined 1" in text.stdout
    assert "quarantined broken.md: malformed YAML front matter" in text.stdout


def test_missing_policies_folder_is_a_clear_error(settings, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "ragfresh.cli", "--policies", str(tmp_path / "none"), "run"],
        env={**os.environ, "RAGFRESH_HOME": str(settings.home)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode != 0
    assert "policies folder not found" in done.stderr
