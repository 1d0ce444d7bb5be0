"""Run the refresh job in-process against the persistent Dagster instance under the home."""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from policyfresh.store.config import Settings
from policyfresh.store.errors import PolicyfreshError


class RunFailedError(PolicyfreshError):
    """A step of the refresh raised: bad configuration, an empty folder, a storage error."""


WRITTEN_BY_US = "# Written by policyfresh."
INSTANCE_CONFIG = f"""\
{WRITTEN_BY_US} One writer per vector table: pools default to a limit of 1; runs that the
# sensors request wait in the queue for the one before them, which is looked at every second.
telemetry:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
run_launcher:  # each run forks from the warm run worker of `policyfresh dev`, if one is up
  module: orchestration.warm_launcher
  class: WarmRunLauncher
run_monitoring:  # a run whose warm child died is failed within seconds
  enabled: true
  poll_interval_seconds: 5
  max_resume_run_attempts: 0
concurrency:
  pools:
    default_limit: 1
  runs:
    max_concurrent_runs: 1
python_logs:
  managed_python_loggers: [policyfresh]
  python_log_level: INFO
"""


def prepare_instance(settings: Settings) -> dg.DagsterInstance:
    """Point DAGSTER_HOME at the state home, writing its dagster.yaml unless someone else did."""
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    config = settings.dagster_home / "dagster.yaml"
    ours = not config.exists() or config.read_text().startswith(WRITTEN_BY_US)
    if ours and (not config.exists() or config.read_text() != INSTANCE_CONFIG):
        config.write_text(INSTANCE_CONFIG)
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    return dg.DagsterInstance.get()


def export_settings(settings: Settings) -> None:
    """Hand the resolved locations to the code location, which reads them from the
    environment (in this process, or in the `dagster dev` processes started from it)."""
    os.environ["POLICYFRESH_HOME"] = str(settings.home)
    os.environ["POLICYFRESH_POLICIES"] = str(settings.policies)
    os.environ["POLICYFRESH_GOLDEN_CASES"] = str(settings.golden_cases or "none")
    os.environ["POLICYFRESH_ALLOW_MASS_DELETE"] = "1" if settings.allow_mass_delete else "0"


def _value(entry: Any) -> Any:
    return getattr(entry, "value", entry)


def _outcome(check: dg.AssetCheckEvaluation) -> str:
    """passed; warned (a held document, freshness at risk); failed; blocked (it failed and
    stopped what follows it in the run)."""
    if check.passed:
        return "passed"
    if check.severity == dg.AssetCheckSeverity.WARN:
        return "warned"
    return "blocked" if check.blocking else "failed"


def run_refresh(settings: Settings) -> dict[str, Any]:
    """Materialize every asset once, recorded in the instance the UI reads; return metadata."""
    export_settings(settings)
    instance = prepare_instance(settings)
    from orchestration.definitions import defs

    job = defs.resolve_job_def("refresh_policies")
    result = job.execute_in_process(
        instance=instance, tags={"policyfresh/trigger": "cli"}, raise_on_error=False
    )
    for event in result.all_events:
        error = event.step_failure_data.error if event.is_step_failure else None
        # A failed blocking check is reported through `checks`; any other failure is an error.
        if error is not None and error.cls_name != "DagsterAssetCheckFailedError":
            cause = error.cause or error
            raise RunFailedError(f"step {event.step_key} failed: {cause.message.strip()}")
    checks = {
        f"{e.asset_key.to_user_string()}:{e.check_name}": _outcome(e)
        for e in result.get_asset_check_evaluations()
    }
    summary: dict[str, Any] = {"run": {"run_id": result.run_id}, "checks": checks}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        summary[materialization.asset_key.to_user_string()] = {
            key: _value(value) for key, value in materialization.metadata.items()
        }
    return summary
