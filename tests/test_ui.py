"""The Dagster UI of `policyfresh dev` in a real browser (Playwright driving Debian's chromium).

Slow (about two and a half minutes on two cores): it starts the real webserver and daemon with
`policyfresh dev` on a free port of 127.0.0.1 and an empty temporary home, then, as a person
would: the global asset graph lists every asset of the code location; the Automation page
shows every sensor of the code location running; "Materialize all" launches a run that
succeeds; and a policy edit saved on disk shows up in the Runs page as a run requested by
`policy_source_sensor`, with nothing clicked. Each step saves a screenshot. The dev server
is stopped by its own process group whatever happens.

On an empty home `policy_source_sensor` requests the first build at the daemon's first tick,
before the webserver even answers: the clicked run waits in the queue behind it (one run at a
time) and then refreshes what that build made. Either way the clicked run has to succeed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.conftest import BUNDLED, BUNDLED_GOLDEN, REPO, SMALL, keep_only, load_benchmark

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

# `policyfresh dev` here and in the other module of this group never run at once: two dev servers,
# their daemons and runs would share two cores (and their free ports could meet).
pytestmark = pytest.mark.xdist_group("policyfresh-dev")

STARTUP_TIMEOUT_SECONDS = 180
RUN_TIMEOUT_SECONDS = 300  # a full build of the bundled corpus takes about a minute here
SENSOR_RUN_TIMEOUT_SECONDS = 240  # the sensor waits for runs in flight before it requests one
UI_TIMEOUT_MS = 60_000
EXPECT_DEFAULT_TIMEOUT_MS = 5_000  # Playwright's own
STOP_GRACE_SECONDS = 5
EDITED = "retail/overdraft-fees.md"
SENTENCE = "Customers are told about every overdraft fee by text message within one hour."
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
SENSORS_QUERY = """
query Sensors($selector: RepositorySelector!) {
  sensorsOrError(repositorySelector: $selector) {
    __typename
    ... on Sensors { results { name sensorState { status } } }
    ... on PythonError { message }
  }
}"""


def code_location() -> tuple[list[str], list[str]]:
    """Every asset key and every sensor name of the code location, from its Definitions."""
    from orchestration.definitions import defs

    assets = sorted(k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys())
    return assets, sorted(sensor.name for sensor in defs.sensors)


@dataclass
class Dev:
    """A running `policyfresh dev`: its URL, a GraphQL client, its policies folder and log."""

    url: str
    client: httpx.Client
    policies: Path
    log: Path
    bench: ModuleType
    started: float  # time.monotonic() when it was started

    def mark(self, step: str) -> None:
        """Print how long after the start a step was reached (shown with -s or on failure)."""
        print(f"{time.monotonic() - self.started:6.1f} s  {step}")

    def runs(self, **run_filter: Any) -> list[dict[str, Any]]:
        return self.bench.runs(self.client, **run_filter)

    def sensor_states(self) -> dict[str, str]:
        selector = {"repositoryLocationName": "policyfresh", "repositoryName": "__repository__"}
        found = self.bench.graphql(self.client, SENSORS_QUERY, selector=selector)
        sensors = found["sensorsOrError"]
        assert sensors["__typename"] == "Sensors", sensors
        return {s["name"]: s["sensorState"]["status"] for s in sensors["results"]}


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[Dev]:
    """`policyfresh dev` on an empty temporary home and five of the bundled policies, the
    webserver on a free port of 127.0.0.1; stopped by its process group at the end."""
    bench = load_benchmark()
    work = tmp_path_factory.mktemp("ui")
    policies = work / "policies"
    shutil.copytree(BUNDLED, policies)
    keep_only(policies, SMALL)  # five policies: the sensor's first build is quick
    env = bench.pipeline_env(work / "home", policies, BUNDLED_GOLDEN) | {
        "POLICYFRESH_MODEL_CACHE": str(model_cache),
        "POLICYFRESH_SENSOR_INTERVAL": str(bench.SENSOR_INTERVAL_SECONDS),
    }
    port = bench.free_port()
    log = work / "dev.log"
    started = time.monotonic()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*bench.policyfresh_command(), "dev", "--", "-p", str(port), "-h", "127.0.0.1"],
            env=env,
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped by it, never by name
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not bench.webserver_up(client):
            assert process.poll() is None, f"`policyfresh dev` exited:\n{bench.tail(log)}"
            assert time.monotonic() < deadline, f"no webserver:\n{bench.tail(log)}"
            time.sleep(0.5)
        running = Dev(f"http://127.0.0.1:{port}", client, policies, log, bench, started)
        running.mark("webserver up")
        yield running
    finally:
        client.close()
        print(f"dev server log ({log}), last lines:\n{bench.tail(log)}")  # shown on failure
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the dev server's whole process group (the webserver, the daemon, the code server
    and any run in flight): SIGTERM, then SIGKILL after a few seconds (the home is thrown away).
    """
    for signal_, grace in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 20)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal_)  # its own group: start_new_session made it leader
        if load_benchmark().gone(process, process.pid, grace):
            return
    raise AssertionError(f"process group {process.pid} of `policyfresh dev` survived SIGKILL")


