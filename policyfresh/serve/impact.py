"""The impact of a publication: the earlier answers whose quoted text the new release no longer
serves in that document (invariant 12), found from the tables, not one trace at a time.

A publication lists every such answer, also one an earlier publication already made wrong:
each says which publication first changed what it quoted (`affected_by`) and whether that is
this one (`new`), so what is news is told apart from what is still to follow up.

Chunk ids come first: unchanged text keeps its id, so a hit whose chunk the release still
serves is current without reading any text. For the rest the document's own text decides: the
quoted span, unredacted, must still be in the version of that document the release serves, so
a rescan that only changes redaction, an owners change, or a passage that moved inside its
document is not a change of what was said."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import lance
import polars as pl

from policyfresh.index.vectors import vectors_dataset
from policyfresh.release.purge import ERASED
from policyfresh.release.releases import read_audit
from policyfresh.serve.search import QueryEncoder, answer_many
from policyfresh.serve.trace_store import read_traces
from policyfresh.serve.traces import served_rows
from policyfresh.store import delta_store
from policyfresh.store.config import Settings
from policyfresh.store.errors import PolicyfreshError
from policyfresh.store.local_state import read_state, write_state
from policyfresh.store.locks import writer_lock
from policyfresh.store.sql import in_list
from policyfresh.store.tables import ANSWER_IMPACT, POLICY_DOCUMENTS, empty_frame

EVAL_CALLER = "eval:"  # the evaluation's searches (`eval:<run id>`, release null): not answers
RECORDED = "impact_recorded"  # local state: the last publication whose impact was written
REASK_CALLER = "impact:reask"  # re-asked questions are answered, never traced
QUOTED = ["doc_id", "doc_version", "heading", "char_start", "char_end", "text", "classification"]
QUOTE_KEY = ["index_version", "chunk_id", "doc_id"]
SERVED_NOW = ["doc_id", "text", "classification"]  # of the chunk that takes a quote's place
TRACE_COLUMNS = ["trace_id", "searched_at", "caller", "api_key_id", "release", "index_version",
                 "question", "hits"]  # fmt: skip


class ImpactError(PolicyfreshError):
    """A publication that does not exist or whose release is no longer kept."""


@dataclass(frozen=True)
class Publication:
    """One change of the served release, a publish or a rollback, from `release_audit`."""

    event_id: str
    at: datetime
    action: str
    release: int
    previous_release: int | None


def publications(settings: Settings) -> list[Publication]:
    """Every change of the served release, oldest first."""
    return [
        Publication(e["event_id"], e["at"], e["action"], e["release"], e["previous_release"])
        for e in read_audit(settings).iter_rows(named=True)
        if e["release"] != e["previous_release"]
    ]


def select_publications(
    settings: Settings, release: int | None = None, since: int | datetime | None = None
) -> list[Publication]:
    """The publication of `release` (default: the latest), or with `since` (a release or a
    time) every publication after it, up to that one."""
    events = publications(settings)
    if not events:
        raise ImpactError("no release has been published yet")
    ends = [i for i, e in enumerate(events) if release is None or e.release == release]
    if not ends:
        raise ImpactError(f"release {release} was never published; see `policyfresh releases`")
    end = ends[-1]
    if since is None:
        return [events[end]]
    if isinstance(since, datetime):
        return [e for e in events[: end + 1] if e.at > since]
    starts = [i for i, e in enumerate(events) if e.release == since]
    if not starts:
        raise ImpactError(f"release {since} was never published; see `policyfresh releases`")
    return events[starts[0] + 1 : end + 1]


def parse_since(value: str) -> int | datetime:
    """A release number, or an ISO time (UTC when it names no zone)."""
    if value.strip().isdigit():
        return int(value)
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ImpactError(f"since {value!r}: give a release number or an ISO time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@dataclass(frozen=True)
class AffectedHit:
    rank: int
    doc_id: str
    doc_version: int | None
    chunk_id: str | None
    status: str  # changed, removed, moved or erased
    old_text: str | None  # as served then, redacted; None once erased or no longer kept
    new_doc_id: str | None
    new_text: str | None  # the best matching chunk served now, redacted
    owners: list[str]
    classification: str | None  # of the quoted chunk when served: decides who may read it
    new_classification: str | None  # of the chunk served in its place


@dataclass(frozen=True)
class AffectedAnswer:
    trace_id: str
    searched_at: datetime
    caller: str
    api_key_id: str | None
    release: int  # the release it was served from
    question: str  # as stored: redacted
    affected_by: int  # the release whose publication first changed what it quoted
    new: bool  # this publication is that first one
    event_id: str
    hits: list[AffectedHit]


@dataclass(frozen=True)
class DocumentChange:
    doc_id: str
    old_version: int | None
    new_version: int | None
    change: str  # changed, added, removed, moved, erased, or earlier (changed before)
    owners: list[str]
    answers: int  # affected answers that quoted it
    new_answers: int  # of which this publication is the first to affect


@dataclass(frozen=True)
class Reasked:
    """An affected question asked again against the new release."""

    trace_id: str
    top_changed: bool
    top: dict[str, Any] | None  # doc_id, doc_version, chunk_id, heading, score, text


@dataclass(frozen=True)
class Impact:
    release: int | None
    previous_release: int | None
    publications: list[Publication]
    documents: list[DocumentChange]
    rows: pl.DataFrame  # `answer_impact`: one row per affected hit per publication
    not_kept: list[int]  # releases whose publication could not be judged (erased since)

    @property
    def answers(self) -> list[AffectedAnswer]:
        """One entry per affected answer and publication, the newest answer first."""
        hit_fields = list(AffectedHit.__dataclass_fields__)
        found = []
        for group in self.rows.sort("rank").partition_by(["event_id", "trace_id"]):
            first = group.row(0, named=True)
            found.append(
                AffectedAnswer(
                    trace_id=first["trace_id"],
                    searched_at=first["searched_at"],
                    caller=first["caller"],
                    api_key_id=first["api_key_id"],
                    release=first["served_release"],
                    question=first["question"],
                    affected_by=first["affected_by"],
                    new=first["new"],
                    event_id=first["event_id"],
                    hits=[AffectedHit(**h) for h in group.select(hit_fields).to_dicts()],
                )
            )
        return sorted(found, key=lambda a: a.searched_at, reverse=True)

    def totals(self) -> dict[str, Any]:
        statuses = self.rows["status"].value_counts()
        return {
            "answers": self.rows["trace_id"].n_unique(),
            "new_answers": self.rows.filter(pl.col("new"))["trace_id"].n_unique(),
            "hits": self.rows.height,
            "documents": sum(1 for d in self.documents if d.answers),
            "publications": len(self.publications),
            "by_status": dict(zip(statuses["status"], statuses["count"], strict=True)),
        }

    def to_dict(self, reasked: dict[str, Reasked] | None = None) -> dict[str, Any]:
        """The `--json` object: releases, documents, answers (with re-asks if given), totals."""
        answers = []
        for answer in self.answers:
            entry = _jsonable(asdict(answer))
            if reasked is not None and answer.trace_id in reasked:
                entry["reask"] = asdict(reasked[answer.trace_id])
            answers.append(entry)
        return {
            "release": self.release,
            "previous_release": self.previous_release,
            "publications": [_jsonable(asdict(p)) for p in self.publications],
            "documents": [asdict(d) for d in self.documents],
            "answers": answers,
            "totals": self.totals(),
            "not_kept": self.not_kept,
        }


def _jsonable(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in entry.items()}


@dataclass(frozen=True)
class _Served:
    """What one release serves, read by column projection: chunk ids and document versions."""

    dataset: lance.LanceDataset
    chunk_ids: pl.Series
    ids: frozenset[str]
    versions: dict[str, int]


class _Lake:
    """The reads an impact needs, each made once: releases, quoted rows, document texts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.served: dict[int, _Served | None] = {}
        self.texts: dict[tuple[str, int], str] = {}
        documents = delta_store.read_table(
            settings.table_uri(POLICY_DOCUMENTS.name),
            POLICY_DOCUMENTS.schema,
            ["doc_id", "doc_version", "content_sha256", "owners"],
        )
        latest = documents.sort("doc_version").unique("doc_id", keep="last")
        self.owners = dict(zip(latest["doc_id"], latest["owners"].to_list(), strict=True))
        self.sha = {
            (d, v): s
            for d, v, s in documents.select("doc_id", "doc_version", "content_sha256").rows()
        }

    def release(self, release: int | None) -> _Served | None:
        """The release's chunk ids and document versions; None if it is no longer kept."""
        if release is None:
            return None
        if release not in self.served:
            dataset = vectors_dataset(self.settings, version=release)
            if dataset is None:
                self.served[release] = None
            else:
                columns = ["chunk_id", "doc_id", "doc_version"]
                rows = pl.from_arrow(dataset.to_table(columns=columns))
                versions = rows.unique("doc_id").select("doc_id", "doc_version").rows()
                ids = frozenset(rows["chunk_id"])
                self.served[release] = _Served(dataset, rows["chunk_id"], ids, dict(versions))
        return self.served[release]

    def load_texts(self, doc_ids: list[str]) -> None:
        """The original text of every stored version of these documents (to compare spans)."""
        wanted = sorted({d for d in doc_ids if d != ERASED} - {d for d, _ in self.texts})
        if not wanted:
            return
        found = delta_store.read_table(
            self.settings.table_uri(POLICY_DOCUMENTS.name),
            POLICY_DOCUMENTS.schema,
            ["doc_id", "doc_version", "text"],
            pl.col("doc_id").is_in(wanted),
        )
        self.texts.update(((d, v), t) for d, v, t in found.rows() if t is not None)

    def serves(self, served: _Served, quote: dict[str, Any]) -> bool:
        """Whether the release still serves the quoted text in the quoted document: the same
        chunk, or its span, unredacted, in the version served; without the span (its index
        version is no longer kept), whether that version has the same content."""
        if quote["chunk_id"] in served.ids:
            return True
        version = served.versions.get(quote["doc_id"])
        if version is None:
            return False
        if quote["span"] is not None:
            return quote["span"] in self.texts.get((quote["doc_id"], version), "")
        same = self.sha.get((quote["doc_id"], version))
        return same is not None and same == self.sha.get((quote["doc_id"], quote["doc_version"]))


