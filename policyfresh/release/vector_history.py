"""Give up the vector table's history when it holds text that must go: an erased document, or
chunks stored raw under a PII rule since tightened."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from policyfresh.index.chunks import RAW_PII_IN_VECTOR_HISTORY
from policyfresh.index.vectors import open_vectors
from policyfresh.release.releases import SERVED, publish_erasure, served_release
from policyfresh.store import delta_store
from policyfresh.store.config import Settings
from policyfresh.store.tables import POLICY_CHUNKS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Forgotten:
    rows_deleted: int
    releases_dropped: list[int]
    republished_release: int | None


def forget_vector_history(settings: Settings, actor: str, where: str | None = None) -> Forgotten:
    """Delete the rows matching `where` (if given), rewrite the files and the full-text index
    that held them, untag every release before and remove every older version; a release that
    was served is replaced at once by the latest version, published unevaluated. Call under the
    vector writer lock."""
    from lancedb.index import FTS

    table = open_vectors(settings)
    if table is None:
        return Forgotten(0, [], None)
    deleted = table.count_rows(where) if where else 0
    if deleted:
        table.delete(where)
    dataset = table.to_lance()
    dataset.optimize.compact_files(materialize_deletions=True, materialize_deletions_threshold=0)
    table.checkout_latest()
    table.create_index("embed_text", config=FTS(), replace=True)  # its tokens hold the text
    latest = table.version
    older = {name: info["version"] for name, info in table.tags.list().items()
             if name != SERVED and info["version"] < latest}  # fmt: skip
    served = served_release(table)
    republished = None
    if served is not None and served < latest:
        republished = publish_erasure(settings, table, latest, actor=actor)
    for name in older:
        table.tags.delete(name)
    table.to_lance().cleanup_old_versions(
        older_than=timedelta(0), delete_unverified=True, error_if_tagged_old_versions=False
    )
    return Forgotten(deleted, sorted(older.values()), republished)


def forget_raw_pii(settings: Settings, actor: str) -> Forgotten | None:
    """Once the vectors follow PII rules that were tightened, forget the versions before them,
    which still hold the text those rules now redact. Call under the vector writer lock."""
    uri = settings.table_uri(POLICY_CHUNKS.name)
    chunks = delta_store.open_table(uri)
    if chunks is None or chunks.metadata().configuration.get(RAW_PII_IN_VECTOR_HISTORY) != "true":
        return None
    forgotten = forget_vector_history(settings, actor)
    delta_store.set_properties(chunks, {RAW_PII_IN_VECTOR_HISTORY: "false"}, actor)
    log.warning(
        "PII rules tightened: %d releases and every older vector version removed",
        len(forgotten.releases_dropped),
    )
    return forgotten
