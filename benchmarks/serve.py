"""Search service benchmark on the 18F handbook: `policyfresh serve` under 1, 4 and 16 concurrent
clients, the same while `policyfresh run` publishes a new release (no error, no response mixing two
releases), and `policyfresh search` from a cold shell with and without the ONNX export, beside the
in-process search latency, and 16 honest clients while an attacker holds 200 slow sockets and
floods with another key. Prints a table and saves the figures.

    .venv/bin/python benchmarks/serve.py [--seconds 30] [--clients 1,4,16]
        [--refresh-clients 16] [--refresh-timeout 900] [--out benchmarks/results/serve.json]
        [--attack-seconds 300] [--attack-only]

It copies the corpus's pages to a temporary folder (the recorded edits' pages as they were
before), builds them once with `policyfresh run`, starts `policyfresh serve` on a free port of
127.0.0.1 in its own process group and loads it: each client is a thread with its own
`httpx.Client` (its own connections), POSTing the golden questions in turn and timing each
request itself. Under load, one recorded edit is saved and `policyfresh run` publishes it; the load
goes on until the run has finished and `/health` has shown the new release for a few seconds.
The server is always stopped by its own process group. Then `policyfresh search` is timed as a new
process, as a person types it.

Under attack: 16 honest clients (a key with a high rate of its own) search for `--attack-seconds`
without an attack, then as long again while another process holds 200 slow sockets (a header
byte a second each, reopened when the server cuts one) and floods `/search` from 8 threads with a
key at the default rate. The honest p50/p95 of both runs, the attacker's answers by status, the
sockets the server cut, and the server's RSS every 10 s. `--attack-only` skips the other
measurements and saves to `benchmarks/results/serve_attack.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import json
import multiprocessing
import secrets
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np

from policyfresh.index.embedding import Embedder
from policyfresh.serve.query_encoder import VERIFIED_FILE, encoder_dir, load_onnx
from policyfresh.serve.search import QueryEncoder, search_many
from policyfresh.store.config import Settings

HERE = Path(__file__).resolve().parent


def load_benchmark(name: str) -> ModuleType:
    """A sibling benchmark script as a module, for its helpers (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


dev = load_benchmark("edit_to_served")  # the build, the environment, the process group
timed = load_benchmark("refresh").timed

REPO = dev.REPO
DEFAULT_OUT = REPO / "benchmarks" / "results" / "serve.json"
ATTACK_OUT = REPO / "benchmarks" / "results" / "serve_attack.json"
REFRESH_EDIT = "18f-advanced-annual-leave"  # the edit `edit_to_served` times too
CLIENT_LEVELS = (1, 4, 16)
K = 5
CALLER = "bench-serve"
REQUEST_TIMEOUT_SECONDS = 60.0
STARTUP_TIMEOUT_SECONDS = 240.0
WARMUP_SECONDS = 5.0  # load before the edit is saved
SETTLE_SECONDS = 5.0  # load after /health shows the new release and the run has finished
POLL_SECONDS = 0.2
COLD_RUNS = 5
SEARCH_TIMEOUT_SECONDS = 600.0
WATCHED_MODULES = ("torch", "sentence_transformers", "transformers", "onnxruntime", "dagster")
HONEST_CLIENTS = 16
TRACE_LOOKUPS = 100
HONEST_GRANT = {"rate": 1000, "burst": 1000}  # an application with many users: never limited
SLOW_SOCKETS = 200
FLOOD_THREADS = 8
RSS_EVERY_SECONDS = 10.0
ALL_CLASSIFICATIONS = ["public", "internal", "confidential", "restricted"]


@dataclass
class Sample:
    """One request as its client saw it: when, how long, and what came back."""

    client: int
    question: str
    sent: float  # time.monotonic()
    done: float
    status: int | None  # None: no response (a transport error)
    error: str | None = None
    release: int | None = None
    index_version: int | None = None
    mixed: bool = False  # a hit from another release or index version than the response's
    server_ms: float | None = None
    serves_new_text: bool | None = None  # for the edit's question: a hit holds its new text

    @property
    def latency_ms(self) -> float:
        return (self.done - self.sent) * 1000


def read_sample(
    client: int, question: str, sent: float, response: httpx.Response, new_text: str | None
) -> Sample:
    """A sample from a response: its release, whether its hits agree with it, the server's
    time, and when `new_text` is given, whether a hit holds it."""
    sample = Sample(client, question, sent, time.monotonic(), response.status_code)
    if response.status_code != 200:
        sample.error = f"HTTP {response.status_code}: {response.text[:200]}"
        return sample
    body = response.json()
    sample.release, sample.index_version = body["release"], body["index_version"]
    sample.mixed = any(
        hit["release"] != body["release"] or hit["index_version"] != body["index_version"]
        for hit in body["hits"]
    )
    sample.server_ms = body["latency_ms"]
    if new_text is not None:
        sample.serves_new_text = dev.serves(body, new_text)
    return sample


class Load:
    """Concurrent clients, each a thread with its own `httpx.Client` (so no shared connection
    limit serializes them), each POSTing the questions in turn until stopped or out of time."""

    def __init__(
        self, url: str, key: str, questions: list[str], clients: int, probe: Any = None
    ) -> None:
        self.url, self.key, self.questions, self.clients = url, key, questions, clients
        self.probe = probe  # an edit: responses to its question record whether they serve it
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started = self.ended = 0.0

    def start(self, seconds: float | None = None) -> None:
        """Start every client; they run for `seconds`, or until `stop` when None."""
        self.started = time.monotonic()
        deadline = self.started + seconds if seconds is not None else float("inf")
        self._threads = [
            threading.Thread(target=self._client, args=(n, deadline), daemon=True)
            for n in range(self.clients)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> list[Sample]:
        """Stop the clients (each finishes its request in flight) and return every sample."""
        self._stop.set()
        return self.wait()

    def wait(self) -> list[Sample]:
        """Wait for the clients to finish; every sample."""
        for thread in self._threads:
            thread.join()
        self.ended = time.monotonic()
        return self.samples

    def _client(self, number: int, deadline: float) -> None:
        with httpx.Client(
            base_url=self.url, headers=auth(self.key), timeout=REQUEST_TIMEOUT_SECONDS
        ) as client:
            turn = number  # clients start on different questions
            while not self._stop.is_set() and time.monotonic() < deadline:
                question = self.questions[turn % len(self.questions)]
                turn += 1
                sent = time.monotonic()
                body = {"question": question, "k": K, "caller": CALLER}
                try:
                    response = client.post("/search", json=body)
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    self.samples.append(
                        Sample(number, question, sent, time.monotonic(), None, error)
                    )
                    continue
                probed = self.probe is not None and question == self.probe.question
                new_text = self.probe.new_text if probed else None
                self.samples.append(read_sample(number, question, sent, response, new_text))


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p95, p99 and the maximum, rounded to 0.1 (None when there is no value)."""
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "p50_ms": round(float(p50), 1),
        "p95_ms": round(float(p95), 1),
        "p99_ms": round(float(p99), 1),
        "max_ms": round(max(values), 1),
    }


def summarize(samples: list[Sample], seconds: float) -> dict[str, Any]:
    """Requests, throughput, client-measured latency percentiles and errors of a load."""
    ok = [s for s in samples if s.status == 200]
    errors = [s for s in samples if s.status != 200]
    server = [s.server_ms for s in ok if s.server_ms is not None]
    return {
        "requests": len(samples),
        "ok": len(ok),
        "errors": len(errors),
        "status_codes": dict(Counter(str(s.status or "no response") for s in samples)),
        "first_errors": [s.error for s in errors[:5]],
        "seconds": round(seconds, 1),
        "requests_per_second": round(len(ok) / seconds, 2) if seconds else None,
        **percentiles([s.latency_ms for s in ok]),
        "server_latency_p50_ms": round(statistics.median(server), 1) if server else None,
    }


def golden_questions(golden: Path) -> list[str]:
    """The `user_question` of every golden case, in file order."""
    with golden.open(newline="", encoding="utf-8") as file:
        return [row["user_question"] for row in csv.DictReader(file)]


def prepare(corpus: Path, workdir: Path) -> tuple[Path, list[Any]]:
    """Copy the corpus's pages into the workdir with every recorded edit's page as it was
    before the edit; the policies folder and the recorded edits."""
    lines = (corpus / "changes" / "changes.jsonl").read_text(encoding="utf-8").splitlines()
    edits = [dev.recorded_edit(corpus, json.loads(line)) for line in lines]
    return dev.prepare_copy(corpus, workdir, edits), edits


def start_serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """Start `policyfresh serve` on 127.0.0.1:port in its own process group, logging to `log`."""
    with log.open("wb") as output:
        return subprocess.Popen(
            [*dev.policyfresh_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def health(client: httpx.Client) -> dict[str, Any] | None:
    """`GET /health` when it answers 200, else None."""
    try:
        response = client.get("/health")
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def wait_healthy(
    client: httpx.Client, process: subprocess.Popen[bytes], log: Path
) -> tuple[dict[str, Any], float]:
    """Wait until `/health` answers 200; its body and the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < STARTUP_TIMEOUT_SECONDS:
        if process.poll() is not None:
            raise dev.BenchmarkError(
                f"`policyfresh serve` exited {process.returncode}:\n{dev.tail(log)}"
            )
        found = health(client)
        if found is not None:
            return found, time.monotonic() - started
        time.sleep(POLL_SECONDS)
    raise dev.BenchmarkError(f"/health not 200 after {STARTUP_TIMEOUT_SECONDS:.0f} s")


def levels_under_load(
    url: str, key: str, questions: list[str], levels: list[int], seconds: float
) -> dict[str, Any]:
    """One load per number of clients, each for `seconds`; their summaries."""
    figures: dict[str, Any] = {}
    for clients in levels:
        load = Load(url, key, questions, clients)
        load.start(seconds)
        samples = load.wait()
        figures[str(clients)] = {"clients": clients} | summarize(samples, load.ended - load.started)
        figures[str(clients)]["mixed"] = sum(s.mixed for s in samples)
    return figures


def refresh_under_load(
    url: str,
    key: str,
    questions: list[str],
    clients: int,
    env: dict[str, str],
    policies: Path,
    edit: Any,
    log: Path,
    timeout: float,
) -> dict[str, Any]:
    """Load the service while one edit is saved and `policyfresh run` publishes it; keep the
    load until the run has finished and `/health` has shown the new release for
    `SETTLE_SECONDS` (or `timeout` after the edit). Errors, releases seen, mixed responses."""
    load = Load(url, key, questions, clients, probe=edit)
    problem = None
    summary: dict[str, Any] | None = None
    run_seconds = run_ended = new_on_health = None
    with (
        httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_SECONDS) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        before = health(client)
        if before is None:
            raise dev.BenchmarkError("/health not 200 before the refresh")
        load.start()
        time.sleep(WARMUP_SECONDS)
        (policies / edit.path).write_text(edit.after, encoding="utf-8")
        edited = time.monotonic()
        run = pool.submit(dev.build, env, log)
        while True:
            now = time.monotonic()
            if now - edited > timeout:
                problem = f"timed out {timeout:.0f} s after the edit"
                break
            if run_ended is None and run.done():
                try:
                    run_seconds, summary = run.result()
                except dev.BenchmarkError as exc:
                    problem = f"the refresh failed: {exc}"
                    break
                run_ended = edited + run_seconds  # build started right after the edit
                if not summary["release"]["published"]:
                    problem = f"the refresh did not publish: {summary['release']['message']}"
                    break
            found = health(client)
            if new_on_health is None and found and found["release"] != before["release"]:
                new_on_health = time.monotonic()
            if run_ended is not None and new_on_health and now - new_on_health >= SETTLE_SECONDS:
                break
            time.sleep(POLL_SECONDS)
        samples = load.stop()
        after = health(client)
        with contextlib.suppress(Exception):  # a timed-out run is waited for here, then reported
            run.result()
    ok = [s for s in samples if s.status == 200]
    new = summary["release"]["served"] if summary else None
    from_new = [s for s in ok if new is not None and s.release == new]
    first_new = min((s.done for s in from_new), default=None)
    probes = [s for s in ok if s.serves_new_text is not None]

    def since(start: float | None, at: float | None) -> float | None:
        return round(at - start, 2) if start is not None and at is not None else None

    return {
        "clients": clients,
        "edit": {"page": edit.path, "source": edit.source, "question": edit.question},
        "problem": problem,
        "release_before": before["release"],
        "release_after": new,
        "health_after": after,
        "run_seconds": round(run_seconds, 1) if run_seconds else None,
        "run_summary": {
            "embedded": summary["vectors"]["embedded"],
            "eval": summary["eval"] and summary["eval"]["verdict"],
            "published": summary["release"]["published"],
        }
        if summary
        else None,
        **summarize(samples, load.ended - load.started),
        "releases_seen": {
            str(release): count for release, count in sorted(Counter(s.release for s in ok).items())
        },
        "mixed": sum(s.mixed for s in samples),
        # Sent after a response of the new release had come back, yet answered from the old.
        "old_release_after_new": sum(
            1 for s in ok if first_new and s.sent > first_new and s.release != new
        ),
        "edit_to_run_end_seconds": since(edited, run_ended),
        "edit_to_health_new_seconds": since(edited, new_on_health),
        "edit_to_first_new_response_seconds": since(edited, first_new),
        # Negative: the new release was served before the run's process exited (it publishes
        # and then finishes its later steps).
        "run_end_to_first_new_response_seconds": since(run_ended, first_new),
        "edit_question_answers": {
            "from_new_release_with_new_text": sum(
                1 for s in probes if s.release == new and s.serves_new_text
            ),
            "from_new_release_without_new_text": sum(
                1 for s in probes if s.release == new and not s.serves_new_text
            ),
            "from_old_release": sum(1 for s in probes if s.release != new),
        },
    }


def timed_search(env: dict[str, str], question: str) -> dict[str, Any]:
    """`policyfresh search QUESTION` as a new process, as a person types it: seconds from spawn
    to the answer's last line and to the process's exit (stdout unbuffered, as on a terminal)."""
    with tempfile.TemporaryFile() as stderr:
        started = time.monotonic()
        process = subprocess.Popen(
            [*dev.policyfresh_command(), "search", question],
            env=env | {"PYTHONUNBUFFERED": "1"},
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )
        watchdog = threading.Timer(SEARCH_TIMEOUT_SECONDS, process.kill)  # our child, by pid
        watchdog.start()
        answered, lines = None, 0
        assert process.stdout is not None
        with process.stdout:
            for _ in process.stdout:
                answered, lines = time.monotonic(), lines + 1
        code = process.wait()
        exited = time.monotonic()
        watchdog.cancel()
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace").strip()
    if code != 0 or answered is None:
        raise dev.BenchmarkError(f"`policyfresh search` exited {code}: {errors[-2000:]}")
    return {
        "answer_seconds": round(answered - started, 2),
        "exit_seconds": round(exited - started, 2),
        "stdout_lines": lines,
        "stderr": errors.splitlines()[-3:],
    }


def imported_modules(env: dict[str, str], question: str) -> set[str]:
    """Every module `policyfresh search QUESTION` imports, from `python -X importtime`."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "policyfresh.cli", "search", question],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SEARCH_TIMEOUT_SECONDS,
    )
    if done.returncode != 0:
        raise dev.BenchmarkError(
            f"`policyfresh search` exited {done.returncode}: {done.stderr[-2000:]}"
        )
    return {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def cold_start(env: dict[str, str], question: str, empty_cache: Path) -> dict[str, Any]:
    """`policyfresh search` from a cold shell: median of `COLD_RUNS` with the ONNX export, the
    modules that path imports, and once with an empty model cache (the torch fallback, which
    exports the model after answering)."""
    fast = [timed_search(env, question) for _ in range(COLD_RUNS)]
    modules = imported_modules(env, question)
    fallback = timed_search(env | {"POLICYFRESH_MODEL_CACHE": str(empty_cache)}, question)
    return {
        "question": question,
        "onnx": {
            "runs": fast,
            "median_answer_seconds": round(statistics.median(r["answer_seconds"] for r in fast), 2),
            "median_exit_seconds": round(statistics.median(r["exit_seconds"] for r in fast), 2),
            "imported": {
                name: any(m == name or m.startswith(name + ".") for m in modules)
                for name in WATCHED_MODULES
            },
        },
        "torch_fallback": fallback,
    }


def in_process(settings: Settings, questions: list[str]) -> dict[str, Any]:
    """`search_many` latency in this process (encoding and retrieval, the model loaded): with
    the torch `Embedder`, as benchmarks/refresh.py measures it, and with the ONNX export."""
    embedder = Embedder()
    _, load_seconds = timed(embedder.load)
    encoders: dict[str, QueryEncoder | None] = {
        "torch": embedder,
        "onnx": load_onnx(settings, embedder),
    }
    figures: dict[str, Any] = {
        "questions": len(questions),
        "torch_load_seconds": round(load_seconds, 2),
    }
    for name, encoder in encoders.items():
        if encoder is None:
            figures[name] = None
            continue
        search_many(settings, encoder, questions[:3], k=K, caller="benchmark")  # warm up
        results = search_many(settings, encoder, questions, k=K, caller="benchmark")
        figures[name] = percentiles([r.latency_ms for r in results])
    return figures


def server_log_problems(log: Path) -> list[str]:
    """Lines of the server's log that report an error or a traceback."""
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    return [line for line in text.splitlines() if "ERROR" in line or "Traceback" in line]


def measure(
    corpus: Path,
    golden: Path,
    workdir: Path,
    seconds: float,
    levels: list[int],
    refresh_clients: int,
    refresh_timeout: float,
    attack_seconds: float,
    attack_only: bool,
) -> dict[str, Any]:
    """Build the corpus, serve it under load, through a refresh and under attack, then time the
    command line and the in-process search (all but the attack skipped with `attack_only`);
    the figures. The server is stopped whatever happens."""
    date = datetime.now(tz=UTC).isoformat(timespec="seconds")
    where = dev.machine()  # before anything starts: the load others put on the machine
    questions = golden_questions(golden)
    policies, edits = prepare(corpus, workdir)
    edit = next(e for e in edits if e.source.endswith(REFRESH_EDIT))
    home = workdir / "home"
    env = dev.pipeline_env(home, policies, golden)
    build_seconds, built = dev.build(env, workdir / "build.log")
    settings = Settings.load(home=home, policies=policies, golden=golden)
    exported = (encoder_dir(settings, Embedder().model_id) / VERIFIED_FILE).exists()

    key, attacker = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    grants = {
        key: {"classifications": ALL_CLASSIFICATIONS} | HONEST_GRANT,
        attacker: ALL_CLASSIFICATIONS,  # the service's default rate
    }
    serve_env = env | {"POLICYFRESH_API_KEYS": json.dumps(grants)}
    port = dev.free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "serve.log"
    process = start_serve(serve_env, port, log)
    try:
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_SECONDS) as client:
            first_health, ready_seconds = wait_healthy(client, process, log)
        rss_at_start = server_rss(process.pid)
        attacked = under_attack(url, key, attacker, questions, attack_seconds, process.pid)
        attacked["trace_lookups"] = trace_lookups(url, attacker, key, questions[0])
        if not attack_only:
            load = levels_under_load(url, key, questions, levels, seconds)
            refresh = refresh_under_load(
                url, key, questions, refresh_clients, env, policies, edit,
                workdir / "refresh.log", refresh_timeout,
            )  # fmt: skip
    except BaseException:
        print(f"server log ({log}), last lines:\n{dev.tail(log)}", file=sys.stderr)
        raise
    finally:
        dev.stop_dev(process)
    problems = server_log_problems(log)
    attacked["server_rss_mb"]["at_start"] = round(rss_at_start / 2**20, 1)
    figures = {
        "date": date,
        "machine": where,
        "corpus": str(corpus),
        "golden": str(golden),
        "questions": len(questions),
        "initial_build_seconds": round(build_seconds, 1),
        "initial_build": {
            "documents": built["documents"]["added"],
            "chunks": built["chunks"]["inserted"],
            "embedded": built["vectors"]["embedded"],
            "eval": built["eval"] and built["eval"]["verdict"],
            "release": built["release"]["served"],
            "onnx_export_present": exported,
        },
        "server": {
            "pid": process.pid,
            "ready_seconds": round(ready_seconds, 1),
            "health_at_start": first_health,
            "log_error_lines": problems[:20],
            "process_group_gone": not dev.group_alive(process.pid),
        },
        "client": "one thread and one httpx.Client per client, in one process beside the server",
        "under_attack": attacked,
    }
    if attack_only:
        return figures
    return figures | {
        "seconds_per_level": seconds,
        "load": load,
        "refresh_under_load": refresh,
        "cold_start": cold_start(env, edit.question, workdir / "empty-model-cache"),
        "in_process_search": in_process(settings, questions),
    }


def server_rss(pid: int) -> int:
    """The resident memory of process `pid`, in bytes (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


def hold_slow_sockets(port: int, count: int, stop: threading.Event) -> dict[str, int]:
    """Keep `count` connections open, sending one byte of a request's headers a second on each
    and never finishing; one the server closes is opened again. How many were opened and cut."""
    head = b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 4096
    sockets: dict[socket.socket, int] = {}
    opened = cut = failed = 0
    while not stop.is_set():
        while len(sockets) < count:
            try:
                sockets[socket.create_connection(("127.0.0.1", port), timeout=5)] = 0
                opened += 1
            except OSError:
                failed += 1
                break
        readable = select.select(list(sockets), [], [], 0)[0]
        for sock in list(sockets):
            try:
                if sock in readable and not sock.recv(65536):
                    raise ConnectionResetError
                sock.send(head[sockets[sock] : sockets[sock] + 1])
                sockets[sock] = (sockets[sock] + 1) % len(head)
            except OSError:
                cut += 1
                sock.close()
                del sockets[sock]
        stop.wait(1.0)
    for sock in sockets:
        sock.close()
    return {"opened": opened, "cut_by_server": cut, "connect_failures": failed}


def flood(url: str, key: str, questions: list[str], stop: threading.Event) -> Counter[str]:
    """POST questions with `key` as fast as one connection can; the answers by status."""
    codes: Counter[str] = Counter()
    with httpx.Client(base_url=url, headers=auth(key), timeout=60) as c:
        turn = 0
        while not stop.is_set():
            body = {"question": questions[turn % len(questions)], "k": K, "caller": "flood"}
            turn += 1
            try:
                codes[str(c.post("/search", json=body).status_code)] += 1
            except httpx.HTTPError as exc:
                codes[type(exc).__name__] += 1
    return codes


def attack(url: str, key: str, questions: list[str], seconds: float, out: Any) -> None:
    """The attacker, in a process of its own (so that it takes no time from the honest
    clients' threads): slow sockets and a flood for `seconds`; its figures go to `out`."""
    stop = threading.Event()
    port = int(url.rsplit(":", 1)[1])
    with ThreadPoolExecutor(FLOOD_THREADS + 1) as pool:
        holder = pool.submit(hold_slow_sockets, port, SLOW_SOCKETS, stop)
        floods = [pool.submit(flood, url, key, questions, stop) for _ in range(FLOOD_THREADS)]
        time.sleep(seconds)
        stop.set()
        codes = sum((f.result() for f in floods), Counter())
        out.put({"flood": dict(codes), "flood_requests": sum(codes.values()),
                 "slow_sockets": holder.result()})  # fmt: skip


def under_attack(
    url: str, honest: str, attacker: str, questions: list[str], seconds: float, pid: int
) -> dict[str, Any]:
    """16 honest clients for `seconds` alone, then as long again under attack; the server's
    RSS before, every `RSS_EVERY_SECONDS` during, and after."""
    quiet = Load(url, honest, questions, HONEST_CLIENTS)
    quiet.start(seconds)
    baseline = summarize(quiet.wait(), quiet.ended - quiet.started)
    rss_before = server_rss(pid)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    attacker_process = context.Process(
        target=attack, args=(url, attacker, questions, seconds, results)
    )
    attacker_process.start()
    load = Load(url, honest, questions, HONEST_CLIENTS)
    load.start(seconds)
    started = time.monotonic()
    rss: list[dict[str, float]] = []
    health_ms: list[float | None] = []  # None: /health did not answer 200
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_SECONDS) as client:
        while time.monotonic() - started < seconds:
            asked = time.monotonic()
            healthy = health(client) is not None
            health_ms.append((time.monotonic() - asked) * 1000 if healthy else None)
            rss.append({"second": round(asked - started), "rss_mb": server_rss(pid) / 2**20})
            time.sleep(max(0.0, RSS_EVERY_SECONDS - (time.monotonic() - asked)))
    attacked = summarize(load.wait(), load.ended - load.started)
    attacker_figures = results.get(timeout=REQUEST_TIMEOUT_SECONDS + seconds)
    attacker_process.join(timeout=60)
    rss_after = server_rss(pid)
    attacked_p95, quiet_p95 = attacked["p95_ms"], baseline["p95_ms"]
    return {
        "seconds_each": seconds,
        "honest_clients": HONEST_CLIENTS,
        "without_attack": baseline,
        "under_attack": attacked,
        "p50_ratio": round(attacked["p50_ms"] / baseline["p50_ms"], 2),
        "p95_ratio": round(attacked_p95 / quiet_p95, 2) if attacked_p95 and quiet_p95 else None,
        "attacker": attacker_figures
        | {"slow_sockets_held": SLOW_SOCKETS, "flood_threads": FLOOD_THREADS},
        "health_during_attack": {
            "asked": len(health_ms),
            "answered": len(answered := [ms for ms in health_ms if ms is not None]),
            "max_ms": round(max(answered), 1) if answered else None,
        },
        "server_rss_mb": {
            "before_attack": round(rss_before / 2**20, 1),
            "after_attack": round(rss_after / 2**20, 1),
            "during": [{**r, "rss_mb": round(r["rss_mb"], 1)} for r in rss],
        },
    }


def trace_lookups(url: str, owner: str, other: str, question: str) -> dict[str, Any]:
    """Time `other` asking for `owner`'s trace against an unknown id, interleaved
    `TRACE_LOOKUPS` times: both must be one 404 taking the same time."""
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_SECONDS) as client:
        made = client.post(
            "/search", json={"question": question, "k": 5}, headers=auth(owner)
        ).json()
        times: dict[str, list[float]] = {"another_keys": [], "unknown": []}
        codes: Counter[str] = Counter()
        for _ in range(TRACE_LOOKUPS):
            for name, trace_id in (
                ("another_keys", made["trace_id"]),
                ("unknown", uuid.uuid4().hex),
            ):
                started = time.perf_counter()
                codes[str(client.get(f"/traces/{trace_id}", headers=auth(other)).status_code)] += 1
                times[name].append((time.perf_counter() - started) * 1000)
    medians = {name: round(statistics.median(ms), 2) for name, ms in times.items()}
    return {
        "lookups_each": TRACE_LOOKUPS,
        "status_codes": dict(codes),
        "median_ms": medians,
        "difference_ms": round(medians["another_keys"] - medians["unknown"], 2),
    }