def impact(
    settings: Settings,
    release: int | None = None,
    since: int | datetime | None = None,
    *,
    owner: str | None = None,
    caller: str | None = None,
    api_key_id: str | None = None,
) -> Impact:
    """The answers whose quoted text the release (default: the latest) no longer serves,
    compared with the release served before it; with `since` (a release or a time), those
    every publication after it changed first, each answer once. `owner`, `caller` and
    `api_key_id` keep only their own."""
    chosen = select_publications(settings, release, since)
    found = impact_of(
        settings, chosen, since if isinstance(since, int) else None, first_only=since is not None,
        owner=owner, caller=caller, api_key_id=api_key_id,
    )  # fmt: skip
    if since is None and found.not_kept:
        raise ImpactError(f"release {found.release} is no longer kept: an erasure dropped it")
    return found


def impact_of(
    settings: Settings,
    chosen: list[Publication],
    previous: int | None = None,
    *,
    first_only: bool = False,
    owner: str | None = None,
    caller: str | None = None,
    api_key_id: str | None = None,
) -> Impact:
    """The impact of these publications (oldest first): per publication, every earlier answer
    whose quoted text its release no longer serves; with `first_only`, only at the publication
    that first changed it. `previous` is the release the documents are compared with
    (default: the one served before the first publication)."""
    lake = _Lake(settings)
    frames, not_kept = [], []
    if chosen:
        traces = _answers(settings, chosen[-1].at, caller, api_key_id)
        if owner is not None:  # before the answers are told apart: another's change hides none
            owned = [d for d, owners in lake.owners.items() if owner in owners]
            traces = traces.filter(pl.col("doc_id").is_in(owned))
        history = publications(settings)
        for publication in chosen:
            if lake.release(publication.release) is None:
                not_kept.append(publication.release)
                continue
            earlier = [e for e in history if e.at < publication.at]
            waiting = traces.filter(pl.col("searched_at") < publication.at)
            rows = _affected(lake, publication, waiting, earlier)
            frames.append(rows.filter(pl.col("new")) if first_only else rows)
        previous = chosen[0].previous_release if previous is None else previous
    rows = pl.concat(frames) if frames else empty_frame(ANSWER_IMPACT)
    last = chosen[-1].release if chosen else previous
    documents = _documents(lake, previous, last, rows)
    if owner is not None:
        documents = [d for d in documents if owner in d.owners]
    if caller is not None or api_key_id is not None:
        documents = [d for d in documents if d.answers]
    return Impact(last, previous, chosen, documents, rows, not_kept)


