"""Edit-to-served benchmark: how long from saving a policy edit until search serves it, with
nobody clicking, under `policyfresh dev` (the Dagster webserver and daemon and their sensors).

    .venv/bin/python benchmarks/edit_to_served.py [--corpus ../shared/corpora/18f-handbook/]
        [--golden FILE] [--timeout 300] [--edits 5] [--out benchmarks/results/edit_to_served.json]
        [--instance-config deploy/dagster.yaml]

It copies the corpus to a temporary folder, builds it once with `policyfresh run`, starts
`policyfresh dev` on a free port of 127.0.0.1, waits for the webserver and the sensors, saves
`--edits` edits one after another (the corpus's own before/after edit set first, then distinctive
sentences appended to other pages) and, for each, times from the moment it was saved: the run the
`policy_source_sensor` requests (created, started), each asset's materialization in it
(ingested, chunked, embedded, evaluated, published) and the first `policyfresh search` that
returns the new text from a newer release (served); also when the search service started
beside the UI (`dev --serve`) first answers with it; p50 and max over the edits. Last, it saves
one more edit and times `policyfresh run` with the daemon (and its warm run worker) up. The
dev server is always stopped, by its
own process group. `--instance-config` runs the Dagster instance on that dagster.yaml instead of
policyfresh's own (deploy/dagster.yaml: on Postgres, from the DAGSTER_PG_* variables).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "corpora" / "18f-handbook"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "edit_to_served.json"
BUNDLED_GOLDEN = REPO / "evals" / "golden_cases.csv"
HANDBOOK_GOLDEN = REPO / "evals" / "18f_golden_cases.csv"

TRIGGER = "policy_source_sensor"
SENSORS = ("policy_source_sensor", "stale_embeddings_sensor")
LOCATION = "policyfresh"  # workspace.yaml's location_name
REPOSITORY = "__repository__"  # the repository Dagster makes of a Definitions object
SENSOR_INTERVAL_SECONDS = 5  # the sensor daemon loops every 5 s: less has no effect
# Seconds since the edit, in the order they must happen.
STAGES = (
    "detected",
    "run_started",
    "ingested",
    "chunked",
    "embedded",
    "evaluated",
    "published",
    "served",
)
MATERIALIZED_STAGE = {
    "policy_documents": "ingested",
    "policy_chunks": "chunked",
    "policy_vectors": "embedded",
    "regression_eval": "evaluated",
    "served_index": "published",
}
# What each interval between two consecutive stages is spent on.
INTERVALS = {
    "detected": "sensor: notice the edit, wait for quiet, request a run",
    "run_started": "queue and launch the run process",
    "ingested": "ingest (scan, parse, PII, merge)",
    "chunked": "documents' expectations check, then chunk",
    "embedded": "chunks' expectations check, then embed",
    "evaluated": "regression evaluation",
    "published": "publish the release",
    "served": "until a search returned it",
}
IN_FLIGHT = ["QUEUED", "NOT_STARTED", "STARTING", "STARTED"]
FAILED = {"FAILURE", "CANCELED", "CANCELING"}
BUILD_TIMEOUT_SECONDS = 3600
STARTUP_TIMEOUT_SECONDS = 240
STOP_GRACE_SECONDS = 20
POLL_SECONDS = 1.0
LOG_TAIL_LINES = 40
SERVICE_KEY = "edit-to-served-benchmark-key"  # the search service started beside the UI
PEAK_RSS = re.compile(r"peak resident memory (\d+) MiB")  # written by a warm run child

RUNS_QUERY = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status creationTime startTime endTime tags { key value } } }
    ... on PythonError { message }
  }
}"""
LOGS_QUERY = """
query Logs($runId: ID!) {
  logsForRun(runId: $runId, limit: 100000) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { timestamp stepKey message }
        ... on MaterializationEvent { assetKey { path } }
      }
    }
    ... on PythonError { message }
  }
}"""
SENSOR_QUERY = """
query Sensor($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor {
      sensorState { status ticks(limit: 1) { timestamp status error { message } } }
    }
    ... on PythonError { message }
  }
}"""


