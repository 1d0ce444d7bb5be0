"""Ingest a policies folder into the versioned `policy_documents` table, and bad files into
`ingest_errors`: new content appends a version, removed files a tombstone, unchanged nothing."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl

from policyfresh.ingest.governance import (
    Governance,
    OwnerRule,
    load_owner_rules,
    resolve_governance,
)
from policyfresh.ingest.parsing import ParseError, ParseFailure, parse_document, read_front_matter
from policyfresh.ingest.pii import PiiDetectorError, PiiSpan, detect_pii, detector_id
from policyfresh.ingest.pii_allow import AllowList, load_allow_list
from policyfresh.ingest.sources import (
    OWNERS_FILE,
    SourceFile,
    TreeState,
    scan_sources,
    sha256_bytes,
)
from policyfresh.store import delta_store
from policyfresh.store.config import PII_ALLOW_FILE, Settings
from policyfresh.store.errors import PolicyfreshError
from policyfresh.store.freshness import record_seen
from policyfresh.store.local_state import read_state, write_state
from policyfresh.store.locks import writer_lock
from policyfresh.store.progress import counted
from policyfresh.store.tables import INGEST_ERRORS, POLICY_DOCUMENTS, empty_frame

log = logging.getLogger(__name__)

INGESTED_TREE = "ingested_tree"


class MassRemovalError(PolicyfreshError):
    """A refresh would remove more than `POLICYFRESH_MAX_REMOVED_SHARE` of the live documents."""


class EmptyPoliciesError(PolicyfreshError):
    """The policies folder is empty while the table still has live documents."""


@dataclass(frozen=True)
class IngestResult:
    """What one ingestion did: counts, the versions it wrote and the files it quarantined."""

    added: int
    changed: int
    deleted: int
    unchanged: int
    quarantined: int
    new_versions: pl.DataFrame
    errors: pl.DataFrame
    table_version: int | None

    def counts(self) -> dict[str, int]:
        return {
            "added": self.added,
            "changed": self.changed,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
            "quarantined": self.quarantined,
        }


def read_latest(settings: Settings) -> pl.DataFrame:
    """The latest row of every document ever seen, tombstones included."""
    return delta_store.read_table(
        settings.table_uri(POLICY_DOCUMENTS.name),
        POLICY_DOCUMENTS.schema,
        where=pl.col("is_current"),
    )


def read_documents(settings: Settings, current_only: bool = True) -> pl.DataFrame:
    """Rows of `policy_documents`: by default the current version of each live document."""
    where = (pl.col("is_current") & ~pl.col("is_deleted")) if current_only else None
    return delta_store.read_table(
        settings.table_uri(POLICY_DOCUMENTS.name), POLICY_DOCUMENTS.schema, where=where
    )


def _spans(spans: list[PiiSpan]) -> list[dict[str, Any]]:
    return [{"entity_type": s.entity_type, "start": s.start, "end": s.end} for s in spans]


@dataclass(frozen=True)
class _Rules:
    """OWNERS rules for one document; while the file is broken, what the document had."""

    rules: list[OwnerRule]
    fallback: Governance | None

    def govern(self, doc_id: str, front_matter: dict[str, Any]) -> dict[str, Any]:
        gov = resolve_governance(doc_id, front_matter, self.rules, self.fallback)
        return {"owners": list(gov.owners), "classification": gov.classification}


def _new_content(
    source: SourceFile, rules: _Rules, max_bytes: int, allow: AllowList
) -> dict[str, Any]:
    """Parse, govern and scan a file whose bytes are new, unless it is too large to read."""
    if source.size_bytes > max_bytes:
        raise ParseError(
            f"{source.size_bytes} bytes, more than POLICYFRESH_MAX_FILE_BYTES={max_bytes}: not read"
        )
    data = source.path.read_bytes()
    parsed = parse_document(source.doc_id, data)
    return {
        "content_sha256": sha256_bytes(data),
        "title": parsed.title,
        "format": parsed.format,
        "text": parsed.text,
        "pii_spans": _spans(detect_pii(parsed.text, allow)),
        **rules.govern(source.doc_id, parsed.front_matter),
    }


def _same_content(
    source: SourceFile, live: dict[str, Any], rules: _Rules, detector: str, allow: AllowList
) -> tuple[str, dict[str, Any]] | None:
    """For unchanged bytes: a new version only if governance or the PII detector changed."""
    content = {k: live[k] for k in ("content_sha256", "title", "format", "text", "pii_spans")}
    front_matter = read_front_matter(source.doc_id, source.path.read_bytes())
    content |= rules.govern(source.doc_id, front_matter)
    change = None
    if (content["owners"], content["classification"]) != (live["owners"], live["classification"]):
        change = "governance"
    if live["pii_detector"] != detector:
        content["pii_spans"] = _spans(detect_pii(live["text"], allow))
        change = change or "rescanned"
    return (change, content) if change else None


def ingested_tree(settings: Settings) -> TreeState | None:
    """The policies tree as the last completed ingestion saw it (None before the first)."""
    text = read_state(settings, INGESTED_TREE)
    state = TreeState.from_json(text) if text else None
    return state if state and state.root == settings.policies else None


def ingest_documents(settings: Settings, run_id: str) -> IngestResult:
    """Bring `policy_documents` in line with the policies folder in one merge commit. Files
    whose size and mtime did not move since the last ingestion are not read again. One writer
    at a time, like the chunks and the vectors: an erasure must not run beside it."""
    with writer_lock(settings, POLICY_DOCUMENTS.name):
        return _ingest(settings, run_id)


def _ingest(settings: Settings, run_id: str) -> IngestResult:
    now = datetime.now(tz=UTC)
    before = ingested_tree(settings)
    rules, rule_errors = load_owner_rules(settings.policies / OWNERS_FILE)
    files, scan_errors, tree = scan_sources(settings.policies, before.files if before else None)
    owners_moved = before is None or before.files.get(OWNERS_FILE) != tree.files.get(OWNERS_FILE)
    allow, allow_errors = load_allow_list(settings.pii_allow_file)
    errors = [(OWNERS_FILE, None, f"OWNERS {e}") for e in rule_errors]
    errors += [(PII_ALLOW_FILE, None, f"PII_ALLOW {e}") for e in allow_errors]
    errors += [(path, None, reason) for path, reason in scan_errors]
    latest = {row["doc_id"]: row for row in read_latest(settings).iter_rows(named=True)}
    live_count = sum(not row["is_deleted"] for row in latest.values())
    if not files and not scan_errors and live_count:
        raise EmptyPoliciesError(
            f"{settings.policies} has no files; refusing to tombstone all {live_count} "
            "documents (an unmounted or wrong folder?). Remove the documents one by one instead."
        )
    detector = detector_id(allow)  # an edit of PII_ALLOW rescans every document
    new_rows: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    for number, source in enumerate(counted("documents parsed", files), start=1):
        if number % 100 == 0:
            log.info("ingest: %d/%d files", number, len(files))
        previous = latest.get(source.doc_id)
        live = previous if previous and not previous["is_deleted"] else None
        try:
            held = Governance(tuple(live["owners"]), live["classification"]) if live else None
            doc_rules = _Rules([], held) if rule_errors and held else _Rules(rules, None)
            if live and live["content_sha256"] == source.sha256:
                # Same bytes: governance moves only with OWNERS, PII spans only with the detector.
                moved = owners_moved or live["pii_detector"] != detector
                update = _same_content(source, live, doc_rules, detector, allow) if moved else None
                if update is None:
                    counts["unchanged"] += 1
                    continue
                change, content = update
            else:
                change, content = (
                    ("changed" if live else "added"),
                    _new_content(source, doc_rules, settings.max_file_bytes, allow),
                )
        except PiiDetectorError:  # the detector, not the file: nothing may be written unscanned
            raise
        except Exception as exc:  # one bad file is recorded and skipped, never fatal
            reason = str(exc) if isinstance(exc, ParseFailure) else f"{type(exc).__name__}: {exc}"
            errors.append((source.doc_id, source.sha256, reason))
            log.warning("quarantined %s: %s", source.doc_id, reason)
            continue
        counts["added" if change == "added" else "changed"] += 1
        new_rows.append(
            {
                "doc_id": source.doc_id,
                "doc_version": previous["doc_version"] + 1 if previous else 1,
                "is_current": True,
                "is_deleted": False,
                "change": change,
                "source_path": str(source.path),
                "size_bytes": source.size_bytes,
                "modified_at": source.modified_at,
                "ingested_at": now,
                "pii_detector": detector,
                "run_id": run_id,
                **content,
            }
        )
    present = {f.doc_id for f in files} | {path for path, _, _ in errors}
    for doc_id, previous in latest.items():
        if doc_id in present or previous["is_deleted"]:
            continue
        counts["deleted"] += 1
        new_rows.append(
            {
                **{k: previous[k] for k in ("title", "owners", "classification", "format")},
                "doc_id": doc_id,
                "doc_version": previous["doc_version"] + 1,
                "is_current": True,
                "is_deleted": True,
                "change": "deleted",
                "source_path": previous["source_path"],
                "ingested_at": now,
                "pii_spans": [],
                "run_id": run_id,
            }
        )
    limit = settings.max_removed_share * live_count
    if counts["deleted"] > limit and not settings.allow_mass_delete:
        raise MassRemovalError(
            f"{counts['deleted']} of {live_count} live documents would be removed, more than "
            f"POLICYFRESH_MAX_REMOVED_SHARE={settings.max_removed_share:g} of them (a half-synced "
            "or unmounted folder?): nothing was removed. To confirm, run `policyfresh run "
            "--allow-mass-delete` (or set POLICYFRESH_ALLOW_MASS_DELETE=1 for one run)."
        )
    new_versions = pl.DataFrame(new_rows, schema=empty_frame(POLICY_DOCUMENTS).schema)
    # The clock starts before the versions are written: a run killed in between writes the
    # same (doc_id, doc_version) keys again, so no version is ever left untracked.
    record_seen(settings, new_versions, run_id)
    table_version = _write_versions(settings, new_versions, latest, run_id)
    error_frame = _record_errors(settings, errors, run_id, now)
    write_state(settings, INGESTED_TREE, tree.to_json())
    return IngestResult(
        added=counts["added"],
        changed=counts["changed"],
        deleted=counts["deleted"],
        unchanged=counts["unchanged"],
        quarantined=len({path for path, _, _ in errors} - {OWNERS_FILE, PII_ALLOW_FILE}),
        new_versions=new_versions,
        errors=error_frame,
        table_version=table_version,
    )


def _write_versions(
    settings: Settings, new_versions: pl.DataFrame, latest: dict[str, dict], run_id: str
) -> int | None:
    """Insert the new versions and retire the versions they replace, atomically."""
    uri = settings.table_uri(POLICY_DOCUMENTS.name)
    if new_versions.is_empty():
        table = delta_store.open_table(uri)
        return table.version() if table else None
    retired = pl.DataFrame(
        [
            {"doc_id": d, "doc_version": latest[d]["doc_version"]}
            for d in new_versions["doc_id"]
            if d in latest
        ],
        schema={"doc_id": pl.String, "doc_version": pl.Int64},
    )
    source = pl.concat(
        [
            new_versions.with_columns(_action=pl.lit("insert")),
            retired.with_columns(_action=pl.lit("retire")),
        ],
        how="diagonal_relaxed",
    )
    delta_store.merge(
        POLICY_DOCUMENTS,
        uri,
        source,
        run_id,
        lambda m: m.when_matched_update(
            {"is_current": "false"}, predicate="s._action = 'retire'"
        ).when_not_matched_insert_all(predicate="s._action = 'insert'", except_cols=["_action"]),
        extra_columns=["_action"],
    )
    return delta_store.open_table(uri).version()


def _record_errors(
    settings: Settings, errors: list[tuple[str, str | None, str]], run_id: str, now: datetime
) -> pl.DataFrame:
    """Append errors not recorded before (same path, content and reason); return this run's."""
    frame = pl.DataFrame(
        [{"path": p, "content_sha256": s, "reason": r, "error_at": now, "run_id": run_id}
         for p, s, r in errors],
        schema=empty_frame(INGEST_ERRORS).schema,
    )  # fmt: skip
    uri = settings.table_uri(INGEST_ERRORS.name)
    known = delta_store.read_table(uri, INGEST_ERRORS.schema, columns=list(INGEST_ERRORS.key))
    fresh = frame.join(known, on=list(INGEST_ERRORS.key), how="anti", nulls_equal=True)
    if not fresh.is_empty():
        delta_store.append(INGEST_ERRORS, uri, fresh, run_id)
    return frame