def cell(value: Any) -> str:
    return "-" if value is None else str(value)


def attack_report(attacked: dict[str, Any]) -> list[str]:
    """Lines for people: the honest clients with and without the attack, the attacker, RSS."""
    quiet, loud, rss = (
        attacked["without_attack"],
        attacked["under_attack"],
        attacked["server_rss_mb"],
    )
    during = [r["rss_mb"] for r in rss["during"]]
    lookups = attacked["trace_lookups"]
    return [
        f"{attacked['honest_clients']} honest clients, {attacked['seconds_each']:g} s each",
        f"  without attack: p50 {quiet['p50_ms']} ms, p95 {quiet['p95_ms']} ms, "
        f"{quiet['requests_per_second']} req/s, codes {quiet['status_codes']}",
        f"  under attack:   p50 {loud['p50_ms']} ms, p95 {loud['p95_ms']} ms, "
        f"{loud['requests_per_second']} req/s, codes {loud['status_codes']}",
        f"  p50 x{attacked['p50_ratio']}, p95 x{attacked['p95_ratio']} (target: p95 within 1.5x)",
        f"  attacker: flood {attacked['attacker']['flood']}, slow sockets "
        f"{attacked['attacker']['slow_sockets']}; /health {attacked['health_during_attack']}",
        f"  server RSS MB: start {rss['at_start']}, before attack {rss['before_attack']}, "
        f"during {min(during, default=None)}-{max(during, default=None)}, "
        f"after {rss['after_attack']}",
        f"another key's trace against an unknown one ({lookups['lookups_each']} each): median "
        f"{lookups['median_ms']} ms, difference {lookups['difference_ms']} ms, "
        f"codes {lookups['status_codes']}",
    ]


