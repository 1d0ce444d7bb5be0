"""Releases: what search serves. A release is an evaluated LanceDB version of `policy_vectors`,
kept by a tag (`release-<n>`) that cleanup never removes; the tag `served` points at the one
search reads. Every change of `served` is recorded in `release_audit`."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import lance
import polars as pl

from policyfresh.index.vectors import open_vectors
from policyfresh.store import delta_store
from policyfresh.store.config import Settings
from policyfresh.store.errors import PolicyfreshError
from policyfresh.store.freshness import record_published
from policyfresh.store.locks import writer_lock
from policyfresh.store.tables import EVAL_RUNS, RELEASE_AUDIT, RELEASES, VECTORS, empty_frame

if TYPE_CHECKING:
    import lancedb

log = logging.getLogger(__name__)

SERVED = "served"
SERVABLE = ("passed", "unevaluated")


class ReleaseError(PolicyfreshError):
    """A release that does not exist or cannot be served."""


def release_tag(release: int) -> str:
    return f"release-{release}"


def served_release(table: lancedb.table.Table | lance.LanceDataset | None) -> int | None:
    """The release `served` points at, or None before the first publication."""
    if table is None:
        return None
    tags = table.tags.list()
    return tags[SERVED]["version"] if SERVED in tags else None


def read_releases(settings: Settings) -> pl.DataFrame:
    uri = settings.table_uri(RELEASES.name)
    return delta_store.read_table(uri, RELEASES.schema).sort("release")


def read_audit(settings: Settings) -> pl.DataFrame:
    uri = settings.table_uri(RELEASE_AUDIT.name)
    return delta_store.read_table(uri, RELEASE_AUDIT.schema).sort("at")


def latest_eval(settings: Settings, candidate: int | None = None) -> dict[str, Any] | None:
    """The newest evaluation run (of one candidate version, if given)."""
    runs = delta_store.read_table(settings.table_uri(EVAL_RUNS.name), EVAL_RUNS.schema)
    if candidate is not None:
        runs = runs.filter(pl.col("candidate_version") == candidate)
    return runs.sort("evaluated_at").row(-1, named=True) if runs.height else None


def record_candidate(settings: Settings, evaluation: dict[str, Any], run_id: str) -> None:
    """Record a candidate's verdict under its release id (its index version)."""
    uri = settings.table_uri(RELEASES.name)
    known = read_releases(settings).filter(pl.col("release") == evaluation["candidate_version"])
    row = {
        "release": evaluation["candidate_version"],
        "created_at": evaluation["evaluated_at"],
        "published_at": known["published_at"][0] if known.height else None,
        **{k: evaluation[k] for k in ("documents_version", "chunks_version", "model_id")},
        **{k: evaluation[k] for k in ("golden_sha256", "eval_run_id", "verdict", "reasons")},
    }
    frame = pl.DataFrame([row], schema=empty_frame(RELEASES).schema)
    delta_store.merge(RELEASES, uri, frame, run_id, delta_store.upsert)


def _audit(settings: Settings, action: str, release: int, previous: int | None, actor: str,
           reason: str) -> None:  # fmt: skip
    event = {
        "event_id": uuid.uuid4().hex,
        "at": datetime.now(tz=UTC),
        "action": action,
        "release": release,
        "previous_release": previous,
        "actor": actor,
        "reason": reason,
    }
    frame = pl.DataFrame([event], schema=empty_frame(RELEASE_AUDIT).schema)
    delta_store.append(RELEASE_AUDIT, settings.table_uri(RELEASE_AUDIT.name), frame, actor)


def _serve(settings: Settings, table: lancedb.table.Table, release: int) -> int | None:
    """Tag the release (kept by cleanup) and point `served` at it; return the one it replaces."""
    tags = table.tags.list()
    if release_tag(release) not in tags:
        table.tags.create(release_tag(release), release)
    previous = tags[SERVED]["version"] if SERVED in tags else None
    if previous is None:
        table.tags.create(SERVED, release)
    elif previous != release:
        table.tags.update(SERVED, release)
    return previous


@dataclass(frozen=True)
class PublishResult:
    published: bool
    release: int | None
    candidate: int | None
    verdict: str | None
    message: str


def publish_candidate(settings: Settings, actor: str) -> PublishResult:
    """Publish the newest evaluated candidate if its verdict allows, it is not already served,
    and no one rolled back from it; otherwise say why the served release stays."""
    with writer_lock(settings, VECTORS):
        table = open_vectors(settings)
        served = served_release(table)
        evaluation = latest_eval(settings)
        if table is None or evaluation is None:
            return PublishResult(False, served, None, None, "nothing evaluated yet")
        candidate, verdict = evaluation["candidate_version"], evaluation["verdict"]
        reason = f"evaluation {evaluation['eval_run_id']} {verdict}"
        if candidate == served:
            _finish_publication(settings, table, served, actor, reason)
            return PublishResult(False, served, candidate, verdict, f"release {served} is served")
        if verdict not in SERVABLE:
            return PublishResult(
                False, served, candidate, verdict,
                f"candidate {candidate} blocked; "
                + (f"release {served} keeps serving" if served is not None else "nothing served"),
            )  # fmt: skip
        if candidate in rolled_back_from(settings):
            return PublishResult(
                False, served, candidate, verdict,
                f"candidate {candidate} was rolled back; `policyfresh rollback --to {candidate}` "
                "serves it again",
            )  # fmt: skip
        row = read_releases(settings).filter(pl.col("release") == candidate)
        if row.height and row["published_at"][0] is None:
            now = datetime.now(tz=UTC)
            frame = row.with_columns(published_at=pl.lit(now, dtype=row.schema["published_at"]))
            delta_store.merge(
                RELEASES, settings.table_uri(RELEASES.name), frame, actor,
                lambda m: m.when_matched_update_all(),
            )  # fmt: skip
        previous = _serve(settings, table, candidate)
        _audit(settings, "publish", candidate, previous, actor, reason)
        record_published(settings, candidate, run_id=actor)
        log.info("published release %d (%s)", candidate, reason)
        return PublishResult(True, candidate, candidate, verdict, f"published release {candidate}")