class BenchmarkError(RuntimeError):
    """The measurement could not be made: a failed build, a server that never came up, an
    edit not served in time."""


@dataclass(frozen=True)
class Edit:
    """One policy edit: the page, its text after (and before) it, a question it answers."""

    path: str  # relative to the policies root
    after: str
    question: str
    new_text: str  # in the new version only: a hit that contains it serves the edit
    before: str | None = None  # put in place before the build (a recorded edit's old page)
    old_text: str | None = None
    source: str = ""


def policies_root(corpus: Path) -> Path:
    """The folder of policy files in a corpus: its `pages/` when it has one, else itself."""
    pages = corpus / "pages"
    return pages if pages.is_dir() else corpus


def is_handbook(corpus: Path) -> bool:
    """Whether the corpus is the 18F handbook (its golden cases are `18f_golden_cases.csv`)."""
    return "18f" in corpus.resolve().as_posix().lower()


def default_golden(corpus: Path) -> Path:
    """The golden cases that go with a corpus."""
    return HANDBOOK_GOLDEN if is_handbook(corpus) else BUNDLED_GOLDEN


def recorded_edit(corpus: Path, change: dict[str, str]) -> Edit:
    """An edit from the corpus's `changes/changes.jsonl`: a real before and after of a page."""
    page = Path(change["path"])
    relative = page.relative_to("pages") if page.parts[0] == "pages" else page
    return Edit(
        path=relative.as_posix(),
        before=(corpus / change["before_file"]).read_text(encoding="utf-8"),
        after=(corpus / change["after_file"]).read_text(encoding="utf-8"),
        question=change["question"],
        new_text=change["evidence_after"],
        old_text=change["evidence_before"],
        source=f"changes/changes.jsonl: {change['change_id']}",
    )


def replacement_edit(corpus: Path, path: str, old: str, new: str, question: str) -> Edit:
    """An edit that replaces `old` by `new` in one page of the corpus."""
    text = (policies_root(corpus) / path).read_text(encoding="utf-8")
    if old not in text:
        raise BenchmarkError(f"{path} does not contain {old!r}")
    return Edit(
        path=path,
        after=text.replace(old, new),
        question=question,
        new_text=new,
        old_text=old,
        source=f"replace {old!r} by {new!r}",
    )


def appended_edit(corpus: Path, number: int = 0, avoid: set[str] | None = None) -> Edit:
    """An edit that appends a distinctive sentence (one per `number`) to a markdown page of the
    corpus, the `number`-th not in `avoid`."""
    root = policies_root(corpus)
    pages = sorted(p for p in root.rglob("*.md") if not p.name.startswith("."))
    pages = [p for p in pages if p.relative_to(root).as_posix() not in (avoid or set())]
    if len(pages) <= number:
        raise BenchmarkError(f"fewer than {number + 1} markdown pages under {root} to edit")
    page = pages[number]
    desk = f"Quillfeather latency desk, room {4417 + number}"
    sentence = f"The edit-to-served probe contact number {number} is the {desk}."
    text = page.read_text(encoding="utf-8").rstrip("\n") + f"\n\n{sentence}\n"
    return Edit(
        path=page.relative_to(root).as_posix(),
        after=text,
        question=f"Who is the edit-to-served probe contact number {number}?",
        new_text=desk,
        source="appended sentence",
    )


def choose_edits(corpus: Path, count: int) -> list[Edit]:
    """The corpus's recorded real edits (its `changes/` set), then appended sentences on other
    pages, `count` edits of `count` different pages in all."""
    edits: list[Edit] = []
    changes = corpus / "changes" / "changes.jsonl"
    if changes.is_file():
        for line in changes.read_text(encoding="utf-8").splitlines():
            change = json.loads(line)
            if (corpus / change["before_file"]).is_file() and len(edits) < count:
                edits.append(recorded_edit(corpus, change))
    edited = {edit.path for edit in edits}
    edits += [appended_edit(corpus, n, edited) for n in range(count - len(edits))]
    return edits