def _answers(
    settings: Settings, before: datetime, caller: str | None, api_key_id: str | None
) -> pl.DataFrame:
    """Answers within the trace retention, searched before `before`: one row per hit, with
    the trace's fields. The evaluation's searches are no answers and are left out."""
    cutoff = datetime.now(tz=UTC) - timedelta(days=settings.trace_retention_days)
    where = (
        pl.col("release").is_not_null()
        & ~pl.col("caller").str.starts_with(EVAL_CALLER)
        & (pl.col("searched_at") >= cutoff)
        & (pl.col("searched_at") < before)
    )
    if caller is not None:
        where &= pl.col("caller") == caller
    if api_key_id is not None:
        where &= pl.col("api_key_id") == api_key_id
    traces = read_traces(settings, where, TRACE_COLUMNS)
    return (
        traces.explode("hits")
        .filter(pl.col("hits").is_not_null())
        .unnest("hits")
        .drop("score")
        .rename({"release": "served_release"})
    )


def _affected(
    lake: _Lake, publication: Publication, hits: pl.DataFrame, earlier: list[Publication]
) -> pl.DataFrame:
    """`answer_impact` rows of one publication: hits whose text its release no longer serves
    in their document, each answer with the first publication that changed what it quoted."""
    now = lake.release(publication.release)
    assert now is not None
    candidates = hits.filter(~pl.col("chunk_id").is_in(now.chunk_ids.implode()).fill_null(False))
    quotes = [q for q in _quotes(lake, candidates) if not lake.serves(now, q)]
    judged = _statuses(lake, now, quotes)
    if judged.is_empty():
        return empty_frame(ANSWER_IMPACT)
    rows = candidates.join(judged, on=QUOTE_KEY, nulls_equal=True)
    first = _first_changes(lake, rows, quotes, earlier, publication)
    return (
        rows.join(first, on="trace_id")
        .with_columns(
            event_id=pl.lit(publication.event_id),
            published_at=pl.lit(publication.at),
            action=pl.lit(publication.action),
            release=pl.lit(publication.release),
            previous_release=pl.lit(publication.previous_release, dtype=pl.Int64),
        )
        .select(empty_frame(ANSWER_IMPACT).columns)
        .cast(empty_frame(ANSWER_IMPACT).schema)
    )


