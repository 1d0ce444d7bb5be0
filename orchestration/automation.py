"""Declarative automation: when a downstream asset follows its upstream, and the sensor that
evaluates it, running from the start."""

import os

import dagster as dg

# How often the sensors look, in seconds. Dagster's sensor daemon loops every 5 s at most, so
# less than 5 has no effect.
INTERVAL_SECONDS = int(os.environ.get("RAGFRESH_SENSOR_INTERVAL", "5"))

# `eager()` alone would materialize past an upstream blocking check that failed in an
# earlier run: a failed check keeps what it guards from flowing on.
FOLLOWS_UPSTREAM = (
    dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
).with_label("eager, upstream blocking checks passed")

automation_sensor = dg.AutomationConditionSensorDefinition(
    "ragfresh_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=INTERVAL_SECONDS * 2,
    description="Evaluates every asset's automation condition: what follows an update.",
)
