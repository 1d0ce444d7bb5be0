"""A run launcher that hands each run to the warm run worker (`orchestration.warm_worker`),
which forks a child that has already imported everything; when no worker answers, the run is
launched as Dagster's default launcher does, and its events say so. Configured in dagster.yaml:

    run_launcher:
      module: orchestration.warm_launcher
      class: WarmRunLauncher

The worker runs on the machine of the daemon and the webserver (as under `policyfresh dev`):
termination and health checks reach its children by process id. Dagster exports no public API
for run launchers but `DefaultRunLauncher`: the launch context, health result and config data
types come from `dagster._core`, as in Dagster's own launcher packages.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import dagster as dg
from dagster._core.launcher.base import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._serdes import ConfigurableClassData

from orchestration.warm_socket import ask, socket_path

WARM_PID_TAG = "policyfresh/warm_run_pid"


class WarmRunLauncher(dg.DefaultRunLauncher):
    """Runs start in a child of the warm run worker; without one, in a new process."""

    def __init__(self, inst_data: ConfigurableClassData | None = None, socket: str | None = None):
        super().__init__(inst_data=inst_data)
        self._socket = socket

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"socket": dg.Field(dg.StringSource, is_required=False)}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> Self:
        return cls(inst_data=inst_data, socket=config_value.get("socket"))

    def socket(self) -> Path:
        """The worker's socket: configured, or in the instance's home."""
        return Path(self._socket) if self._socket else socket_path(self._instance.root_directory)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        try:
            reply = ask(self.socket(), {"run_id": run.run_id})
        except (OSError, ValueError) as exc:
            self._instance.report_engine_event(
                f"The warm run worker is not available at {self.socket()} ({exc}): the run "
                "starts in a new process, importing everything.",
                run,
            )
            super().launch_run(context)
            return
        self._instance.add_run_tags(run.run_id, {WARM_PID_TAG: str(reply["pid"])})
        self._instance.report_engine_event(
            f"Launched by the warm run worker {reply['worker_pid']} in its child process "
            f"{reply['pid']}.",
            run,
        )

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or WARM_PID_TAG not in run.tags:
            return super().terminate(run_id)
        if run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        try:
            os.kill(int(run.tags[WARM_PID_TAG]), signal.SIGINT)  # the run stops as on Ctrl-C
        except ProcessLookupError:
            return False
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        pid = run.tags.get(WARM_PID_TAG)
        if pid is None:  # its process belongs to the code server: left to Dagster's timeouts
            return CheckRunHealthResult(WorkerStatus.RUNNING, "launched in a new process")
        if _running(int(pid)):
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.FAILED, f"its warm run child {pid} is gone")


def _running(pid: int) -> bool:
    """The process exists and has not exited (a zombie waits for the worker to collect it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
