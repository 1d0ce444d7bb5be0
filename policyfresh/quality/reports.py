"""Static HTML quality reports for data owners: one page per owner about their own documents
(what is held back, late, badly embedded or moved in the evaluation, which PII types were
found, a trend), an unowned page and an index. No document text and no PII value is ever
written: only PII types, key columns and evidence as served (redacted)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from policyfresh.index.holds import read_holds
from policyfresh.index.vectors import vector_gaps
from policyfresh.ingest.pii_allow import load_allow_list
from policyfresh.release.releases import read_audit, release_status
from policyfresh.store import delta_store
from policyfresh.store.config import CLASSIFICATIONS, Settings
from policyfresh.store.errors import PolicyfreshError
from policyfresh.store.freshness import document_lag, read_freshness
from policyfresh.store.tables import (
    ANSWER_IMPACT,
    EVAL_CASE_RESULTS,
    EVAL_RUNS,
    POLICY_CHUNKS,
    POLICY_DOCUMENTS,
    TABLES,
)

UNOWNED = "(unowned)"  # the page of documents without an owner
UNOWNED_SLUG = "unowned"
TREND_POINTS = 12  # published versions, and evaluation runs, in each trend chart
SAMPLE_ROWS = 5  # failing rows shown per failed expectation
WAITING = ("at_risk", "late")
SAFE_EVIDENCE = ("none", "redacted")  # pii_action of a chunk whose text may be shown
WITHHELD = "(withheld: its chunk may hold PII that is not redacted)"
OTHER_OWNER = "(served from a document of another owner)"
IMPACT_COLUMNS = ["event_id", "trace_id", "searched_at", "affected_by", "doc_id", "status",
                  "old_text", "new_doc_id", "new_text", "classification",
                  "new_classification"]  # fmt: skip
ACTIONS = {
    "held": "Documents held back",
    "freshness": "Documents late or at risk of missing the freshness objective",
    "vectors": "Documents with stale, missing or orphaned vectors",
    "failing": "Failing evaluation cases",
    "needs_review": "Evaluation cases to review (their policy changed)",
}
# Failing rows are shown by these columns only: the tables' keys, identifiers and no value.
KEY_COLUMNS = tuple(dict.fromkeys(k for table in TABLES.values() for k in table.key))
CASE_COLUMNS = ["eval_run_id", "case_id", "risk_category", "must_escalate", "sources",
                "affected_reason", "hits", "hit_at_5", "status", "failures", "expected_evidence",
                "served_evidence", "document_rank", "evidence_rank"]  # fmt: skip
CASE_SHOWN = ("case_id", "risk_category", "status", "affected_reason", "expected_evidence",
              "doc_ids", "document_rank", "evidence_rank")  # fmt: skip
DOCUMENT_COLUMNS = ["doc_id", "doc_version", "is_deleted", "change", "title", "owners",
                    "classification", "ingested_at", "pii_spans", "text"]  # fmt: skip


class UnknownOwnerError(PolicyfreshError):
    """A report was asked for an owner no current document has."""


@dataclass(frozen=True)
class OwnerReport:
    """One owner's page and what needs their action, counted by kind (see ACTIONS)."""

    owner: str
    slug: str
    path: Path
    documents: int
    needs_action: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.needs_action.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "slug": self.slug,
            "path": str(self.path),
            "documents": self.documents,
            "needs_action": self.needs_action,
            "needs_action_total": self.total,
        }


@dataclass(frozen=True)
class ReportSet:
    """The pages written: the index (None when one owner's page was asked for) and each
    owner's page, the unowned page last."""

    directory: Path
    index: Path | None
    owners: list[OwnerReport]
    data_docs: Path | None
    generated_at: datetime
    release: dict[str, Any]  # what the pages describe: `release_status` when they were built

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "release": self.release,
            "index": str(self.index) if self.index else None,
            "data_docs": str(self.data_docs) if self.data_docs else None,
            "generated_at": self.generated_at.isoformat(timespec="seconds"),
            "owners": [o.to_dict() for o in self.owners],
        }


