"""The warm run worker under `policyfresh dev`: runs launched from the UI's API fork from it and
are ordinary Dagster runs (events, materializations, termination); a killed worker fails its run
and is started again; `policyfresh run` hands its run to it and imports nothing heavy itself. A
child forked after the worker's preload embeds and detects PII exactly as a new process does.

One `policyfresh dev` (webserver, daemon, worker and search service on free ports of 127.0.0.1,
its own process group, stopped by the fixture) serves the steps of one test, in order.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import numpy as np
import pytest

from orchestration.warm_socket import ask, socket_path
from orchestration.warm_worker import interrupt_while_canceling
from policyfresh.ingest.pii import detect_pii
from tests.conftest import BUNDLED, BUNDLED_GOLDEN, REPO, SMALL, keep_only, load_benchmark

pytestmark = pytest.mark.xdist_group("policyfresh-dev")

RUN_TIMEOUT_SECONDS = 300
WORKER_TIMEOUT_SECONDS = 180
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
EDITED = "retail/overdraft-fees.md"
SELECTOR = {"repositoryLocationName": "policyfresh", "repositoryName": "__repository__",
            "jobName": "refresh_policies"}  # fmt: skip
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}"""
TERMINATE = """
mutation Terminate($runId: String!) {
  terminateRun(runId: $runId) {
    __typename
    ... on TerminateRunFailure { message }
    ... on PythonError { message }
  }
}"""
SENSOR_ID = """
query SensorId($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) { ... on Sensor { id } }
}"""
STOP_SENSOR = """
mutation StopSensor($id: String!) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on PythonError { message }
  }
}"""
MESSAGES = """
query Messages($runId: ID!) {
  logsForRun(runId: $runId, limit: 100000) {
    ... on EventConnection { events { __typename ... on MessageEvent { message } } }
  }
}"""

# Preloads as the worker does, forks, and prints what the child computes.
FORKED = """
import json, os, sys
from orchestration.warm_worker import preload
from policyfresh.index.embedding import Embedder
from policyfresh.ingest.pii import detect_pii

preload()
texts = json.loads(sys.argv[1])
read, write = os.pipe()
if os.fork() == 0:
    vectors = Embedder().encode(texts).tolist()
    spans = [[s.entity_type, s.start, s.end] for s in detect_pii(texts[-1])]
    os.write(write, json.dumps({"vectors": vectors, "spans": spans}).encode())
    os._exit(0)
os.close(write)
with os.fdopen(read) as answer:
    print(answer.read())
"""