def policyfresh_command() -> list[str]:
    """The `policyfresh` console script beside this interpreter (or the CLI module through it)."""
    script = Path(sys.executable).parent / "policyfresh"
    return [str(script)] if script.exists() else [sys.executable, "-m", "policyfresh.cli"]


def pipeline_env(home: Path, policies: Path, golden: Path) -> dict[str, str]:
    """This process's environment without POLICYFRESH_* or DAGSTER_HOME, then the benchmark's."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("POLICYFRESH_") and k != "DAGSTER_HOME"
    }
    return env | {
        "POLICYFRESH_HOME": str(home),
        "POLICYFRESH_POLICIES": str(policies),
        "POLICYFRESH_GOLDEN_CASES": str(golden),
        "POLICYFRESH_API_KEYS": json.dumps({SERVICE_KEY: ["public", "internal", "confidential",
                                                       "restricted"]}),
        "HF_HUB_OFFLINE": "1",
    }  # fmt: skip


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file (empty if it does not exist)."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def build(env: dict[str, str], log: Path) -> tuple[float, dict[str, Any]]:
    """Run `policyfresh run --json` once; its wall seconds and its summary."""
    started = time.monotonic()
    with log.open("w") as stderr:
        done = subprocess.run(
            [*policyfresh_command(), "run", "--json"],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=BUILD_TIMEOUT_SECONDS,
        )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise BenchmarkError(f"`policyfresh run` exited {done.returncode}:\n{tail(log)}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def ask_service(port: int, question: str, timeout: float) -> dict[str, Any]:
    """POST the question to the search service; its result (a release of None while none)."""
    try:
        response = httpx.post(
            f"http://127.0.0.1:{port}/search",
            json={"question": question, "caller": "edit_to_served"},
            headers={"Authorization": f"Bearer {SERVICE_KEY}"},
            timeout=max(timeout, 1.0),
        )
    except httpx.TransportError:  # not listening yet
        return {"release": None, "hits": []}
    if response.status_code == 503:
        return {"release": None, "hits": []}
    response.raise_for_status()
    return response.json()


def search(env: dict[str, str], question: str, timeout: float) -> dict[str, Any]:
    """Run `policyfresh search QUESTION --json`; its result."""
    try:
        done = subprocess.run(
            [*policyfresh_command(), "search", question, "--json", "--caller", "edit_to_served"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=max(timeout, 1.0),
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"`policyfresh search` still running after {timeout:.0f} s") from None
    if done.returncode != 0:
        raise BenchmarkError(
            f"`policyfresh search` exited {done.returncode}: {done.stderr[-2000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def normalized(text: str) -> str:
    """Text with every run of whitespace made one space."""
    return " ".join(text.split())


def serves(result: dict[str, Any], text: str) -> bool:
    """Whether any hit of a search result contains the text (whitespace aside)."""
    return any(normalized(text) in normalized(hit["text"] or "") for hit in result["hits"])


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_dev(
    env: dict[str, str], port: int, service_port: int, log: Path
) -> subprocess.Popen[bytes]:
    """Start `policyfresh dev --serve` (the UI on 127.0.0.1:port, the search service on
    127.0.0.1:service_port) in its own process group, logging to `log`."""
    with log.open("wb") as output:
        return subprocess.Popen(
            [
                *policyfresh_command(),
                "dev",
                "--serve",
                str(service_port),
                "--",
                "-p",
                str(port),
                "-h",
                "127.0.0.1",
            ],
            env=env | {"POLICYFRESH_SENSOR_INTERVAL": str(SENSOR_INTERVAL_SECONDS)},
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group is still there."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def gone(process: subprocess.Popen[bytes], pgid: int, seconds: float) -> bool:
    """Wait until the leader has exited and no process of its group is left (members killed
    with it are reaped by init a moment later)."""
    deadline = time.monotonic() + seconds
    while process.poll() is None or group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def stop_dev(process: subprocess.Popen[bytes]) -> None:
    """Stop the dev server's whole process group: SIGTERM, then SIGKILL after a grace period."""
    pgid = process.pid  # start_new_session made it the leader of its own group
    for stop in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, stop)
        if gone(process, pgid, STOP_GRACE_SECONDS):
            return
    raise BenchmarkError(f"process group {pgid} of `policyfresh dev` survived SIGKILL")