def _first_changes(
    lake: _Lake,
    rows: pl.DataFrame,
    quotes: list[dict[str, Any]],
    earlier: list[Publication],
    publication: Publication,
) -> pl.DataFrame:
    """Per answer: the release of the first publication after it that no longer served a
    text it quoted (`affected_by`), and whether that is `publication` (`new`). A publication
    whose release is no longer kept cannot be judged and is passed over."""
    given = rows["searched_at"].min()
    unserved = [
        {**{k: q[k] for k in QUOTE_KEY}, "at": publication.at, "event_id": publication.event_id,
         "affected_by": publication.release} for q in quotes
    ]  # fmt: skip
    for event in (e for e in earlier if e.at > given):
        served = lake.release(event.release)
        if served is None:
            continue
        unserved += [
            {**{k: q[k] for k in QUOTE_KEY}, "at": event.at, "event_id": event.event_id,
             "affected_by": event.release} for q in quotes if not lake.serves(served, q)
        ]  # fmt: skip
    schema = rows.select(QUOTE_KEY).schema | {
        "at": pl.Datetime("us", "UTC"), "event_id": pl.String, "affected_by": pl.Int64,
    }  # fmt: skip
    changes = pl.DataFrame(unserved, schema=schema, orient="row")
    return (
        rows.select("trace_id", "searched_at", *QUOTE_KEY)
        .join(changes, on=QUOTE_KEY, nulls_equal=True)
        .filter(pl.col("at") > pl.col("searched_at"))
        .sort("at")
        .group_by("trace_id")
        .first()
        .select("trace_id", "affected_by", new=pl.col("event_id") == publication.event_id)
    )


def _quotes(lake: _Lake, candidates: pl.DataFrame) -> list[dict[str, Any]]:
    """Each distinct quoted chunk among the candidates, with the text served then (redacted),
    its classification, and its span in the document version (unredacted, to compare with
    what is served now)."""
    distinct = candidates.select(*QUOTE_KEY, "doc_version").unique()
    lake.load_texts(distinct["doc_id"].unique().to_list())
    quotes = []
    for (version,), group in distinct.partition_by("index_version", as_dict=True).items():
        ids = group["chunk_id"].drop_nulls().unique().to_list()
        served = served_rows(lake.settings, version, ids, QUOTED)
        rows = {r["chunk_id"]: r for r in served or []}
        for quote in group.iter_rows(named=True):
            row = rows.get(quote["chunk_id"]) or {}
            text = lake.texts.get((row.get("doc_id"), row.get("doc_version")))
            span = text[row["char_start"] : row["char_end"]] if text is not None else None
            quotes.append(
                quote
                | {"span": span, "old_text": row.get("text"), "heading": row.get("heading"),
                   "classification": row.get("classification")}
            )  # fmt: skip
    return quotes