class Dev:
    """The running `policyfresh dev` and how to reach it."""

    def __init__(self, client: httpx.Client, env: dict[str, str], home: Path, corpus: Path):
        self.client, self.env, self.home, self.corpus = client, env, home, corpus
        self.bench = load_benchmark()

    def worker(self, other_than: int | None = None) -> dict[str, Any]:
        """The worker's answer to a ping, waiting for one (other than `other_than`) to be up."""
        deadline = time.monotonic() + WORKER_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                reply = ask(socket_path(self.home / "dagster"), {"ping": True})
                if reply["worker_pid"] != other_than:
                    return reply
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError("no warm run worker answered")

    def launch(self) -> str:
        found = self.bench.graphql(self.client, LAUNCH, params={"selector": SELECTOR})
        launched = found["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        return launched["run"]["runId"]

    def status(self, run_id: str) -> str:
        return self.bench.runs(self.client, runIds=[run_id])[0]["status"]

    def wait(self, run_id: str, statuses: set[str]) -> str:
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        while (status := self.status(run_id)) not in statuses:
            assert time.monotonic() < deadline, f"run {run_id} still {status}"
            time.sleep(0.2)
        return status

    def messages(self, run_id: str) -> list[str]:
        found = self.bench.graphql(self.client, MESSAGES, runId=run_id)["logsForRun"]
        return [e["message"] for e in found["events"] if e.get("message")]

    def reported(self, run_id: str, words: str) -> bool:
        """Whether a message of the run holds `words`, waiting for it: the child writes its
        peak memory after the run's end."""
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        while not any(words in m for m in self.messages(run_id)):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def stop_sensor(self, name: str) -> None:
        """Stop a sensor as the UI's toggle does."""
        selector = {k: SELECTOR[k] for k in ("repositoryLocationName", "repositoryName")}
        found = self.bench.graphql(self.client, SENSOR_ID, selector=selector | {"sensorName": name})
        stopped = self.bench.graphql(self.client, STOP_SENSOR, id=found["sensorOrError"]["id"])
        assert stopped["stopSensor"]["instigationState"]["status"] == "STOPPED", stopped

    def edit(self, words: str) -> None:
        page = self.corpus / EDITED
        page.write_text(page.read_text() + f"\n{words}\n")


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    bench = load_benchmark()
    root = tmp_path_factory.mktemp("warm")
    corpus, home = root / "corpus", root / "home"
    shutil.copytree(BUNDLED, corpus)
    keep_only(corpus, SMALL)
    env = bench.pipeline_env(home, corpus, BUNDLED_GOLDEN)
    bench.build(env, root / "build.log")
    port, service_port, log = bench.free_port(), bench.free_port(), root / "dev.log"
    started = time.time()
    process = bench.start_dev(env, port, service_port, log)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            bench.wait_until_ready(client, process, log, started)
            running = Dev(client, env, home, corpus)
            running.worker()
            yield running
    finally:
        bench.stop_dev(process)


def _a_launched_run_forks_from_the_worker_and_can_be_terminated(dev: Dev) -> None:
    worker = dev.worker()
    run_id = dev.launch()
    assert dev.wait(run_id, FINISHED) == "SUCCESS"
    messages = dev.messages(run_id)
    assert any(f"Launched by the warm run worker {worker['worker_pid']}" in m for m in messages)
    assert dev.reported(run_id, "peak resident memory"), "the child reports its peak RSS"
    events = dev.bench.run_events(dev.client, run_id)
    materialized = {e["assetKey"]["path"][-1] for e in events if "assetKey" in e}
    assert {"policy_documents", "served_index", "quality_reports"} <= materialized

    # Long enough to embed for seconds: Dagster stops a run at its next step boundary, and a
    # one-line edit's run can end before the termination arrives.
    dev.edit(
        "\n\n".join(f"Clause {n} of a terminated refresh, never published." for n in range(3000))
    )
    run_id = dev.launch()
    dev.wait(run_id, {"STARTED", *FINISHED})
    terminated = dev.bench.graphql(dev.client, TERMINATE, runId=run_id)["terminateRun"]
    assert terminated["__typename"] == "TerminateRunSuccess", terminated
    assert dev.wait(run_id, FINISHED) == "CANCELED"
    assert dev.worker()["worker_pid"] == worker["worker_pid"], "only the run's child stopped"


def _a_killed_worker_fails_its_run_and_the_next_run_forks_from_a_new_one(dev: Dev) -> None:
    worker = dev.worker()["worker_pid"]
    dev.edit("A run whose worker is killed fails cleanly.")
    run_id = dev.launch()
    dev.wait(run_id, {"STARTED", *FINISHED})
    os.kill(worker, signal.SIGKILL)  # its child dies with it
    assert dev.wait(run_id, FINISHED) == "FAILURE"

    restarted = dev.worker(other_than=worker)["worker_pid"]
    run_id = dev.launch()
    assert dev.wait(run_id, FINISHED) == "SUCCESS"
    assert any(f"warm run worker {restarted}" in m for m in dev.messages(run_id))


def _policyfresh_run_hands_its_run_to_the_worker_and_imports_nothing_heavy(dev: Dev) -> None:
    dev.edit("Handed to the warm worker.")
    probe = (
        "import sys\n"
        "from policyfresh.cli.main import main\n"
        "code = main(['run', '--json'])\n"
        "heavy = [m for m in ('dagster', 'great_expectations', 'torch', 'presidio_analyzer')"
        " if sys.modules.get(m)]\n"
        "print('HEAVY', heavy, code, file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=dev.env, cwd=REPO, capture_output=True, text=True,
        timeout=RUN_TIMEOUT_SECONDS,
    )  # fmt: skip
    assert "HEAVY [] 0" in done.stderr, done.stderr
    summary = json.loads(done.stdout)
    assert summary["documents"]["changed"] == 1 and summary["release"]["published"]
    assert summary["checks"]["regression_eval:release_gate"] == "passed"
    (run,) = dev.bench.runs(dev.client, runIds=[summary["run_id"]])
    assert {"key": "policyfresh/trigger", "value": "cli"} in run["tags"], "a run of the instance"


def test_runs_fork_from_the_warm_worker_end_as_asked_and_outlive_it(dev: Dev):
    """In this order, on one `policyfresh dev` (xdist would otherwise interleave the other dev
    tests of the group between them and start it again for each). The source sensor is stopped
    first, so that each step's edit is taken by the run the step launches, not by a sensor's."""
    dev.stop_sensor(dev.bench.TRIGGER)
    _a_launched_run_forks_from_the_worker_and_can_be_terminated(dev)
    _a_killed_worker_fails_its_run_and_the_next_run_forks_from_a_new_one(dev)
    _policyfresh_run_hands_its_run_to_the_worker_and_imports_nothing_heavy(dev)


def test_a_child_forked_after_the_preload_embeds_and_detects_as_a_new_process(embedder):
    texts = [
        "What is the overdraft fee per item?",
        "Annual leave carries over up to 240 hours.",
        "Send requests to Maria Okafor, maria.okafor@northwind-bank.com, 555-201-3344.",
    ]
    done = subprocess.run(
        [sys.executable, "-c", FORKED, json.dumps(texts)], cwd=REPO, capture_output=True,
        text=True, timeout=RUN_TIMEOUT_SECONDS, env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    child = json.loads(done.stdout)
    assert np.array_equal(np.array(child["vectors"], dtype=np.float32), embedder.encode(texts))
    spans = [[s.entity_type, s.start, s.end] for s in detect_pii(texts[-1])]
    assert child["spans"] == spans and {"PERSON", "EMAIL_ADDRESS"} <= {k for k, _, _ in spans}


def test_a_run_being_canceled_is_interrupted_until_it_stops(tmp_path: Path):
    """Dagster raises a termination's interrupt wherever Python is, and one raised inside a
    finalizer is printed and lost ("Exception ignored in ... weakref_cb", seen in the suite: the
    run ran on to SUCCESS). The child interrupts itself again while its run is CANCELING."""

    @dg.asset
    def probe() -> None:
        return None

    received: list[float] = []
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        run_id = dg.materialize([probe], instance=instance).run_id
        previous = signal.signal(signal.SIGINT, lambda *_: received.append(time.monotonic()))
        done = threading.Event()
        watcher = threading.Thread(
            target=interrupt_while_canceling, args=(instance.get_ref(), run_id, done)
        )
        try:
            watcher.start()
            time.sleep(1.5)
            assert received == [], "a finished run is never interrupted"
            instance.report_run_canceling(instance.get_run_by_id(run_id))
            deadline = time.monotonic() + 10
            while len(received) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(received) >= 2, "the first interrupt lost, another follows"
            instance.report_run_canceled(instance.get_run_by_id(run_id))
            time.sleep(1.5)
            count = len(received)
            time.sleep(1.5)
            assert len(received) == count, "no interrupt once the run is canceled"
        finally:
            done.set()
            watcher.join()
            signal.signal(signal.SIGINT, previous)