def graphql(client: httpx.Client, query: str, **variables: Any) -> dict[str, Any]:
    """The `data` of a GraphQL query to the webserver; raises on GraphQL errors."""
    response = client.post("/graphql", json={"query": query, "variables": variables})
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise BenchmarkError(f"GraphQL errors: {body['errors']}")
    return body["data"]


def webserver_up(client: httpx.Client) -> bool:
    """Whether the webserver answers `/server_info`."""
    try:
        return client.get("/server_info").status_code == 200
    except httpx.HTTPError:
        return False


def last_tick(client: httpx.Client, sensor: str) -> dict[str, Any] | None:
    """A sensor's latest tick: `timestamp`, `status` and `error` (None before its first)."""
    selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}
    found = graphql(client, SENSOR_QUERY, selector=selector | {"sensorName": sensor})
    state = found["sensorOrError"]
    if state["__typename"] != "Sensor":
        raise BenchmarkError(f"sensor {sensor}: {state}")
    ticks = state["sensorState"]["ticks"]
    return ticks[0] if ticks else None


def ticked_since(client: httpx.Client, sensor: str, since: float) -> bool:
    """Whether a sensor finished a tick that began after `since`; raises if that tick failed."""
    tick = last_tick(client, sensor)
    if tick is None or tick["timestamp"] < since or tick["status"] == "STARTED":
        return False
    if tick["status"] == "FAILURE":
        raise BenchmarkError(f"sensor {sensor} failed: {(tick['error'] or {}).get('message')}")
    return True


def runs(client: httpx.Client, **run_filter: Any) -> list[dict[str, Any]]:
    """Runs matching a GraphQL RunsFilter, newest first."""
    found = graphql(client, RUNS_QUERY, filter=run_filter)["runsOrError"]
    if found["__typename"] != "Runs":
        raise BenchmarkError(f"runs query: {found}")
    return found["results"]


def trigger_runs(client: httpx.Client) -> list[dict[str, Any]]:
    """Runs the policy source sensor requested."""
    return runs(client, tags=[{"key": "policyfresh/trigger", "value": TRIGGER}])


def wait_until_ready(
    client: httpx.Client, process: subprocess.Popen[bytes], log: Path, started: float
) -> None:
    """Wait until the webserver answers, every sensor has finished a tick and no run is in
    flight (a run the sensors requested at start-up would hold the edit's run in the queue),
    on two polls in a row."""
    deadline = started + STARTUP_TIMEOUT_SECONDS
    waiting_for, settled = "the webserver", 0
    while time.time() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(f"`policyfresh dev` exited {process.returncode} (see {log})")
        if webserver_up(client):
            late = [s for s in SENSORS if not ticked_since(client, s, started)]
            busy = [r["runId"] for r in runs(client, statuses=IN_FLIGHT)]
            waiting_for = f"sensors {late} to tick" if late else f"runs {busy} to finish"
            settled = 0 if late or busy else settled + 1
            if settled == 2:
                return
        time.sleep(POLL_SECONDS)
    raise BenchmarkError(
        f"dev server not ready after {STARTUP_TIMEOUT_SECONDS} s, waiting for {waiting_for}"
    )