@pytest.fixture(autouse=True)
def slow_expect() -> Iterator[None]:
    """Playwright's `expect` waits as long as the UI may take on a busy machine, in this
    module only."""
    from playwright.sync_api import expect

    expect.set_options(timeout=UI_TIMEOUT_MS)
    yield
    expect.set_options(timeout=EXPECT_DEFAULT_TIMEOUT_MS)


def wait_for_run(dev: Dev, run_id: str, timeout: float) -> dict[str, Any]:
    """Poll the instance (GraphQL) until the run ends; the run."""
    deadline = time.monotonic() + timeout
    while True:
        run = dev.runs(runIds=[run_id])[0]
        if run["status"] in TERMINAL or time.monotonic() > deadline:
            return run
        time.sleep(1)


def expand_groups(page: Page, asset: str) -> None:
    """Expand every group of the asset graph (Alt+E toggles expand all / collapse all) until
    the asset's node shows."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    node = page.get_by_text(asset, exact=True).first
    for _ in range(3):
        try:
            node.wait_for(state="visible", timeout=5_000)
            return
        except PlaywrightTimeout:
            page.keyboard.press("Alt+e")
    node.wait_for(state="visible")


def shot(page: Page, path: Path) -> None:
    """Save a screenshot once the page has stopped loading (its data arrives after its text)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with contextlib.suppress(PlaywrightTimeout):  # the UI polls: it may never be idle for long
        page.wait_for_load_state("networkidle", timeout=5_000)
    page.screenshot(path=path)


def run_link(page: Page, run_id: str) -> Locator:
    """The link to a run from the Runs page's list, shown as the run id's first 8 digits."""
    return page.locator(f'a[href="/runs/{run_id}"]', has_text=run_id[:8])