def report(figures: dict[str, Any]) -> str:
    """A table for people: each load, the refresh under load, the cold starts, the attack."""
    lines = [f"initial build: {figures['initial_build_seconds']} s", "", "under attack"]
    lines += attack_report(figures["under_attack"])
    if "load" not in figures:  # --attack-only
        return "\n".join(lines)
    head = f"{'clients':>8} {'requests':>9} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} "
    head += f"{'p99 ms':>8} {'errors':>7} {'mixed':>6}"
    lines += ["", "load", head]

    def row(label: str, f: dict[str, Any]) -> str:
        widths = {"requests": 9, "requests_per_second": 7, "p50_ms": 8, "p95_ms": 8, "p99_ms": 8}
        cells = [f"{label:>8}", *(f"{cell(f[k]):>{w}}" for k, w in widths.items())]
        return " ".join([*cells, f"{f['errors']:>7}", f"{f['mixed']:>6}"])

    lines += [row(level, f) for level, f in figures["load"].items()]
    refresh = figures["refresh_under_load"]
    lines += [
        "",
        f"refresh under load ({refresh['clients']} clients, {refresh['edit']['page']})",
        head,
        row(str(refresh["clients"]), refresh),
        f"  releases seen (responses): {refresh['releases_seen']}; problem: {refresh['problem']}",
        f"  edit -> run end {cell(refresh['edit_to_run_end_seconds'])} s, -> /health new "
        f"{cell(refresh['edit_to_health_new_seconds'])} s, -> first new response "
        f"{cell(refresh['edit_to_first_new_response_seconds'])} s; run end -> first new "
        f"response {cell(refresh['run_end_to_first_new_response_seconds'])} s",
        f"  old release after new: {refresh['old_release_after_new']}; edit's question: "
        f"{refresh['edit_question_answers']}",
    ]
    cold = figures["cold_start"]
    onnx, fallback = cold["onnx"], cold["torch_fallback"]
    local = figures["in_process_search"]
    lines += [
        "",
        f"`policyfresh search` cold, ONNX: median {onnx['median_answer_seconds']} s to the answer, "
        f"{onnx['median_exit_seconds']} s to exit ({COLD_RUNS} runs); imported {onnx['imported']}",
        f"`policyfresh search` cold, torch fallback (empty model cache): "
        f"{fallback['answer_seconds']} s to the answer, {fallback['exit_seconds']} s to exit",
        f"in-process search_many p50: torch {(local['torch'] or {}).get('p50_ms')} ms, "
        f"onnx {(local['onnx'] or {}).get('p50_ms')} ms",
    ]
    return "\n".join(lines)


