"""The publishing step: first forget vector history that holds text a tightened PII rule now
redacts, then publish the evaluated candidate if the gate allows."""

from __future__ import annotations

from policyfresh.release.releases import PublishResult, publish_candidate
from policyfresh.release.vector_history import forget_raw_pii
from policyfresh.store.config import Settings
from policyfresh.store.locks import writer_lock
from policyfresh.store.tables import VECTORS


def publish(settings: Settings, actor: str) -> PublishResult:
    """Forget raw PII in the vector history (which serves the latest version at once, as an
    erasure, and removes the evaluated one's files), or else publish the candidate."""
    with writer_lock(settings, VECTORS):
        forgotten = forget_raw_pii(settings, actor)
    if forgotten is None:
        return publish_candidate(settings, actor)
    served = forgotten.republished_release
    return PublishResult(
        published=served is not None,
        release=served,
        candidate=None,
        verdict=None,
        message=f"PII rules tightened: {len(forgotten.releases_dropped)} releases and every older"
        " vector version removed; "
        + (f"release {served} published as an erasure" if served is not None else "nothing served"),
    )
