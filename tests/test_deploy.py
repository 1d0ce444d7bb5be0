"""deploy/: a deployment's Dagster instance is policyfresh's own instance with its storage on
Postgres (tests/test_dev.py runs it on a real Postgres)."""

from __future__ import annotations

import yaml

from orchestration.runner import INSTANCE_CONFIG
from tests.conftest import REPO

DEPLOYED = ("storage",)


def test_the_deployed_instance_keeps_the_single_machine_queue_pools_and_logs():
    deployed = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())

    assert {k: v for k, v in deployed.items() if k not in DEPLOYED} == yaml.safe_load(
        INSTANCE_CONFIG
    )
    assert list(deployed["storage"]) == ["postgres"]
    # One slot for every pool the instance has not been told otherwise about: lancedb_writer.
    assert deployed["concurrency"]["pools"]["default_limit"] == 1