def client_levels(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=dev.DEFAULT_CORPUS)
    parser.add_argument("--golden", type=Path, default=dev.HANDBOOK_GOLDEN)
    parser.add_argument("--seconds", type=float, default=30.0, help="per concurrency level")
    parser.add_argument("--clients", type=client_levels, default=list(CLIENT_LEVELS))
    parser.add_argument("--refresh-clients", type=int, default=16)
    parser.add_argument("--refresh-timeout", type=float, default=900.0, help="seconds")
    parser.add_argument("--out", type=Path, help=f"default {DEFAULT_OUT} ({ATTACK_OUT} alone)")
    parser.add_argument(
        "--attack-seconds",
        type=float,
        default=300.0,
        help="the honest clients' run without and then with the attack, each",
    )
    parser.add_argument(
        "--attack-only",
        action="store_true",
        help="measure only the honest clients with and without the attack",
    )
    args = parser.parse_args()
    out = args.out or (ATTACK_OUT if args.attack_only else DEFAULT_OUT)
    workdir = Path(tempfile.mkdtemp(prefix="policyfresh-serve-"))
    try:
        figures = measure(
            args.corpus.resolve(), args.golden.resolve(), workdir, args.seconds, args.clients,
            args.refresh_clients, args.refresh_timeout, args.attack_seconds, args.attack_only,
        )  # fmt: skip
    except dev.BenchmarkError as exc:
        print(f"serve: error: {exc}\n(work folder kept: {workdir})", file=sys.stderr)
        return 1
    shutil.rmtree(workdir)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(json.dumps(figures, indent=2, default=str))
    print(report(figures))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
