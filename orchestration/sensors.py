"""Sensors that refresh the index with nobody clicking: a policy file changed
(`policy_source_sensor`); the vectors drifted from the chunks, the model or the freshness
objective (`stale_embeddings_sensor`). Both start running under `policyfresh dev`."""

from __future__ import annotations

import hashlib
import json
import time

import dagster as dg

from assets.freshness import FRESHNESS_CHECK, judge_freshness
from orchestration.automation import INTERVAL_SECONDS
from orchestration.jobs import refresh_policies, refresh_vectors
from orchestration.resources import EmbedderResource, PolicyfreshResource
from policyfresh.index.vectors import open_vectors, reconcile
from policyfresh.ingest.documents import ingested_tree
from policyfresh.ingest.sources import TreeState, tree_state, wait_until_quiet
from policyfresh.release.releases import release_status
from policyfresh.store import delta_store
from policyfresh.store.config import Settings
from policyfresh.store.freshness import freshness_summary
from policyfresh.store.tables import DOCUMENT_FRESHNESS, POLICY_CHUNKS

SETTLE_TIMEOUT = 30.0  # a sensor tick must answer within Dagster's 60 s
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def refresh_in_flight(instance: dg.DagsterInstance) -> str | None:
    """The id of a run still queued or running: it will see what changed, so wait for it."""
    runs = instance.get_run_records(filters=dg.RunsFilter(statuses=IN_FLIGHT), limit=1)
    return runs[0].dagster_run.run_id if runs else None


@dg.sensor(
    job=refresh_policies,
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def policy_source_sensor(
    context: dg.SensorEvaluationContext, policyfresh: PolicyfreshResource
) -> dg.SensorResult | dg.SkipReason:
    """Request one refresh when a policy file is added, changed or removed, once the folder
    has been quiet for `POLICYFRESH_SOURCE_QUIET`; a touched but unchanged file requests nothing.
    The cursor holds the tree last requested (stat, then a hash only where stat moved)."""
    settings = policyfresh.settings()
    cursor = json.loads(context.cursor) if context.cursor else {}
    baseline = TreeState.from_json(cursor["tree"]) if cursor else ingested_tree(settings)
    current = tree_state(settings.policies, baseline.files if baseline else None)
    if baseline and current.fingerprint == baseline.fingerprint:
        return dg.SensorResult(
            skip_reason=f"no change in {len(current.files)} files",
            cursor=json.dumps({**cursor, "tree": current.to_json()}),  # keeps the new mtimes
        )
    running = refresh_in_flight(context.instance)
    if running:
        return dg.SkipReason(f"policies changed; waiting for run {running} to finish")
    settled = wait_until_quiet(
        settings.policies, current.files, settings.source_quiet_seconds, SETTLE_TIMEOUT
    )
    if settled is None:
        return dg.SkipReason(f"policies still changing after {SETTLE_TIMEOUT:.0f} s")
    changes = settled.changes_since(baseline)
    summary = ", ".join(f"{len(paths)} {kind}" for kind, paths in changes.items() if paths)
    requests = cursor.get("requests", 0) + 1
    context.log.info("policies changed (%s): %s", summary, changes)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"{settled.fingerprint}-{requests}",
                tags={
                    "policyfresh/trigger": "policy_source_sensor",
                    "policyfresh/changes": summary,
                },
            )
        ],
        cursor=json.dumps({"tree": settled.to_json(), "requests": requests}),
    )


def _drift(
    settings: Settings, embedder: EmbedderResource, late: list[str]
) -> tuple[list[str], str]:
    """Why the served index is behind (empty if it is not), and a key for this state."""
    model_id = embedder.embedder().model_id  # hashes the model files; loads no weights
    counts = reconcile(settings, model_id)
    reasons = [f"{n} {kind.replace('_', ' ')} vectors" for kind, n in counts.items() if n]
    if late:
        reasons.append(f"{len(late)} documents not served within the objective: {late[:5]}")
    chunks = delta_store.open_table(settings.table_uri(POLICY_CHUNKS.name))
    vectors = open_vectors(settings)
    state = [
        counts, model_id, late,
        chunks.version() if chunks else None,
        vectors.version if vectors else None,
    ]  # fmt: skip
    return reasons, _key(state)


def _key(state: object) -> str:
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()[:16]


@dg.sensor(
    job=refresh_vectors,
    minimum_interval_seconds=INTERVAL_SECONDS * 6,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def stale_embeddings_sensor(
    context: dg.SensorEvaluationContext,
    policyfresh: PolicyfreshResource,
    embedder: EmbedderResource,
) -> dg.SensorResult | dg.SkipReason:
    """Request a vectors refresh (and so an evaluation) when vectors are missing, stale,
    orphaned, duplicated or from another model, or a document waits past the freshness
    objective. It reports the freshness check itself whenever a waiting document changes
    state (time passing needs no run), and while all is current it confirms `served_index`
    fresh for its freshness policy."""
    running = refresh_in_flight(context.instance)
    if running:
        return dg.SkipReason(f"run {running} in flight: reconciled after it")
    settings = policyfresh.settings()
    cursor = json.loads(context.cursor or "{}")
    waiting = freshness_summary(settings)["waiting"]
    late = [w["doc_id"] for w in waiting if w["state"] == "late"]
    reasons, key = _drift(settings, embedder, late)
    requests = []
    if reasons:
        context.log.info("stale index: %s", "; ".join(reasons))
        requests.append(
            dg.RunRequest(
                run_key=f"stale-{key}",
                tags={
                    "policyfresh/trigger": "stale_embeddings_sensor",
                    "policyfresh/reason": "; ".join(reasons)[:200],
                },
            )
        )
    judged = _key([(w["doc_id"], w["doc_version"], w["state"]) for w in waiting])
    events: list[dg.AssetCheckEvaluation | dg.AssetMaterialization] = []
    if judged != cursor.get("freshness"):  # time moved a waiting document to another state
        events.append(
            dg.AssetCheckEvaluation(
                asset_key=dg.AssetKey(DOCUMENT_FRESHNESS.name),
                check_name=FRESHNESS_CHECK,
                **judge_freshness(settings),
            )
        )
    cursor = json.dumps({"freshness": judged})
    if requests:
        return dg.SensorResult(run_requests=requests, asset_events=events, cursor=cursor)
    return dg.SensorResult(
        skip_reason="vectors match the current chunks and model; nothing waits",
        asset_events=events + _confirm_served(context, settings),
        cursor=cursor,
    )


def _confirm_served(
    context: dg.SensorEvaluationContext, settings: Settings
) -> list[dg.AssetMaterialization]:
    """A materialization of `served_index` saying the served release is still current, once
    the last one is older than half the objective: its freshness policy judges time since
    the last materialization, and a quiet corpus is not a stale index."""
    last = context.instance.get_latest_materialization_event(dg.AssetKey("served_index"))
    status = release_status(settings)
    if status["waiting"] or status["published"] is None:
        return []
    if last and time.time() - last.timestamp < (settings.freshness_slo / 2):
        return []
    release = status["published"]["release"]
    return [
        dg.AssetMaterialization(
            "served_index",
            description=f"release {release} confirmed current: nothing to publish",
            metadata={"release": release, "confirmed_by": "stale_embeddings_sensor"},
        )
    ]