def _statuses(lake: _Lake, now: _Served, quotes: list[dict[str, Any]]) -> pl.DataFrame:
    """Per quote no longer served: its status and what the new release serves in its place."""
    moved = _same_text_elsewhere(now, [q for q in quotes if q["doc_id"] not in now.versions])
    chunks = _chunks_of(now, sorted({q["doc_id"] for q in quotes if q["doc_id"] in now.versions}))
    judged = []
    for quote in quotes:
        doc_id = quote["doc_id"]
        new: dict[str, Any] = {}  # the chunk served in its place: doc_id, text, classification
        if doc_id == ERASED:
            status, quote["old_text"] = "erased", None
        elif doc_id in now.versions:
            status = "changed"
            new = _best_match(chunks.get(doc_id, []), quote["heading"], quote["old_text"]) or {}
        elif quote["old_text"] in moved:
            status, new = "moved", moved[quote["old_text"]]
        else:
            status = "removed"
        judged.append({
            "index_version": quote["index_version"], "chunk_id": quote["chunk_id"],
            "doc_id": doc_id, "status": status, "old_text": quote["old_text"],
            "new_doc_id": new.get("doc_id"), "new_text": new.get("text"),
            "owners": lake.owners.get(doc_id, []), "classification": quote["classification"],
            "new_classification": new.get("classification"),
        })  # fmt: skip
    schema = empty_frame(ANSWER_IMPACT).schema
    columns = ["index_version", "chunk_id", "doc_id", "status", "old_text", "new_doc_id",
               "new_text", "owners", "classification", "new_classification"]  # fmt: skip
    return pl.DataFrame(judged, schema={c: schema.get(c, pl.Int64) for c in columns}, orient="row")


def _same_text_elsewhere(now: _Served, quotes: list[dict[str, Any]]) -> dict[str, dict]:
    """For quotes of documents the release no longer serves: the same text served under
    another path (a renamed file), keyed by that text."""
    texts = sorted({q["old_text"] for q in quotes if q["old_text"]})
    if not texts:
        return {}
    found = now.dataset.to_table(columns=SERVED_NOW, filter=f"text IN ({in_list(texts)})")
    return {row["text"]: row for row in found.to_pylist()}


