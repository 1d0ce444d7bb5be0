"""The `ragfresh` command as a user runs it: a real process, a real Dagster instance."""

import json
import os
import subprocess
import sys

import dagster as dg
import polars as pl
from deltalake import write_deltalake


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
    assert done.returncode == 2
    assert done.stderr.startswith("ragfresh: error: policies folder not found")


def test_search_trace_and_status_from_the_command_line(small_settings, tmp_path):
    built = json.loads(ragfresh(small_settings, "run", "--json").stdout)
    assert built["vectors"]["embedded"] == built["vectors"]["rows"] > 0
    assert set(built["checks"]) == {
        "policy_documents:expectations", "policy_chunks:chunks_current",
        "policy_chunks:expectations", "policy_vectors:vectors_reconcile",
    }  # fmt: skip
    assert all(built["checks"].values())

    status = ragfresh(small_settings, "status", "--json")
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)
    assert counts["documents"] == 5 and counts["vectors"] == counts["chunks"]
    assert set(counts["reconciliation"].values()) == {0}

    questions = tmp_path / "questions.txt"
    questions.write_text("What is the overdraft item fee?\n\nHow do I dispute a card charge?\n")
    found = ragfresh(small_settings, "search", "--questions", str(questions), "-k", "2", "--json")
    assert found.returncode == 0, found.stderr
    answers = [json.loads(line) for line in found.stdout.splitlines()]
    assert [len(a["hits"]) for a in answers] == [2, 2]
    hit = answers[0]["hits"][0]
    assert set(hit) == {
        "doc_id", "doc_version", "chunk_id", "heading", "char_start", "char_end", "owner",
        "score", "model_id", "index_version", "trace_id", "text",
    }  # fmt: skip

    trace = ragfresh(small_settings, "trace", answers[0]["trace_id"])
    assert trace.returncode == 0, trace.stderr
    assert "0 of 2 hits no longer current" in trace.stdout
    missing = ragfresh(small_settings, "trace", "nope")
    assert missing.returncode == 2 and "no trace 'nope'" in missing.stderr


def test_a_failed_blocking_check_exits_1_with_the_summary(small_settings):
    assert ragfresh(small_settings, "run").returncode == 0
    uri = small_settings.table_uri("policy_documents")
    bad = pl.read_delta(uri).head(1).with_columns(classification=pl.lit("secret"))
    write_deltalake(uri, bad.to_arrow(), mode="append")
    done = ragfresh(small_settings, "run", "--json")
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert summary["checks"] == {"policy_documents:expectations": False}
    assert "vectors" in summary and summary["vectors"]["embedded"] == 0


def test_bad_search_arguments_exit_2(small_settings, tmp_path):
    missing = ragfresh(small_settings, "search", "--questions", str(tmp_path / "none.txt"))
    assert missing.returncode == 2 and "cannot read --questions" in missing.stderr
    zero = ragfresh(small_settings, "search", "fees", "-k", "0")
    assert zero.returncode == 2 and "must be at least 1" in zero.stderr
