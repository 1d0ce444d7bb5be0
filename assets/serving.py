"""Serving stage: publish the evaluated candidate as the release search serves."""

from datetime import timedelta

import dagster as dg

from orchestration.automation import FOLLOWS_UPSTREAM
from orchestration.resources import EmbedderResource, PolicyfreshResource, stage_run
from policyfresh.quality.pipeline import STAGES
from policyfresh.release.releases import SERVED, release_status
from policyfresh.store.config import freshness_slo
from policyfresh.store.tables import RELEASES

OBJECTIVE = timedelta(seconds=freshness_slo())


STAGE = STAGES["served_index"]


@dg.asset(
    deps=STAGE.after,
    group_name="serving",
    owners=[RELEASES.owner],
    kinds={"lancedb", "deltalake"},
    tags={"pii": "redacted", "layer": "serving"},
    pool="lancedb_writer",
    automation_condition=FOLLOWS_UPSTREAM,
    # Materialized by a publication, or confirmed current by `stale_embeddings_sensor`.
    freshness_policy=dg.FreshnessPolicy.time_window(
        fail_window=OBJECTIVE, warn_window=OBJECTIVE / 2
    ),
)
def served_index(
    context: dg.AssetExecutionContext, policyfresh: PolicyfreshResource, embedder: EmbedderResource
):
    """Point the `served` tag at the candidate that passed its evaluation (or that no golden
    case applies to); record who and why. A blocked candidate is never published: the
    previous release keeps serving and the materialization says why."""
    run = stage_run(context, policyfresh, embedder)
    settings, result = run.settings, STAGE.work(run)
    context.log.info("served_index: %s", result.message)
    status = release_status(settings)
    published = status["published"] or {}
    return dg.MaterializeResult(
        metadata={
            "published": result.published,
            "release": result.release,
            "verdict": published.get("verdict"),
            "message": result.message,
            "tag": SERVED,
            "release_status": dg.MetadataValue.json(status),
            "dagster/uri": settings.vectors_uri,
        }
    )
