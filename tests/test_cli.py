"""The `policyfresh` command as a user runs it: a real process, a real Dagster instance."""

import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import dagster as dg
import httpx
import polars as pl
from deltalake import write_deltalake


def environment(settings, **extra):
    return {
        **os.environ,
        "POLICYFRESH_HOME": str(settings.home),
        "POLICYFRESH_POLICIES": str(settings.policies),
        **extra,
    }


def policyfresh(settings, *args, **env):
    return subprocess.run(
        [sys.executable, "-m", "policyfresh.cli", *args],
        env=environment(settings, **env),
        capture_output=True,
        text=True,
        timeout=600,
    )


def heavy_modules_after(settings, argv: list[str]) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter and print which slow libraries it imported: when it
    starts writing search traces (`ANSWERED`, after the answers are printed) and at exit."""
    probe = (
        "import sys; import policyfresh.serve.trace_store as store; write = store.write_traces\n"
        "heavy = lambda: [m for m in ('dagster', 'great_expectations', 'torch', "
        "'sentence_transformers', 'lancedb', 'presidio_analyzer') if sys.modules.get(m)]\n"
        "store.write_traces = lambda *a, **k: (print('ANSWERED', heavy()), write(*a, **k))\n"
        "from policyfresh.cli.main import main\n"
        f"code = main({argv!r}); print('HEAVY', heavy(), code)"
    )
    return subprocess.run(
        [sys.executable, "-c", probe], env=environment(settings), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


def test_run_json_summary_runs_recorded_and_nothing_to_do_loads_nothing_heavy(small_settings):
    (small_settings.policies / "broken.md").write_bytes(b"---\n: : :\n---\nx")
    done = policyfresh(small_settings, "run", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert "documents parsed" not in done.stderr, "no progress with --json"
    assert summary["documents"] == {
        "added": 5, "changed": 0, "deleted": 0, "unchanged": 0, "quarantined": 1
    }  # fmt: skip
    assert summary["quarantined_files"][0]["path"] == "broken.md"
    instance = dg.DagsterInstance.from_config(str(small_settings.dagster_home))
    run = instance.get_run_by_id(summary["run_id"])
    assert run is not None and run.is_success
    assert instance.get_latest_materialization_event(dg.AssetKey("policy_documents")) is not None

    # Nothing changed: no run, no model, no Dagster, no Great Expectations, the last summary.
    text = heavy_modules_after(small_settings, ["run"])
    assert f"nothing changed since run {summary['run_id']}" in text.stdout
    assert "documents: added 0, changed 0, deleted 0, unchanged 5, quarantined 1" in text.stdout
    assert "quarantined broken.md: malformed YAML front matter" in text.stdout
    assert "freshness: 5 document versions served" in text.stdout
    assert "HEAVY [] 0" in text.stdout, text.stdout + text.stderr
    assert len(instance.get_run_records()) == 1, "a run with nothing to do starts no run"

    forced = json.loads(policyfresh(small_settings, "run", "--force", "--json").stdout)
    assert forced["run_id"] and forced["vectors"]["embedded"] == 0
    assert forced["checks"]["document_freshness:freshness_objective"] == "passed"


def test_missing_policies_folder_is_a_clear_error(settings, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "policyfresh.cli", "--policies", str(tmp_path / "none"), "run"],
        env={**os.environ, "POLICYFRESH_HOME": str(settings.home)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("policyfresh: error: policies folder not found")


def test_search_trace_status_eval_releases_and_rollback_from_the_command_line(
    small_settings, tmp_path
):
    built = json.loads(policyfresh(small_settings, "run", "--json").stdout)
    assert built["vectors"]["embedded"] == built["vectors"]["rows"] > 0
    assert set(built["checks"]) == {
        "policy_documents:expectations", "ingest_errors:expectations",
        "policy_chunks:chunks_current", "policy_chunks:expectations",
        "policy_chunks:documents_held", "policy_vectors:expectations",
        "policy_vectors:vectors_reconcile", "regression_eval:eval_case_results_expectations",
        "regression_eval:release_gate", "document_freshness:freshness_objective",
        "answer_impact:expectations",
    }  # fmt: skip
    assert set(built["checks"].values()) == {"passed"} and built["held"] == []
    assert built["eval"]["verdict"] == "passed" and built["eval"]["cases"] > 0
    assert (
        built["release"]["published"]
        and built["release"]["candidate"] == built["release"]["served"]
    )

    status = policyfresh(small_settings, "status", "--json")
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)
    assert counts["documents"] == 5 and counts["vectors"] == counts["chunks"]
    assert set(counts["reconciliation"].values()) == {0}
    assert counts["published"]["release"] == built["release"]["served"]
    assert counts["published"]["verdict"] == "passed" and counts["waiting"] is None

    questions = tmp_path / "questions.txt"
    questions.write_text("What is the overdraft item fee?\n\nHow do I dispute a card charge?\n")
    found = policyfresh(
        small_settings, "search", "--questions", str(questions), "-k", "2", "--json"
    )
    assert found.returncode == 0, found.stderr
    answers = [json.loads(line) for line in found.stdout.splitlines()]
    assert [len(a["hits"]) for a in answers] == [2, 2]
    hit = answers[0]["hits"][0]
    assert set(hit) == {
        "doc_id", "doc_version", "chunk_id", "heading", "char_start", "char_end", "owner",
        "classification", "score", "model_id", "index_version", "release", "trace_id", "text",
    }  # fmt: skip
    assert hit["release"] == built["release"]["served"]
    assert found.stderr == "", "no progress bar, warning or note in normal output"

    # The run exported the query encoder: a search from a cold shell answers without torch.
    # The PII detector loads after, to redact the question in its trace, still without torch.
    cold = heavy_modules_after(small_settings, ["search", "What is the overdraft item fee?"])
    answer, _, after = cold.stdout.partition("ANSWERED []\n")
    assert "retail/overdraft-fees.md" in answer, cold.stdout
    assert after == "HEAVY ['presidio_analyzer'] 0\n", "torch is kept out of the redaction"
    assert cold.stderr == ""
    # Without the export, torch answers the same, and the export is made for next time.
    cache = tmp_path / "empty-cache"
    slow = policyfresh(small_settings, "search", "What is the overdraft item fee?", "--json",
                    POLICYFRESH_MODEL_CACHE=str(cache))  # fmt: skip
    assert slow.returncode == 0, slow.stderr
    assert json.loads(slow.stdout)["hits"][0]["chunk_id"] == answers[0]["hits"][0]["chunk_id"]
    assert "note: exported the query encoder to" in slow.stderr
    assert (cache / hit["model_id"] / "verified.json").exists()

    trace = policyfresh(small_settings, "trace", answers[0]["trace_id"])
    assert trace.returncode == 0, trace.stderr
    assert "0 of 2 hits no longer current" in trace.stdout
    missing = policyfresh(small_settings, "trace", "nope")
    assert missing.returncode == 2 and "no trace 'nope'" in missing.stderr

    # The same build, edited: a second release, evaluated, listed, rolled back.
    path = small_settings.policies / "retail" / "overdraft-fees.md"
    path.write_text(path.read_text().replace("$29 per item", "$32 per item"))
    edited = policyfresh(small_settings, "run")
    assert edited.returncode == 0, edited.stderr
    assert "release: published release" in edited.stdout

    evaluated = policyfresh(small_settings, "eval", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["reused"] is True  # nothing changed since the run

    listed = json.loads(policyfresh(small_settings, "releases", "--json").stdout)
    assert [r["served"] for r in listed] == [True, False]
    back = policyfresh(small_settings, "rollback", "--reason", "not approved", "--json")
    assert back.returncode == 0, back.stderr
    done = json.loads(back.stdout)
    assert done["release"] == listed[1]["release"] and done["reason"] == "not approved"
    status = json.loads(policyfresh(small_settings, "status", "--json").stdout)
    assert status["published"]["release"] == listed[1]["release"]
    assert status["waiting"]["why"] == "rolled back"
    again = policyfresh(small_settings, "rollback", "--to", "999")
    assert again.returncode == 2 and "release 999 was never published" in again.stderr


def test_a_held_document_warns_and_a_table_wide_fault_exits_1(small_settings):
    leave = small_settings.policies / "hr" / "annual-leave.md"
    leave.write_text(leave.read_text() + "\nCarry-over requests go to \ufffd\ufffd.\n")
    ungated = {"POLICYFRESH_GOLDEN_CASES": "none"}  # its cases would fail: it was never served
    held = policyfresh(small_settings, "run", **ungated)
    assert held.returncode == 0, held.stderr
    # Not a terminal: progress is a plain line on stderr, the last one with every unit done.
    assert re.search(r"^documents parsed: (\d+)/\1 \(", held.stderr, re.M), held.stderr
    assert re.search(r"^texts embedded: (\d+)/\1 \(", held.stderr, re.M), held.stderr
    assert (
        "HELD BACK: hr/annual-leave.md v1 (owners hr-policies@northwind-bank.com), never "
        "served: policy_documents: expect_column_values_to_not_match_regex on text (1 row)"
    ) in held.stdout
    assert "documents_rechunked 4" in held.stdout
    assert "check policy_chunks:documents_held: WARNED (nothing blocked)" in held.stdout

    uri = small_settings.table_uri("policy_documents")
    bad = pl.read_delta(uri).head(1).with_columns(reviewer=pl.lit("someone"))
    write_deltalake(uri, bad.to_arrow(), mode="append", schema_mode="merge")
    done = policyfresh(small_settings, "run", "--json", **ungated)
    assert done.returncode == 1, done.stderr
    summary = json.loads(done.stdout)
    assert summary["checks"] == {
        "policy_documents:expectations": "blocked",
        "ingest_errors:expectations": "passed",
    }
    assert "vectors" in summary and summary["vectors"]["embedded"] == 0
    assert summary["release"]["published"] is False and summary["eval"] is None


def test_bad_search_arguments_exit_2(small_settings, tmp_path):
    missing = policyfresh(small_settings, "search", "--questions", str(tmp_path / "none.txt"))
    assert missing.returncode == 2 and "cannot read --questions" in missing.stderr
    zero = policyfresh(small_settings, "search", "fees", "-k", "0")
    assert zero.returncode == 2 and "must be at least 1" in zero.stderr


def test_a_malformed_golden_file_stops_run_and_eval_with_its_line(small_settings, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("case_id,user_question\nx,Why?\n")
    for command in ("run", "eval"):
        done = policyfresh(small_settings, command, "--golden", str(bad))
        assert done.returncode == 2, done.stderr
        assert f"{bad}:1: missing columns" in done.stderr


def test_an_unevaluated_release_says_so(settings, corpus):
    other = corpus.parent / "own"
    other.mkdir()
    (other / "handbook.md").write_text("# Handbook\n\nDesks are cleared every Friday.\n")
    done = policyfresh(settings, "--policies", str(other), "run")
    assert done.returncode == 0, done.stderr
    assert "eval: UNEVALUATED - no golden case applies to these policies" in done.stdout
    status = policyfresh(settings, "--policies", str(other), "status")
    assert "the served release is UNEVALUATED" in status.stdout


def test_serve_answers_over_http_until_its_process_group_is_stopped(settings):
    refused = policyfresh(settings, "serve")
    assert refused.returncode == 2 and "no API keys: set POLICYFRESH_API_KEYS" in refused.stderr
    keys = json.dumps({"cli-test-key-00000001": ["public"]})
    server = subprocess.Popen(  # port 0: the server binds a free port and logs which
        [sys.executable, "-m", "policyfresh.cli", "serve", "--port", "0"],
        env=environment(settings, POLICYFRESH_API_KEYS=keys),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    lines: list[bytes] = []
    try:
        deadline = time.monotonic() + 300  # a generous limit: the first start exports ONNX
        started = None
        while started is None:  # its log line names the port it bound
            left = deadline - time.monotonic()
            assert left > 0 and select.select([server.stdout], [], [], left)[0], "not started"
            lines.append(server.stdout.readline())
            assert lines[-1], f"serve exited: {b''.join(lines).decode()}"
            started = re.search(rb"running on http://127\.0\.0\.1:(\d+)", lines[-1])
        url = f"http://127.0.0.1:{int(started[1])}"
        health = httpx.get(f"{url}/health", timeout=30)
        assert health.status_code == 503 and health.json()["status"] == "no release"
        headers = {"Authorization": "Bearer cli-test-key-00000001"}
        found = httpx.post(f"{url}/search", json={"question": "fee"}, headers=headers, timeout=30)
        assert found.status_code == 503 and "run a refresh" in found.json()["error"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        output = (b"".join(lines) + server.communicate(timeout=60)[0]).decode()
    assert "1 API keys from $POLICYFRESH_API_KEYS" in output
    assert "cli-test-key-00000001" not in output
