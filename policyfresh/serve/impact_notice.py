"""The optional notice of a publication's impact: a JSON summary POSTed to
`POLICYFRESH_IMPACT_WEBHOOK`, retried with exponential backoff. It carries counts, document ids
and owners only: no question and no text leaves with it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import polars as pl

from policyfresh.serve.impact import Impact, Publication, Recorded, record_impact
from policyfresh.store.config import Settings

log = logging.getLogger(__name__)

ATTEMPTS = 4
BACKOFF_SECONDS = 0.5  # then 1 s, 2 s: about 4 s in all before giving up
TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Delivery:
    """How the notice of one publication went."""

    event_id: str
    release: int
    delivered: bool
    attempts: int
    problem: str | None  # the last failure, when not delivered


def summary(publication: Publication, found: Impact) -> dict[str, Any]:
    """What the notice says: the publication, each document with newly affected answers and
    their count, and the totals."""
    documents = [
        {"doc_id": d.doc_id, "change": d.change, "owners": d.owners,
         "new_answers": d.new_answers, "answers": d.answers}
        for d in found.documents
        if d.new_answers
    ]  # fmt: skip
    totals = found.totals()
    return {
        "event_id": publication.event_id,
        "action": publication.action,
        "published_at": publication.at.isoformat(),
        "release": publication.release,
        "previous_release": publication.previous_release,
        "documents": documents,
        "totals": {k: totals[k] for k in ("new_answers", "answers", "hits", "documents")},
    }


def notify(
    url: str, payload: dict[str, Any], attempts: int = ATTEMPTS, backoff: float = BACKOFF_SECONDS
) -> Delivery:
    """POST the payload until a 2xx answer, waiting `backoff`, then twice as long, between
    tries; a 4xx other than 429 is not tried again. Failures are logged with the URL's host
    only: the rest of it may hold a token."""
    host = urlsplit(url).hostname
    problem = None
    for attempt in range(1, attempts + 1):
        try:
            response = httpx.post(url, json=payload, timeout=TIMEOUT_SECONDS)
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__} from {host}"
        else:
            if response.is_success:
                return Delivery(payload["event_id"], payload["release"], True, attempt, None)
            problem = f"HTTP {response.status_code} from {host}"
            if response.is_client_error and response.status_code != 429:
                break
        log.warning("impact notice of release %s: %s (try %d of %d)", payload["release"],
                    problem, attempt, attempts)  # fmt: skip
        if attempt < attempts:
            time.sleep(backoff * 2 ** (attempt - 1))
    return Delivery(payload["event_id"], payload["release"], False, attempt, problem)


@dataclass(frozen=True)
class Announced:
    """The publications whose impact a refresh recorded, and how their notices went."""

    recorded: list[Recorded]
    deliveries: list[Delivery]


def record_and_announce(settings: Settings, run_id: str) -> Announced:
    """Record the impact of each publication not yet recorded, and send the notice of those
    that affected answers for the first time when a webhook is configured."""
    recorded = record_impact(settings, run_id=run_id)
    deliveries = []
    for entry in recorded:
        news = entry.impact.rows.filter(pl.col("new"))
        if settings.impact_webhook and entry.first_time and not news.is_empty():
            delivery = notify(settings.impact_webhook, summary(entry.publication, entry.impact))
            if not delivery.delivered:
                log.warning("impact notice not delivered: %s", delivery.problem)
            deliveries.append(delivery)
    return Announced(recorded, deliveries)