def _chunks_of(now: _Served, doc_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    if not doc_ids:
        return {}
    found = now.dataset.to_table(
        columns=[*SERVED_NOW, "chunk_index", "heading"],
        filter=f"doc_id IN ({in_list(doc_ids)})",
    )
    chunks: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(found.to_pylist(), key=lambda r: r["chunk_index"]):
        chunks.setdefault(row["doc_id"], []).append(row)
    return chunks


def _best_match(
    chunks: list[dict[str, Any]], heading: str | None, text: str | None
) -> dict[str, Any] | None:
    """The chunk under the same heading path (any, if none is) whose text is most alike."""
    pool = [c for c in chunks if c["heading"] == heading] or chunks
    if not pool:
        return None
    ratio = difflib.SequenceMatcher(autojunk=False)
    ratio.set_seq2(text or "")

    def likeness(chunk: dict[str, Any]) -> float:
        ratio.set_seq1(chunk["text"] or "")
        return ratio.ratio()

    return max(pool, key=likeness)


def _documents(
    lake: _Lake, previous: int | None, release: int | None, rows: pl.DataFrame
) -> list[DocumentChange]:
    """Per document whose text the publications changed, or that affected answers quoted:
    its version before and after, the change (`earlier` when an earlier publication made
    it), owners, and how many answers quoted it, newly or not."""
    before, now = lake.release(previous), lake.release(release)
    old = before.versions if before else {}
    new = now.versions if now else {}
    quoted = {d: g for (d,), g in rows.partition_by("doc_id", as_dict=True).items()}
    compared = set(old) | set(new) if before else set()  # the first publication: quoted only
    changes = []
    for doc_id in sorted(compared | set(quoted)):
        group = quoted.get(doc_id)
        old_version, new_version = old.get(doc_id), new.get(doc_id)
        if old_version is None and group is not None:
            old_version = group["doc_version"].max()
        unchanged = old_version is not None and lake.sha.get((doc_id, old_version)) == lake.sha.get(
            (doc_id, new_version)
        )  # owners or redaction only: not a change of what is said
        if doc_id == ERASED:
            change = "erased"
        elif group is not None and not group["new"].any() and (doc_id not in compared or unchanged):
            change = "earlier"
        elif group is None and unchanged:
            continue
        elif old_version is None:
            change = "added"
        elif new_version is None:
            moved = group is not None and (group["status"] == "moved").any()
            change = "moved" if moved else "removed"
        else:
            change = "changed"
        answers = new_answers = 0
        if group is not None:
            answers = group["trace_id"].n_unique()
            new_answers = group.filter(pl.col("new"))["trace_id"].n_unique()
        owners = lake.owners.get(doc_id, [])
        changes.append(
            DocumentChange(doc_id, old_version, new_version, change, owners, answers, new_answers)
        )
    return sorted(changes, key=lambda d: (-d.answers, d.doc_id))


def reask(settings: Settings, encoder: QueryEncoder, found: Impact) -> dict[str, Reasked]:
    """Ask each affected question again against the impact's release, with the
    classifications it was first asked with, and say whether its top evidence changed. Only
    the redacted question is stored, so that is what is asked again: a placeholder may stand
    where the person wrote a name. The new searches are not traced: they are no answers."""
    ids = found.rows["trace_id"].unique().to_list()
    if not ids:
        return {}
    traces = read_traces(
        settings, pl.col("trace_id").is_in(ids), ["trace_id", "question", "entitled", "hits"]
    )
    reasked = {}
    traces = traces.with_columns(pl.col("entitled").list.sort().list.join(","))
    for (entitled,), group in traces.partition_by("entitled", as_dict=True).items():
        results, _ = answer_many(
            settings, encoder, group["question"].to_list(), k=1, caller=REASK_CALLER,
            version=found.release, entitled=entitled.split(","),
        )  # fmt: skip
        for trace, result in zip(group.iter_rows(named=True), results, strict=True):
            was = min(trace["hits"], key=lambda h: h["rank"])["chunk_id"] if trace["hits"] else None
            top = result.hits[0] if result.hits else None
            reasked[trace["trace_id"]] = Reasked(
                trace_id=trace["trace_id"],
                top_changed=(top.chunk_id if top else None) != was,
                top={k: getattr(top, k) for k in ("doc_id", "doc_version", "chunk_id", "heading",
                                                  "score", "text")} if top else None,
            )  # fmt: skip
    return reasked


def write_impact(settings: Settings, found: Impact, run_id: str) -> int:
    """Upsert the impact's rows into `answer_impact` (keyed by publication, answer and rank,
    so writing the same impact twice changes nothing); return how many rows it holds."""
    if found.rows.is_empty():
        return 0
    uri = settings.table_uri(ANSWER_IMPACT.name)
    with writer_lock(settings, ANSWER_IMPACT.name):  # never while a purge or the retention runs
        delta_store.merge(ANSWER_IMPACT, uri, found.rows, run_id, delta_store.upsert)
    return found.rows.height


@dataclass(frozen=True)
class Recorded:
    """The impact of one publication as `record_impact` wrote it."""

    publication: Publication
    impact: Impact
    first_time: bool  # none of its rows was stored before: news, if it lists new answers


def record_impact(settings: Settings, run_id: str) -> list[Recorded]:
    """Write the impact of each publication since the last one recorded, oldest first. With
    no record (a new home, or the record lost), every publication within the trace retention:
    rows are upserted, so nothing is stored twice."""
    events = publications(settings)
    done = read_state(settings, RECORDED)
    ids = [e.event_id for e in events]
    if done in ids:
        pending = events[ids.index(done) + 1 :]
    else:
        cutoff = datetime.now(tz=UTC) - timedelta(days=settings.trace_retention_days)
        pending = [e for e in events if e.at >= cutoff]
    stored = set(read_impact(settings, columns=["event_id"])["event_id"]) if pending else set()
    recorded = []
    for publication in pending:
        found = impact_of(settings, [publication])
        write_impact(settings, found, run_id)
        recorded.append(Recorded(publication, found, publication.event_id not in stored))
        write_state(settings, RECORDED, publication.event_id)
    return recorded


def read_impact(
    settings: Settings, where: pl.Expr | None = None, columns: list[str] | None = None
) -> pl.DataFrame:
    return delta_store.read_table(
        settings.table_uri(ANSWER_IMPACT.name), ANSWER_IMPACT.schema, columns, where
    )