def owner_slug(owner: str) -> str:
    """A file-name-safe form of an owner: `team:hr` -> `team-hr`."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", owner.lower()).strip("-.")[:60].strip("-.")
    return slug or "owner"


def owner_slugs(owners: list[str]) -> dict[str, str]:
    """A unique slug per owner; owners whose slugs collide (or take the unowned page's) get a
    hash of their name appended, so each keeps the same file as long as the collision lasts."""
    base = {owner: owner_slug(owner) for owner in owners}
    taken = Counter(base.values())
    return {
        owner: slug
        if taken[slug] == 1 and slug != UNOWNED_SLUG
        else f"{slug}-{hashlib.sha256(owner.encode()).hexdigest()[:8]}"
        for owner, slug in base.items()
    }


@dataclass
class _Tables:
    """Everything the pages show, read once for all owners."""

    current: pl.DataFrame  # current version of every document, removals included; no text
    documents: pl.DataFrame  # live documents with their chunk, freshness and vector figures
    held: list[dict[str, Any]]
    waiting: pl.DataFrame
    gaps: pl.DataFrame
    cases: list[dict[str, Any]]  # failing and needs_review cases of the latest evaluation
    latest_run: dict[str, Any] | None
    run_cases: list[dict[str, Any]]  # answerable cases of the last runs, for the trend
    runs: list[dict[str, Any]]
    published: pl.DataFrame
    slo: float
    owners: list[str]
    release: dict[str, Any]  # `release_status`: the release served, the candidate waiting
    impact: pl.DataFrame  # answers whose quoted text is not served now (see `_latest_impact`)


def _masked_title(title: str, text: str, spans: list[dict[str, Any]]) -> str:
    """The title with every PII value found in the document's text replaced by its type."""
    for span in sorted(spans, key=lambda s: s["start"] - s["end"]):  # longest first
        value = text[span["start"] : span["end"]]
        if value.strip():
            title = title.replace(value, f"<{span['entity_type']}>")
    return title


def _current_documents(settings: Settings) -> pl.DataFrame:
    """Current versions with their PII types and a masked title; the text is dropped here."""
    rows = delta_store.read_table(
        settings.table_uri(POLICY_DOCUMENTS.name),
        POLICY_DOCUMENTS.schema,
        columns=DOCUMENT_COLUMNS,
        where=pl.col("is_current"),
    )
    allow, _ = load_allow_list(settings.pii_allow_file)
    titles, found, kept = [], [], []
    for r in rows.select("title", "text", "pii_spans").iter_rows(named=True):
        titles.append(_masked_title(r["title"] or "", r["text"] or "", r["pii_spans"] or []))
        counts = Counter(s["entity_type"] for s in r["pii_spans"] or [])
        found.append([f"{kind} {n}" for kind, n in sorted(counts.items())])  # counts, no value
        kept.append(sorted({term for *_, term in allow.matches(r["text"] or "")}))
    entity = pl.element().struct.field("entity_type")
    return rows.with_columns(
        title=pl.Series(titles, dtype=pl.String),
        owners=pl.col("owners").fill_null(pl.lit([], pl.List(pl.String))),
        pii_types=pl.col("pii_spans").list.eval(entity).list.unique().list.sort(),
        pii_counts=pl.Series(found, dtype=pl.List(pl.String)),
        pii_allowed=pl.Series(kept, dtype=pl.List(pl.String)),
    ).drop("text", "pii_spans")


def _sample_rows(failure: dict[str, Any]) -> dict[str, Any]:
    """A failed expectation with a few failing rows, by their table's key columns only."""
    rows = [r for r in failure.get("rows") or [] if isinstance(r, dict)]
    shown = [{k: r[k] for k in KEY_COLUMNS if k in r} for r in rows[:SAMPLE_ROWS]]
    column = failure.get("column")
    return {
        "suite": failure.get("suite"),
        "expectation": failure.get("expectation"),
        "column": ", ".join(column) if isinstance(column, list) else column,
        "unexpected_count": failure.get("unexpected_count"),
        "key_columns": [k for k in KEY_COLUMNS if any(k in r for r in shown)],
        "rows": shown,
        "more": max(len(rows) - len(shown), 0),
    }


def _held(settings: Settings, live: pl.DataFrame) -> list[dict[str, Any]]:
    """Documents held back whose held version is still the current one."""
    held = read_holds(settings).join(
        live.select("doc_id", "doc_version"), on=["doc_id", "doc_version"], how="semi"
    )
    rows = []
    for row in held.sort("doc_id").iter_rows(named=True):
        try:
            failures = json.loads(row["failures"] or "[]")
        except json.JSONDecodeError:
            failures = [{"expectation": "(failures unreadable)"}]
        failures = failures if isinstance(failures, list) else []
        rows.append(
            {
                **{k: row[k] for k in ("doc_id", "doc_version", "served_version", "stage")},
                "held_at": row["held_at"],
                "reasons": row["reasons"] or [],
                "failures": [_sample_rows(f) for f in failures if isinstance(f, dict)],
            }
        )
    return rows


def _evidence(case: dict[str, Any], actions: dict[str, str]) -> dict[str, Any]:
    """The served evidence and the document it came from, unless its chunk may hold raw PII
    (allowed by a rule for its classification, or gone since)."""
    hits = sorted(case["hits"] or [], key=lambda h: h["rank"])[:5]
    best = next((h for h in hits if h["doc_id"] in case["doc_ids"]), None)
    if case["served_evidence"] is None or best is None:
        return {"served_evidence": "(no source hit in the top 5)", "evidence_doc": None}
    if actions.get(best["chunk_id"]) not in SAFE_EVIDENCE:
        return {"served_evidence": WITHHELD, "evidence_doc": best["doc_id"]}
    return {"served_evidence": case["served_evidence"], "evidence_doc": best["doc_id"]}


def _evaluation(settings: Settings, actions: dict[str, str]) -> tuple[Any, list, list, list]:
    """The latest run with its failing and needs_review cases, and the last runs' answerable
    cases for the trend."""
    runs = delta_store.read_table(
        settings.table_uri(EVAL_RUNS.name),
        EVAL_RUNS.schema,
        columns=["eval_run_id", "evaluated_at", "candidate_version", "verdict", "cases"],
    ).sort("evaluated_at")
    recent = runs.tail(TREND_POINTS).to_dicts()
    if not recent:
        return None, [], [], []
    results = delta_store.read_table(
        settings.table_uri(EVAL_CASE_RESULTS.name),
        EVAL_CASE_RESULTS.schema,
        columns=CASE_COLUMNS,
        where=pl.col("eval_run_id").is_in([r["eval_run_id"] for r in recent]),
    ).with_columns(doc_ids=pl.col("sources").list.eval(pl.element().struct.field("doc_id")))
    latest = recent[-1]
    cases = []
    moved = results.filter(
        (pl.col("eval_run_id") == latest["eval_run_id"]) & (pl.col("status") != "pass")
    )
    for case in moved.sort("status", "case_id").iter_rows(named=True):
        shown = {k: case[k] for k in CASE_SHOWN} | {"failures": case["failures"] or []}
        cases.append(shown | _evidence(case, actions))
    answerable = results.filter(~pl.col("must_escalate"))
    run_cases = answerable.select("eval_run_id", "doc_ids", "hit_at_5").to_dicts()
    return latest, cases, run_cases, recent


def _latest_impact(settings: Settings) -> pl.DataFrame:
    """`answer_impact` rows of the latest publication: every answer whose quoted text the
    release served now no longer serves. A text whose classification lets raw PII through
    (a PII rule `allow`) is withheld, as evidence is."""
    latest = read_audit(settings).sort("at")["event_id"].tail(1).to_list()
    rows = delta_store.read_table(
        settings.table_uri(ANSWER_IMPACT.name),
        ANSWER_IMPACT.schema,
        columns=IMPACT_COLUMNS,
        where=pl.col("event_id").is_in(latest),
    )
    raw = [c for c in CLASSIFICATIONS if settings.pii_action(c) == "allow"]
    return rows.with_columns(
        pl.when(pl.col(classification).is_in(raw)).then(pl.lit(WITHHELD)).otherwise(text).alias(text)
        for text, classification in (("old_text", "classification"),
                                     ("new_text", "new_classification"))
    )  # fmt: skip


def _gather(settings: Settings, model_id: str, now: datetime) -> _Tables:
    current = _current_documents(settings)
    live = current.filter(~pl.col("is_deleted"))
    chunks = delta_store.read_table(
        settings.table_uri(POLICY_CHUNKS.name),
        POLICY_CHUNKS.schema,
        columns=["chunk_id", "doc_id", "pii_action"],
    )
    per_doc = chunks.group_by("doc_id").agg(
        chunks_redacted=(pl.col("pii_action") == "redacted").sum().cast(pl.Int64),
        chunks_blocked=(pl.col("pii_action") == "blocked").sum().cast(pl.Int64),
    )
    lag = document_lag(settings, now)
    gaps = vector_gaps(settings, model_id)
    counts = ["chunks_redacted", "chunks_blocked", "missing", "stale", "orphaned"]
    documents = (
        live.join(per_doc, on="doc_id", how="left")
        .join(lag.select("doc_id", "state", "lag_seconds"), on="doc_id", how="left")
        .join(gaps, on="doc_id", how="left")
        .with_columns(pl.col(counts).fill_null(0), pl.col("state").fill_null("unknown"))
        .sort("doc_id")
    )
    actions = dict(chunks.select("chunk_id", "pii_action").iter_rows())
    latest, cases, run_cases, runs = _evaluation(settings, actions)
    published = read_freshness(settings, pl.col("published_at").is_not_null()).with_columns(
        lag_seconds=(pl.col("published_at") - pl.col("seen_at")).dt.total_milliseconds() / 1000
    )
    owners = sorted({o for row in current["owners"] for o in row})
    return _Tables(
        current=current,
        documents=documents,
        held=_held(settings, live),
        waiting=lag.filter(pl.col("state").is_in(WAITING)),
        gaps=gaps,
        cases=cases,
        latest_run=latest,
        run_cases=run_cases,
        runs=runs,
        published=published.sort("published_at"),
        slo=settings.freshness_slo,
        owners=owners,
        release=release_status(settings),
        impact=_latest_impact(settings),
    )


def _owned(tables: _Tables, owner: str) -> set[str]:
    """Documents of an owner (or without any, for UNOWNED), removed documents included."""
    owners = pl.col("owners")
    mine = owners.list.len() == 0 if owner == UNOWNED else owners.list.contains(owner)
    return set(tables.current.filter(mine)["doc_id"])


def _chart(values: list[float | None], labels: list[str], top: float, unit: str,
           limit: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Coordinates of a small line chart for the SVG in the template."""
    width, height, left, right, upper, lower = 340, 120, 46, 10, 10, 22
    step = (width - left - right) / max(len(values) - 1, 1)
    top = top or 1.0

    def y(value: float) -> float:
        return round(upper + (height - upper - lower) * (1 - min(value, top) / top), 1)

    points = [
        {"x": round(left + i * step, 1), "y": y(v), "label": f"{labels[i]}: {v:g} {unit}"}
        for i, v in enumerate(values)
        if v is not None
    ]
    return {
        "width": width, "height": height, "left": left, "right": width - right,
        "top_y": upper, "zero_y": y(0), "top": f"{top:g} {unit}", "unit": unit,
        "points": points, "line": " ".join(f"{p['x']},{p['y']}" for p in points),
        "limit_y": y(limit) if limit is not None else None,
    }  # fmt: skip


def _trend(tables: _Tables, owned: set[str]) -> dict[str, Any]:
    """The owner's documents' lag over their last published versions, and hit@5 over their
    cases in the last evaluation runs."""
    published = tables.published.filter(pl.col("doc_id").is_in(sorted(owned))).tail(TREND_POINTS)
    lags = [round(v, 1) for v in published["lag_seconds"]]
    labels = [f"{d} v{v}" for d, v in published.select("doc_id", "doc_version").iter_rows()]
    hits: list[float | None] = []
    for run in tables.runs:
        mine = [
            c["hit_at_5"]
            for c in tables.run_cases
            if c["eval_run_id"] == run["eval_run_id"] and owned & set(c["doc_ids"])
        ]
        hits.append(round(sum(mine) / len(mine), 3) if mine else None)
    run_labels = [f"{r['evaluated_at']:%Y-%m-%d %H:%M}" for r in tables.runs]
    return {
        "lag": _chart(lags, labels, max([*lags, tables.slo]) * 1.1, "s", tables.slo),
        "hits": _chart(hits, run_labels, 1.0, ""),
        "has_lag": bool(lags),
        "has_hits": any(h is not None for h in hits),
    }


def _masked_documents(text: str | None, others: set[str]) -> str | None:
    """Text with other owners' document ids (whole paths only) replaced by a phrase."""
    if not text or not others:
        return text
    names = "|".join(re.escape(d) for d in sorted(others, key=len, reverse=True))
    whole = rf"(?<![\w./-])(?:{names})(?![\w/-]|\.\w)"  # a path, not part of a longer one
    return re.sub(whole, "a document of another owner", text)


def _owners_view(case: dict[str, Any], owned: set[str], others: set[str]) -> dict[str, Any]:
    """A case as one owner sees it: their own source documents only, other owners' documents
    named in its reasons replaced by a phrase, evidence from another owner's document left out."""
    mine = [d for d in case["doc_ids"] if d in owned]
    evidence = case["served_evidence"]
    if case["evidence_doc"] is not None and case["evidence_doc"] not in owned:
        evidence = OTHER_OWNER
    return case | {
        "doc_ids": mine,
        "other_sources": len(case["doc_ids"]) - len(mine),
        "affected_reason": _masked_documents(case["affected_reason"], others),
        "failures": [_masked_documents(f, others) for f in case["failures"]],
        "served_evidence": evidence,
    }


def _impact_view(tables: _Tables, owned: set[str], others: set[str]) -> list[dict[str, Any]]:
    """Per owned document, the texts earlier answers quoted that are no longer served, what
    is served in their place (not another owner's text) and how many answers quoted each,
    the newest change first; no question is shown."""
    theirs = pl.col("new_doc_id").is_in(sorted(others))
    rows = tables.impact.filter(pl.col("doc_id").is_in(sorted(owned))).with_columns(
        new_text=pl.when(theirs).then(pl.lit(OTHER_OWNER)).otherwise(pl.col("new_text")),
        new_doc_id=pl.when(theirs).then(None).otherwise(pl.col("new_doc_id")),
    )
    texts = (
        rows.group_by("doc_id", "status", "old_text", "new_doc_id", "new_text")
        .agg(
            answers=pl.col("trace_id").n_unique(),
            changed_by=pl.col("affected_by").max(),
            last_answer=pl.col("searched_at").max(),
        )
        .sort("changed_by", "last_answer", descending=True)
    )
    answers = dict(rows.group_by("doc_id").agg(pl.col("trace_id").n_unique()).iter_rows())
    return [
        {"doc_id": doc_id, "answers": answers[doc_id], "texts": group.to_dicts()}
        for (doc_id,), group in texts.partition_by("doc_id", as_dict=True).items()
    ]


def _owner_context(tables: _Tables, owner: str) -> dict[str, Any]:
    """What one owner's page shows, and the counts of what needs their action."""
    owned = _owned(tables, owner)
    in_owned = pl.col("doc_id").is_in(sorted(owned))
    held = [h for h in tables.held if h["doc_id"] in owned]
    waiting = tables.waiting.filter(in_owned).to_dicts()
    gaps = tables.gaps.filter(in_owned).to_dicts()
    others = set(tables.current["doc_id"]) - owned
    cases = [_owners_view(c, owned, others) for c in tables.cases if owned & set(c["doc_ids"])]
    failing = [c for c in cases if c["status"] == "fail"]
    review = [c for c in cases if c["status"] == "needs_review"]
    flagged = {h["doc_id"] for h in held} | {w["doc_id"] for w in waiting}
    flagged |= {g["doc_id"] for g in gaps} | {d for c in cases for d in c["doc_ids"]}
    documents = tables.documents.filter(in_owned).with_columns(
        needs_action=pl.col("doc_id").is_in(sorted(flagged))
    )
    items = {
        "held": [
            f"{h['doc_id']} v{h['doc_version']} is held back ({h['stage']}); "
            + (
                f"v{h['served_version']} is still served"
                if h["served_version"] is not None
                else "no version of it is served"
            )
            for h in held
        ],
        "freshness": [
            f"{'removal of ' if w['is_deleted'] else ''}{w['doc_id']} v{w['doc_version']} is "
            f"{w['state'].replace('_', ' ')}: waiting {w['lag_seconds']:.0f} s "
            f"(objective {tables.slo:.0f} s)"
            for w in waiting
        ],
        "vectors": [
            f"{g['doc_id']}: {g['missing']} missing, {g['stale']} stale, "
            f"{g['orphaned']} orphaned vectors"
            for g in gaps
        ],
        "failing": [f"{c['case_id']}: {'; '.join(c['failures'])}" for c in failing],
        "needs_review": [
            f"{c['case_id']}: {c['affected_reason'] or 'evidence moved'}" for c in review
        ],
    }
    return {
        "owner": owner,
        "is_unowned": owner == UNOWNED,
        "documents": documents.to_dicts(),
        "held": held,
        "failing": failing,
        "review": review,
        "actions": [
            {"kind": kind, "label": ACTIONS[kind], "found": found}
            for kind, found in items.items()
            if found
        ],
        "counts": {kind: len(found) for kind, found in items.items()},
        "trend": _trend(tables, owned),
        "impact": _impact_view(tables, owned, others),
    }


def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("policyfresh.quality", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _write(path: Path, html: str) -> None:
    """Write atomically: a temporary file beside it, then a rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(html)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def build_reports(
    settings: Settings, model_id: str, owner: str | None = None, now: datetime | None = None
) -> ReportSet:
    """Write every owner's page, the unowned page and the index under `reports_dir`, or only
    the page of `owner` (a name, its slug, or UNOWNED); pages of owners gone are removed."""
    now = now or datetime.now(tz=UTC)
    tables = _gather(settings, model_id, now)
    slugs = owner_slugs(tables.owners) | {UNOWNED: UNOWNED_SLUG}
    chosen = [*tables.owners, UNOWNED]
    if owner is not None:
        by_name = {name: name for name in chosen} | {slug: name for name, slug in slugs.items()}
        if owner not in by_name:
            known = ", ".join(chosen)
            raise UnknownOwnerError(f"unknown owner {owner!r}: known owners are {known}")
        chosen = [by_name[owner]]
    directory = settings.reports_dir
    data_docs = directory / "data_docs" / "index.html"
    data_docs = data_docs if data_docs.is_file() else None
    env = _environment()
    common = {
        "generated_at": now,
        "latest_run": tables.latest_run,
        "objective": tables.slo,
        "data_docs": data_docs is not None,
        "unowned": UNOWNED,
        "release": tables.release,
    }
    reports = []
    for name in chosen:
        context = _owner_context(tables, name)
        path = directory / "owners" / f"{slugs[name]}.html"
        _write(path, env.get_template("owner.html").render(**common, **context))
        reports.append(
            OwnerReport(name, slugs[name], path, len(context["documents"]), context["counts"])
        )
    index = None
    if owner is None:
        index = directory / "index.html"
        _write(index, env.get_template("index.html").render(**common, reports=reports))
        written = {r.path for r in reports}
        for page in (directory / "owners").glob("*.html"):
            if page not in written:
                page.unlink(missing_ok=True)
    return ReportSet(directory, index, reports, data_docs, now, tables.release)