def test_slow_the_dagster_ui_shows_the_graph_materializes_and_follows_an_edit(
    dev: Dev, page: Page, screenshots: Path
) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    assets, sensors = code_location()
    page.set_default_timeout(UI_TIMEOUT_MS)
    # The first-visit newsletter dialog (shown a second after the first page loads, until
    # dismissed once for the instance): dismiss it now, and whenever it gets in the way.
    skip = page.get_by_role("button", name="Skip", exact=True)
    page.add_locator_handler(skip, lambda: skip.click())

    # 1. The global asset graph, on an empty home: "Materialize all" launches a run.
    page.goto(f"{dev.url}/asset-groups")
    with contextlib.suppress(PlaywrightTimeout):  # unless already dismissed on this instance
        skip.click(timeout=10_000)
    dev.mark("newsletter dialog skipped")
    materialize = page.get_by_role("button", name=re.compile(r"Materialize all \(\d+\)"))
    expect(materialize).to_be_enabled()
    shot(page, screenshots / "01-asset-graph.png")
    clicked = time.time()
    dev.mark("asset graph loaded")
    materialize.click()
    toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))
    expect(toast).to_be_visible()
    launched = [
        r
        for r in dev.runs(tags=[{"key": "dagster/from_ui", "value": "true"}])
        if r["creationTime"] >= clicked - 1
    ]
    assert len(launched) == 1, launched
    run_id = launched[0]["runId"]
    assert run_id[:8] in toast.inner_text()
    dev.mark(f"run {run_id[:8]} launched from the UI")

    # 2. Every asset of the code location is in the graph (groups expanded: Alt+E).
    expand_groups(page, assets[0])
    for asset in assets:
        expect(page.get_by_text(asset, exact=True).first).to_be_visible()
    shot(page, screenshots / "02-asset-graph-expanded.png")

    # 3. Every sensor of the code location is on the Automation page, switched on, running.
    page.goto(f"{dev.url}/automation")
    for sensor in sensors:
        link = page.locator(f'a[href$="/sensors/{sensor}"]')
        expect(link).to_be_visible()
        row = link.locator("xpath=..")  # the list item: a select box, the link, the switch
        expect(row.locator("input[type=checkbox]").last).to_be_checked()
    shot(page, screenshots / "03-automation.png")
    dev.mark("assets and sensors checked")
    states = dev.sensor_states()
    assert {name: states.get(name) for name in sensors} == dict.fromkeys(sensors, "RUNNING")
    assert {"policy_source_sensor", "stale_embeddings_sensor"} <= set(sensors)

    # 4. The launched run succeeds (the bundled corpus builds in about a minute).
    page.goto(f"{dev.url}/runs/{run_id}")
    run = wait_for_run(dev, run_id, RUN_TIMEOUT_SECONDS)
    assert run["status"] == "SUCCESS", f"run {run_id} is {run['status']} (see {dev.log})"
    dev.mark(f"run {run_id[:8]} succeeded")

    # 5. A policy edit saved on disk shows up in the Runs page, requested by the sensor. It
    # is saved first, so that the sensor notices it while the screenshots of step 4 are taken.
    edited = dev.policies / EDITED
    saved = time.time()
    edited.write_text(edited.read_text(encoding="utf-8") + f"\n{SENTENCE}\n", encoding="utf-8")
    expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    shot(page, screenshots / "04-run-succeeded.png")
    page.goto(f"{dev.url}/asset-groups")
    expand_groups(page, assets[0])
    shot(page, screenshots / "05-asset-graph-materialized.png")
    page.goto(f"{dev.url}/runs")
    expect(run_link(page, run_id)).to_be_visible()
    dev.mark("edit saved, run and graph shown")
    deadline = time.monotonic() + SENSOR_RUN_TIMEOUT_SECONDS
    requested: list[dict[str, Any]] = []
    while not requested and time.monotonic() < deadline:
        time.sleep(1)
        requested = [
            r
            for r in dev.runs(
                tags=[{"key": "dagster/sensor_name", "value": "policy_source_sensor"}]
            )
            if r["creationTime"] >= saved
        ]
    assert requested, (
        f"no run requested by policy_source_sensor {SENSOR_RUN_TIMEOUT_SECONDS} s after the edit"
    )
    new_run = requested[-1]
    dev.mark(f"run {new_run['runId'][:8]} requested by the sensor after the edit")
    tags = {tag["key"]: tag["value"] for tag in new_run["tags"]}
    assert tags["policyfresh/trigger"] == "policy_source_sensor"
    assert tags["policyfresh/changes"] == "1 changed"
    page.reload()  # the Runs page also refreshes itself every few seconds
    expect(run_link(page, new_run["runId"])).to_be_visible()
    expect(page.get_by_text("policyfresh/trigger: policy_source_sensor").first).to_be_visible()
    shot(page, screenshots / "06-runs-after-edit.png")
    assert len(list(screenshots.glob("*.png"))) == 6
    dev.mark("done")
