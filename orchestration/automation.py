"""Declarative automation: when a downstream asset follows its upstream, and the sensor that
evaluates it, running from the start."""

import os

import dagster as dg

# How often the sensors look, in seconds. Dagster's sensor daemon loops every 5 s at most, so
# less than 5 has no effect.
INTERVAL_SECONDS = int(os.environ.get("POLICYFRESH_SENSOR_INTERVAL", "5"))

# An upstream update made by a run. `stale_embeddings_sensor` confirms `served_index` for its
# freshness policy with a materialization no run made: nothing downstream changed with it.
DEPS_UPDATED_BY_A_RUN = dg.AutomationCondition.any_deps_match(
    (
        dg.AutomationCondition.newly_updated()
        & dg.AutomationCondition.any_new_update_has_run_tags()
        & ~dg.AutomationCondition.executed_with_root_target()
    )
    | dg.AutomationCondition.will_be_requested()
).with_label("any_deps_updated_by_a_run")

# `eager()` alone would materialize past an upstream blocking check that failed in an
# earlier run: a failed check keeps what it guards from flowing on.
FOLLOWS_UPSTREAM = (
    dg.AutomationCondition.eager().replace("any_deps_updated", DEPS_UPDATED_BY_A_RUN)
    & dg.AutomationCondition.all_deps_blocking_checks_passed()
).with_label("eager after runs, upstream blocking checks passed")

automation_sensor = dg.AutomationConditionSensorDefinition(
    "policyfresh_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=INTERVAL_SECONDS * 2,
    description="Evaluates every asset's automation condition: what follows an update.",
)
