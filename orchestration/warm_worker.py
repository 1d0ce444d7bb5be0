"""The warm run worker: one process per instance that imports Dagster, the definitions and the
heavy libraries once, then forks a fresh child for each run, so a run starts in a fraction of a
second instead of paying the imports. Started (and restarted) by `policyfresh dev`:

    python -m orchestration.warm_worker

A child is an ordinary run process: it executes the run as `dagster api execute_run` does, its
crash or leak ends with it, and it dies with the worker (the run then fails, by run monitoring).
The worker also loads the embedding model and the PII detector before it forks: loading their
weights starts no thread, so every child inherits them ready, and encodes exactly as a new
process would (tests/orchestration/test_warm_worker.py compares the vectors).
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import os
import resource
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestration.warm_socket import socket_path

log = logging.getLogger("policyfresh.warm_worker")

CANCEL_POLL_SECONDS = 1.0  # how often a run's child looks for a termination still unanswered

# Imported once in the worker, so no run imports them: torch and the model code, Presidio with
# spaCy, Great Expectations, the table libraries, and the code location itself.
PREIMPORTS = (
    "torch",
    "sentence_transformers",
    "presidio_analyzer",
    "spacy",
    "great_expectations",
    "lancedb",
    "deltalake",
    "polars",
    "dagster._cli.api",
    "orchestration.definitions",
    "orchestration.runner",
)
REAP_EVERY_SECONDS = 1.0
PR_SET_PDEATHSIG = 1


@dataclass
class _Children:
    """The worker's children still running (pid: run id, or "cli"), and how many it forked."""

    running: dict[int, str] = field(default_factory=dict)
    forked: int = 0


def resident_bytes() -> int:
    """This process's resident memory now (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def preload() -> None:
    """Import what runs need, load the default model and the PII detector and compile the Data
    Docs templates, before any fork and without running them (so no thread pool exists yet to
    be lost in a child)."""
    for module in PREIMPORTS:
        importlib.import_module(module)
    from policyfresh.index.embedding import Embedder
    from policyfresh.ingest.pii import load_detector
    from policyfresh.store.data_docs import compile_templates

    Embedder().load()
    load_detector()
    compile_templates()


def serve(dagster_home: Path) -> None:
    """Preload, then answer requests on the instance's socket until stopped."""
    started = time.perf_counter()
    preload()
    path = socket_path(dagster_home)
    path.unlink(missing_ok=True)  # a worker that died left its socket file behind
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    listener.settimeout(REAP_EVERY_SECONDS)
    seconds, resident = time.perf_counter() - started, resident_bytes() / 2**20
    print(f"warm run worker {os.getpid()} ready at {path} in {seconds:.1f} s, resident "
          f"{resident:.0f} MiB", file=sys.stderr, flush=True)  # fmt: skip
    children = _Children()
    while True:
        _reap(children)
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        with connection:
            connection.settimeout(None)
            with connection.makefile("rwb") as stream:
                message = json.loads(stream.readline() or b"{}")
                _answer(message, stream, listener, children)


def _answer(
    message: dict[str, Any], stream: Any, listener: socket.socket, children: _Children
) -> None:
    def send(reply: dict[str, Any]) -> None:
        stream.write(json.dumps(reply, default=str).encode() + b"\n")
        stream.flush()

    if "run_id" in message or "refresh" in message:
        pid = os.fork()
        if pid == 0:
            listener.close()
            _child(message, send)  # never returns
        children.running[pid] = message.get("run_id") or "cli"
        children.forked += 1
        if "run_id" in message:
            send({"pid": pid, "worker_pid": os.getpid()})
    else:
        send({"worker_pid": os.getpid(), "resident_bytes": resident_bytes(),
              "forked": children.forked, "running": children.running})  # fmt: skip


def _child(message: dict[str, Any], send: Any) -> None:
    """Run what was asked in this fresh child, then leave without the parent's exit handlers."""
    code = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        code = _execute_run(message["run_id"]) if "run_id" in message else _refresh(message, send)
    except BaseException as exc:
        log.error("warm run child %d failed: %s: %s", os.getpid(), type(exc).__name__, exc)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _execute_run(run_id: str) -> int:
    """Execute a launched run as `dagster api execute_run` does (its own event stream,
    cancellation by SIGINT), and record the child's peak memory in the run's events."""
    import dagster as dg
    from dagster._cli.api import _execute_run_command_body
    from dagster._utils.interrupts import capture_interrupts

    from orchestration.warm_launcher import WARM_PID_TAG

    with capture_interrupts(), dg.DagsterInstance.get() as instance:
        # Tagged before the run can report STARTED, which the launcher's own tag may follow
        # under load: a termination asked for as soon as it starts must find this child.
        instance.add_run_tags(run_id, {WARM_PID_TAG: str(os.getpid())})
        done = threading.Event()
        watcher = threading.Thread(
            target=interrupt_while_canceling, args=(instance.get_ref(), run_id, done), daemon=True
        )
        watcher.start()
        try:
            code = _execute_run_command_body(run_id, instance, lambda _: None, True)
        finally:
            done.set()
            watcher.join()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        run = instance.get_run_by_id(run_id)
        if run is not None:
            instance.report_engine_event(
                f"warm run child {os.getpid()} done: peak resident memory {peak / 2**20:.0f} MiB",
                run,
            )
        return code


def interrupt_while_canceling(instance_ref: Any, run_id: str, done: threading.Event) -> None:
    """Interrupt this process each second while its run is CANCELING, until `done`. Dagster
    raises a termination's interrupt wherever Python is, and one raised inside a finalizer
    (a thread pool's weakref callback, seen) is printed and lost: the run would run on. The
    thread has its own instance, as Dagster's cancellation thread does."""
    import dagster as dg

    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        while not done.wait(CANCEL_POLL_SECONDS):
            run = instance.get_run_by_id(run_id)
            if run is not None and run.status == dg.DagsterRunStatus.CANCELING:
                os.kill(os.getpid(), signal.SIGINT)


def _refresh(message: dict[str, Any], send: Any) -> int:
    """`policyfresh run` handed over: the refresh job in this child, its progress and summary
    sent back as JSON lines."""
    from dataclasses import replace

    from orchestration.runner import run_refresh
    from policyfresh.store.config import Settings
    from policyfresh.store.errors import PolicyfreshError
    from policyfresh.store.progress import listening

    asked = message["refresh"]
    send({"pid": os.getpid()})
    settings = Settings.load(home=asked["home"], policies=asked["policies"], golden=asked["golden"])
    settings = replace(settings, allow_mass_delete=asked["allow_mass_delete"])
    try:
        with listening(lambda what, done, total: send({"progress": [what, done, total]})):
            send({"result": run_refresh(settings)})
    except PolicyfreshError as exc:
        send({"error": str(exc)})
    return 0


def _reap(children: _Children) -> None:
    """Collect finished children; a run whose child was killed is failed, saying how."""
    while children.running:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        run_id = children.running.pop(pid, None)
        if run_id and run_id != "cli" and os.WIFSIGNALED(status):
            _fail_unfinished(run_id, f"its process {pid} was killed by signal "
                                     f"{signal.Signals(os.WTERMSIG(status)).name}")  # fmt: skip


def _fail_unfinished(run_id: str, why: str) -> None:
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            instance.report_run_failed(run, f"Run failed: {why} (warm run worker {os.getpid()})")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        sys.exit("warm run worker: DAGSTER_HOME is not set (start it with `policyfresh dev`)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(Path(home))


if __name__ == "__main__":
    main()