def _finish_publication(
    settings: Settings, table: lancedb.table.Table, release: int, actor: str, reason: str
) -> None:
    """Record what a publication killed after its tag move left unrecorded: the audit event
    and, while no newer index version exists, the versions it serves in document freshness."""
    audit = read_audit(settings)
    recorded = audit["release"][-1] if audit.height else None
    if recorded != release:
        log.warning("release %d is served without its audit event: recording it", release)
        _audit(settings, "publish", release, recorded, actor, reason)
    if release == table.version:
        record_published(settings, release, run_id=actor)


def publish_erasure(
    settings: Settings, table: lancedb.table.Table, release: int, actor: str
) -> int:
    """Serve `release`, the index without an erased document, at once and unevaluated: an
    erasure cannot wait for the gate. Call under the vector writer lock."""
    served = served_release(table)
    before = read_releases(settings).filter(pl.col("release") == served)
    now = datetime.now(tz=UTC)
    row = {
        "release": release,
        "created_at": now,
        "published_at": now,
        "model_id": before["model_id"][0] if before.height else None,
        "verdict": "unevaluated",
        "reasons": [f"re-published without an erased document ({actor})"],
    }
    frame = pl.DataFrame([row], schema=empty_frame(RELEASES).schema)
    delta_store.merge(RELEASES, settings.table_uri(RELEASES.name), frame, actor, delta_store.upsert)
    previous = _serve(settings, table, release)
    _audit(settings, "publish", release, previous, actor, "erasure")
    record_published(settings, release, run_id=actor)
    return release


def rolled_back_from(settings: Settings) -> set[int]:
    """Releases someone rolled back from and has not served again since."""
    audit = read_audit(settings)
    held: set[int] = set()
    for event in audit.iter_rows(named=True):
        if event["action"] == "rollback" and event["previous_release"] is not None:
            held.add(event["previous_release"])
        held.discard(event["release"])
    return held


def rollback(settings: Settings, to: int | None, actor: str, reason: str) -> dict[str, Any]:
    """Serve an earlier release again (by default the one served before the current one)."""
    with writer_lock(settings, VECTORS):
        table = open_vectors(settings)
        served = served_release(table)
        if table is None or served is None:
            raise ReleaseError("no release is published: nothing to roll back")
        audit = read_audit(settings)
        if to is None:
            before = audit.filter(pl.col("release") == served)["previous_release"].drop_nulls()
            if before.is_empty():
                raise ReleaseError(f"release {served} is the first published: nothing before it")
            to = int(before[-1])
        releases = read_releases(settings).filter(pl.col("release") == to)
        if releases.is_empty() or releases["published_at"][0] is None:
            raise ReleaseError(f"release {to} was never published; see `policyfresh releases`")
        if release_tag(to) not in table.tags.list():
            raise ReleaseError(f"release {to} is no longer kept in {settings.vectors_uri}")
        if to == served:
            raise ReleaseError(f"release {to} is already served")
        _serve(settings, table, to)
        _audit(settings, "rollback", to, served, actor, reason)
        log.warning("rolled back from release %d to %d by %s: %s", served, to, actor, reason)
        return {"release": to, "previous_release": served, "actor": actor, "reason": reason,
                "model_id": releases["model_id"][0]}  # fmt: skip


def release_status(settings: Settings) -> dict[str, Any]:
    """The published release and the newest index version, and what waits between them."""
    table = open_vectors(settings)
    served = served_release(table)
    releases = read_releases(settings)
    now = datetime.now(tz=UTC)

    def describe(release: int | None) -> dict[str, Any] | None:
        if release is None:
            return None
        row = releases.filter(pl.col("release") == release)
        info = row.row(0, named=True) if row.height else {}
        published = info.get("published_at")
        return {
            "release": release,
            "index_version": release,
            "verdict": info.get("verdict", "not evaluated"),
            "published_at": published.isoformat() if published else None,
            "age_seconds": round((now - published).total_seconds()) if published else None,
            "model_id": info.get("model_id"),
            "reasons": info.get("reasons") or [],
        }

    latest = table.version if table is not None else None
    waiting = None
    if latest is not None and latest != served:
        candidate = describe(latest)
        waiting = {
            **candidate,
            "why": "rolled back" if latest in rolled_back_from(settings) else (
                "blocked by the evaluation" if candidate["verdict"] == "blocked"
                else "not evaluated yet" if candidate["verdict"] == "not evaluated"
                else "not published yet"
            ),
        }  # fmt: skip
    return {"published": describe(served), "latest": describe(latest), "waiting": waiting}