def run_events(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    """Every event of a run, oldest first."""
    found = graphql(client, LOGS_QUERY, runId=run_id)["logsForRun"]
    if found["__typename"] != "EventConnection":
        raise BenchmarkError(f"logs of run {run_id}: {found}")
    return found["events"]


def stage_times(run: dict[str, Any], events: list[dict[str, Any]], t0: float) -> dict[str, float]:
    """Seconds since the edit of each stage reached so far in a run."""
    times = {"detected": run["creationTime"] - t0}
    if run["startTime"]:
        times["run_started"] = run["startTime"] - t0
    for event in events:
        if event["__typename"] != "MaterializationEvent":
            continue
        stage = MATERIALIZED_STAGE.get("/".join(event["assetKey"]["path"]))
        if stage and stage not in times:
            times[stage] = int(event["timestamp"]) / 1000 - t0
    return times


def step_seconds(events: list[dict[str, Any]]) -> dict[str, float]:
    """Each step's duration in a run, from its start event to its end event."""
    began: dict[str, float] = {}
    took: dict[str, float] = {}
    for event in events:
        step, kind = event.get("stepKey"), event["__typename"]
        if not step:
            continue
        at = int(event["timestamp"]) / 1000
        if kind == "ExecutionStepStartEvent":
            began[step] = at
        elif kind in ("ExecutionStepSuccessEvent", "ExecutionStepFailureEvent") and step in began:
            took[step] = round(at - began[step], 2)
    return took


def wait_for_publication(
    client: httpx.Client, before: set[str], t0: float, deadline: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Wait for the run the sensor requests after the edit to publish; the run and its events."""
    run: dict[str, Any] | None = None
    events: list[dict[str, Any]] = []
    while time.time() < deadline:
        new = [r for r in trigger_runs(client) if r["runId"] not in before]
        if new:
            run = min(new, key=lambda r: r["creationTime"])
            events = run_events(client, run["runId"])
            if "published" in stage_times(run, events, t0):
                return run, events
            if run["status"] in FAILED:
                raise BenchmarkError(f"run {run['runId']} ended {run['status']} before publishing")
            if run["status"] == "SUCCESS":
                raise BenchmarkError(
                    f"run {run['runId']} succeeded without publishing: the release gate blocked "
                    "the candidate (see `policyfresh releases`)"
                )
        time.sleep(POLL_SECONDS)
    reached = stage_times(run, events, t0) if run else {}
    what = f"run {run['runId']} {run['status']}, stages {reached}" if run else "no run requested"
    raise BenchmarkError(f"the edit was not published within the timeout: {what}")


def wait_until_served(
    ask: Callable[[str, float], dict[str, Any]],
    edit: Edit,
    release_before: int,
    t0: float,
    deadline: float,
) -> tuple[float, float, dict[str, Any]]:
    """Ask until the new text comes from a newer release: seconds since the edit when that
    search started and when it returned, and its result."""
    result: dict[str, Any] = {}
    while time.time() < deadline:
        asked = time.time()
        result = ask(edit.question, deadline - asked)
        answered = time.time()
        newer = result["release"] is not None and result["release"] > release_before
        if newer and serves(result, edit.new_text):
            return asked - t0, answered - t0, result
        time.sleep(POLL_SECONDS)
    raise BenchmarkError(
        f"new text {edit.new_text!r} not served within the timeout: release "
        f"{result.get('release')} (before the edit {release_before}) answered "
        f"{[h['doc_id'] for h in result.get('hits', [])]}"
    )


def intervals(seconds: dict[str, float]) -> dict[str, float]:
    """Seconds spent between each stage and the one before it (the edit, for the first)."""
    previous, spent = 0.0, {}
    for stage in STAGES:
        spent[stage] = round(seconds[stage] - previous, 2)
        previous = seconds[stage]
    return spent


def machine() -> dict[str, Any]:
    """The machine the figures come from."""
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
    }


def prepare_copy(corpus: Path, workdir: Path, edits: list[Edit]) -> Path:
    """Copy the corpus's policies into the workdir, with the edited pages as they were before."""
    policies = workdir / "policies"
    shutil.copytree(policies_root(corpus), policies)
    for edit in edits:
        if edit.before is not None:
            (policies / edit.path).write_text(edit.before, encoding="utf-8")
    return policies


def served_edit(
    client: httpx.Client, env: dict[str, str], service_port: int, policies: Path, edit: Edit,
    timeout: float,
) -> dict[str, Any]:  # fmt: skip
    """Save one edit and time each stage until both `policyfresh search` and the service serve
    it; that edit's figures."""
    before = search(env, edit.question, STARTUP_TIMEOUT_SECONDS)
    if serves(before, edit.new_text):
        raise BenchmarkError(f"{edit.new_text!r} is served before the edit: not a measurement")
    earlier = {r["runId"] for r in trigger_runs(client)}
    (policies / edit.path).write_text(edit.after, encoding="utf-8")
    t0 = time.time()
    deadline = t0 + timeout
    run, events = wait_for_publication(client, earlier, t0, deadline)
    by_service = wait_until_served(
        partial(ask_service, service_port), edit, before["release"], t0, deadline
    )
    asked, answered, result = wait_until_served(
        partial(search, env), edit, before["release"], t0, deadline
    )
    run = runs(client, runIds=[run["runId"]])[0]  # finished by now: its end and steps
    events = run_events(client, run["runId"])
    seconds = stage_times(run, events, t0) | {"served": asked}
    spent = intervals(seconds)
    dominant = max(spent, key=spent.__getitem__)
    return {
        "edit": {k: v for k, v in asdict(edit).items() if k not in ("before", "after")},
        "run_id": run["runId"],
        "run_tags": {tag["key"]: tag["value"] for tag in run["tags"]},
        "launched_by_warm_worker": any(
            "Launched by the warm run worker" in (e.get("message") or "") for e in events
        ),
        "run_child_peak_rss_mib": next(
            (int(m[1]) for e in events if (m := PEAK_RSS.search(e.get("message") or ""))), None
        ),
        "release_before": before["release"],
        "release_after": result["release"],
        "old_text_still_served": bool(edit.old_text and serves(result, edit.old_text)),
        "seconds_since_edit": {stage: round(seconds[stage], 2) for stage in STAGES},
        "stage_seconds": spent,
        "step_seconds": step_seconds(events),
        "run_finished_seconds": round(run["endTime"] - t0, 2) if run["endTime"] else None,
        "served_answer_returned_seconds": round(answered, 2),
        "served_by_service_seconds": round(by_service[1], 2),
        "service_release_after": by_service[2]["release"],
        "search_command_seconds": round(answered - asked, 2),
        "dominant_stage": dominant,
        "dominant_stage_is": INTERVALS[dominant],
    }


def cli_run_seconds(env: dict[str, str], policies: Path, edit: Edit) -> dict[str, Any]:
    """Save `edit` and time `policyfresh run --json` at once, as a person would with the
    daemon up: its seconds and what it did."""
    (policies / edit.path).write_text(edit.after, encoding="utf-8")
    started = time.monotonic()
    done = subprocess.run(
        [*policyfresh_command(), "run", "--json"], env=env, cwd=REPO, capture_output=True,
        text=True, timeout=BUILD_TIMEOUT_SECONDS,
    )  # fmt: skip
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise BenchmarkError(f"`policyfresh run` exited {done.returncode}: {done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": round(seconds, 2), "documents_changed": summary["documents"]["changed"],
            "published": summary["release"]["published"]}  # fmt: skip


def measure(
    corpus: Path,
    golden: Path,
    workdir: Path,
    timeout: float,
    edits: list[Edit] | None = None,
    instance_config: Path | None = None,
    cli_edit: Edit | None = None,
) -> dict[str, Any]:
    """Build the corpus, start `policyfresh dev`, save each edit in turn and time each stage
    until search serves it; then, with `cli_edit`, time `policyfresh run` with the daemon up.
    The figures. The dev server is stopped whatever happens. The Dagster instance runs on
    `instance_config` (a dagster.yaml) when given, else on policyfresh's own."""
    corpus, golden, workdir = corpus.resolve(), golden.resolve(), workdir.resolve()
    date = datetime.now(tz=UTC).isoformat(timespec="seconds")
    where = machine()  # before anything starts: the load others put on it
    edits = edits or choose_edits(corpus, 1)
    workdir.mkdir(parents=True, exist_ok=True)
    policies = prepare_copy(corpus, workdir, edits)
    home = workdir / "home"
    if instance_config is not None:
        (home / "dagster").mkdir(parents=True)  # policyfresh keeps a dagster.yaml it did not write
        shutil.copyfile(instance_config, home / "dagster" / "dagster.yaml")
    env = pipeline_env(home, policies, golden)
    build_seconds, summary = build(env, workdir / "build.log")
    port, service_port = free_port(), free_port()
    log = workdir / "dev.log"
    started = time.time()
    process = start_dev(env, port, service_port, log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_until_ready(client, process, log, started)
            ready_seconds = time.time() - started
            served = [
                served_edit(client, env, service_port, policies, edit, timeout) for edit in edits
            ]
            cli = cli_run_seconds(env, policies, cli_edit) if cli_edit else None
    except BaseException:
        print(f"dev server log ({log}), last lines:\n{tail(log)}", file=sys.stderr)
        raise
    finally:
        stop_dev(process)
    to_served = [edit["seconds_since_edit"]["served"] for edit in served]
    return {
        "date": date,
        "machine": where,
        "corpus": str(corpus),
        "golden": str(golden),
        "documents": sum(summary["documents"][k] for k in ("added", "changed", "unchanged")),
        "initial_build_seconds": round(build_seconds, 1),
        "initial_build": {
            "chunks": summary["chunks"]["inserted"],
            "embedded": summary["vectors"]["embedded"],
            "eval": summary["eval"] and summary["eval"]["verdict"],
            "release": summary["release"]["served"],
        },
        "dev_ready_seconds": round(ready_seconds, 1),
        "dev_pid": process.pid,
        "sensor_interval_seconds": SENSOR_INTERVAL_SECONDS,
        "edits": served,
        "served_seconds_p50": round(statistics.median(to_served), 2),
        "served_seconds_max": round(max(to_served), 2),
        "cli_run_with_daemon_up": cli,
    }


def report(figures: dict[str, Any]) -> str:
    """A few lines for people: per edit, each stage's seconds since the save and what
    dominates; then p50 and max of save-to-served."""
    lines = [f"initial build: {figures['initial_build_seconds']} s"]
    for edit in figures["edits"]:
        lines.append(f"edit of {edit['edit']['path']} ({edit['edit']['source']}):")
        for stage, at in edit["seconds_since_edit"].items():
            spent = edit["stage_seconds"][stage]
            what = INTERVALS[stage]
            lines.append(f"  {stage:<12} {at:7.2f} s after the edit  (+{spent:6.2f} s: {what})")
        dominant = edit["dominant_stage"]
        share = edit["stage_seconds"][dominant] / edit["seconds_since_edit"]["served"]
        lines.append(f"  dominant: {dominant} ({edit['dominant_stage_is']}), {share:.0%}")
    p50, top, count = (figures[k] for k in ("served_seconds_p50", "served_seconds_max", "edits"))
    lines.append(f"save to served: p50 {p50} s, max {top} s over {len(count)} edits")
    if figures["cli_run_with_daemon_up"]:
        lines.append(f"policyfresh run, one edit, daemon up: "
                     f"{figures['cli_run_with_daemon_up']['seconds']} s")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--golden", type=Path, help="default: the corpus's golden cases")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds, edit to served")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--edits", type=int, default=5, help="edits saved one after another")
    parser.add_argument(
        "--instance-config", type=Path, help="a dagster.yaml, e.g. deploy/dagster.yaml"
    )
    args = parser.parse_args()
    golden = args.golden or default_golden(args.corpus)
    workdir = Path(tempfile.mkdtemp(prefix="policyfresh-edit-to-served-"))
    try:
        edits = choose_edits(args.corpus, args.edits + 1)
        figures = measure(
            args.corpus, golden, workdir, args.timeout, edits[:-1],
            instance_config=args.instance_config, cli_edit=edits[-1],
        )  # fmt: skip
    except BenchmarkError as exc:
        print(f"edit_to_served: error: {exc}\n(work folder kept: {workdir})", file=sys.stderr)
        return 1
    shutil.rmtree(workdir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(report(figures))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
