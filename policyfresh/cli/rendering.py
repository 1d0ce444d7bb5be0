"""What the commands print for people: sentences and tables on stdout, progress on stderr.
`--json` output is printed by the commands themselves, as the values are."""

from __future__ import annotations

import itertools
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from policyfresh.index.holds import describe_hold
from policyfresh.store.config import Settings
from policyfresh.store.locks import lock_location
from policyfresh.store.progress import listening

if TYPE_CHECKING:
    import polars as pl

    from policyfresh.quality.reports import ReportSet
    from policyfresh.release.purge import PurgeResult
    from policyfresh.serve.impact import AffectedAnswer, AffectedHit, Impact, Reasked
    from policyfresh.serve.search import SearchResult
    from policyfresh.serve.traces import TraceReport

DOCUMENT_COUNTS = ("added", "changed", "deleted", "unchanged", "quarantined")
CHUNK_COUNTS = (
    *("documents_rechunked", "inserted", "updated", "deleted", "blocked"),
    "rescan_changed",  # chunks whose redacted text a PII rescan changed: embedded again
)
VECTOR_COUNTS = ("embedded", "reused", "deleted")
CHECK_OUTCOMES = {
    "passed": "passed",
    "warned": "WARNED (nothing blocked)",
    "failed": "FAILED",
    "blocked": "FAILED (later stages skipped)",
}
SHOWN_SKIPPED = 5
SIDE = 48  # characters of each column when old and new text are shown side by side
REASK_NOTE = (
    "only redacted questions are stored, so they were asked again as stored: a placeholder "
    "such as <PERSON> stands where the person wrote a name"
)


def print_run(settings: Settings, summary: dict[str, Any]) -> None:
    since = summary.get("nothing_changed_since")
    if since:
        print(f"policyfresh run: nothing changed since run {since} (policies, tables, model and "
              "settings as it left them): no run started; --force runs anyway")  # fmt: skip
    else:
        print(f"policyfresh run {summary['run_id']} over {settings.policies}")
    print(f"  state: {settings.home} (Dagster instance: {settings.dagster_home})")
    print(f"  lake: {settings.lake_uri}; vectors: {settings.vectors_uri}; "
          f"writer locks: {lock_location(settings)}")  # fmt: skip
    for stage, keys in (("documents", DOCUMENT_COUNTS), ("chunks", CHUNK_COUNTS)):
        print(f"  {stage}: " + ", ".join(f"{k} {summary[stage][k]}" for k in keys))
    v = summary["vectors"]
    print(
        f"  vectors: embedded {v['embedded']}, reused {v['reused']}, deleted {v['deleted']}; "
        f"{v['rows']} rows at index version {v['index_version']}"
    )
    for error in summary["quarantined_files"]:
        print(f"  quarantined {error['path']}: {error['reason']}")
    for reason in summary["owners_file_errors"]:
        print(f"  {reason} (owners and classification kept as they were)")
    for held in summary["held"]:
        print(f"  HELD BACK: {describe_hold(held)}")
    print_eval(summary["eval"])
    release = summary["release"]
    print(f"  release: {release['message']}")
    if summary.get("reports"):
        reports = summary["reports"]
        print(f"  reports: {reports['index']} (release {reports.get('release') or 'none'} served; "
              f"{reports['owners_needing_action']} owners with something to act on)")  # fmt: skip
    print_freshness(summary["freshness"])
    checks_from = f" (from run {since})" if since else ""
    for check, outcome in summary["checks"].items():
        print(f"  check {check}: {CHECK_OUTCOMES[outcome]}{checks_from}")


def print_freshness(freshness: dict[str, Any]) -> None:
    objective = freshness["objective_seconds"]
    median = freshness["served_lag_p50_seconds"]
    lag = f", median lag {median:.0f} s" if median is not None else ""
    print(f"  freshness: {freshness['served']} document versions served{lag}; "
          f"{freshness['pending']} pending, {freshness['at_risk']} at risk, "
          f"{freshness['late']} late (objective {objective:.0f} s)")  # fmt: skip
    for doc in freshness["waiting"]:
        what = "removal of" if doc["removal"] else "version"
        print(f"  {doc['state'].upper().replace('_', ' ')}: {what} {doc['doc_id']} "
              f"v{doc['doc_version']} waiting {doc['lag_seconds']:.0f} s, owners "
              f"{', '.join(doc['owners'])}")  # fmt: skip


def print_eval(evaluation: dict[str, Any] | None) -> None:
    if evaluation is None:
        return
    if evaluation["verdict"] == "unevaluated":
        print("  eval: UNEVALUATED - no golden case applies to these policies: nothing gates "
              "this release (set POLICYFRESH_GOLDEN_CASES or --golden)")  # fmt: skip
    else:
        reused = " (already evaluated)" if evaluation["reused"] else ""
        print(
            f"  eval: {evaluation['verdict']}{reused}, {evaluation['cases']} cases: hit@5 "
            f"{evaluation['hit_at_5']}, MRR {evaluation['mrr']}, evidence recall@5 "
            f"{evaluation['evidence_recall_at_5']}; affected {len(evaluation['affected'])}, "
            f"newly failing {len(evaluation['newly_failing'])}"
        )
    for case in evaluation["needs_review"]:
        print(f"  needs review (policy changed or evidence moved): {case}")
    for reason in evaluation["reasons"]:
        print(f"  blocking: {reason}")
    skipped = evaluation["skipped"]
    for line in skipped[:SHOWN_SKIPPED]:
        print(f"  not evaluated: {line}")
    if len(skipped) > SHOWN_SKIPPED:
        print(f"  ... and {len(skipped) - SHOWN_SKIPPED} more cases not evaluated "
              "(all in `policyfresh eval --json`, and in eval_runs.skipped)")  # fmt: skip


def print_status(status: dict[str, Any]) -> None:
    """The status in sentences: what is stored, whether it reconciles, what is served and what
    waits."""
    print(f"policyfresh home {status['home']}")
    print(f"  lake: {status['lake']}; vectors: {status['vectors_uri']}; "
          f"writer locks: {status['locks']}; reports: {status['reports']}")  # fmt: skip
    print(f"  {status['documents']} documents, {status['chunks']} chunks "
          f"({status['blocked_chunks']} blocked by PII rules), {status['vectors']} vectors at "
          f"index version {status['index_version']}, model {status['model_id']}")  # fmt: skip
    off = {k.replace("_", " "): v for k, v in status["reconciliation"].items() if v}
    print("  the vectors reconcile with the chunks" if not off else
          "  the vectors do NOT reconcile with the chunks: "
          + ", ".join(f"{count} {kind}" for kind, count in off.items()))  # fmt: skip
    if status["documents_not_chunked"]:
        print(f"  {status['documents_not_chunked']} documents not chunked yet")
    if status["chunks_over_token_limit"]:
        print(f"  {status['chunks_over_token_limit']} chunks over the model's token limit")
    published = status["published"]
    if published:
        print(f"  release {published['release']} is served since {published['published_at']}"
              f" ({published['age_seconds']} s), verdict {published['verdict']}")  # fmt: skip
        if published["verdict"] == "unevaluated":
            print("  note: the served release is UNEVALUATED: no golden case gates it")
    else:
        print("  no release is served yet: run a refresh")
    waiting = status["waiting"]
    if waiting:
        print(f"  candidate {waiting['release']} waits: {waiting['why']}")
    confidence = status["confidence"]
    print(f"  confidence: {confidence['model_id']}, {confidence['status']}; questions under "
          f"{confidence['threshold']} escalate")  # fmt: skip


def print_impact(found: Impact, reasked: dict[str, Reasked]) -> None:
    """The impact grouped by owner, then document, with old and new text side by side."""
    if found.publications:
        last = found.publications[-1]
        print(f"impact of {len(found.publications)} publication(s) up to release {found.release}"
              f" ({last.action} at {last.at.isoformat(timespec='seconds')}),"
              f" compared with release {found.previous_release}")  # fmt: skip
    if found.not_kept:
        print(f"  not judged: releases {found.not_kept} are no longer kept (erased since)")
    totals = found.totals()
    if not totals["answers"]:
        print("No earlier answer is affected: every text they quoted is still served there.")
        return
    print(f"{totals['answers']} earlier answers affected ({totals['new_answers']} first by this"
          f" publication), {totals['hits']} hits, in {totals['documents']} documents")  # fmt: skip
    if reasked:
        print(f"note: {REASK_NOTE}")
    answers = found.answers
    for owner in sorted({o for d in found.documents for o in d.owners or ["(unowned)"]}):
        print(f"\n{owner}")
        for document in found.documents:
            if not document.answers or owner not in (document.owners or ["(unowned)"]):
                continue
            print(f"  {document.doc_id} v{document.old_version} -> v{document.new_version}"
                  f" ({document.change}): {document.answers} answers,"
                  f" {document.new_answers} new")  # fmt: skip
            for answer in answers:
                hits = [h for h in answer.hits if h.doc_id == document.doc_id]
                if hits:
                    _print_affected(answer, hits, reasked.get(answer.trace_id))


def _print_affected(answer: AffectedAnswer, hits: list[AffectedHit], again: Reasked | None) -> None:
    new = "new" if answer.new else f"since release {answer.affected_by}"
    at = answer.searched_at.isoformat(timespec="seconds")
    print(f"    trace {answer.trace_id} at {at} by {answer.caller} from release "
          f"{answer.release} ({new}): {answer.question}")  # fmt: skip
    for hit in hits:
        moved = f" to {hit.new_doc_id}" if hit.status == "moved" else ""
        print(f"      hit {hit.rank} {hit.status}{moved}")
        old, now = (" ".join((text or "(none)").split()) for text in (hit.old_text, hit.new_text))
        columns = [textwrap.wrap(old, SIDE) or [""], textwrap.wrap(now, SIDE) or [""]]
        print(f"        {'was':<{SIDE}} | now")
        for left, right in itertools.zip_longest(*columns, fillvalue=""):
            print(f"        {left:<{SIDE}} | {right}")
    if again is not None:
        top = again.top
        shown = f"{top['doc_id']} v{top['doc_version']} [{top['heading']}]" if top else "no hit"
        changed = "changed" if again.top_changed else "unchanged"
        print(f"      asked again: top evidence {changed}, now {shown}")


def describe_release(release: dict[str, Any]) -> str:
    """The release the reports describe, and a candidate that waits."""
    served, waiting = release["published"], release["waiting"]
    line = f"release {served['release']} served" if served else "no release served yet"
    if waiting:
        line += f"; candidate {waiting['release']} not served: {waiting['why']}"
    return line


def print_releases(rows: list[dict[str, Any]]) -> None:
    """One line per release, newest first, the served one starred, with why it was blocked."""
    if not rows:
        print("no release evaluated yet: run a refresh")
    for r in rows:
        mark = "*" if r["served"] else " "
        published = r["published_at"].isoformat(timespec="seconds") if r["published_at"] else "-"
        print(f"{mark} release {r['release']}  {r['verdict']:<11} published {published}  "
              f"model {r['model_id']}  eval {r['eval_run_id']}")  # fmt: skip
        for reason in r["reasons"]:
            print(f"      blocked: {reason}")


def print_rollback(result: dict[str, Any]) -> None:
    print(f"now serving release {result['release']} (was {result['previous_release']}), "
          f"by {result['actor']}: {result['reason']}")  # fmt: skip


def print_purge(result: PurgeResult, actor: str, reports_index: Any) -> None:
    """What an erasure removed, the releases it cost, and what serves now."""
    versions = ", ".join(f"v{v}" for v in result.versions) or "none left in policy_documents"
    print(f"purged {result.doc_id} ({versions}) by {actor}, recorded as {result.purge_id}")
    for table, rows in result.rows_erased.items():
        print(f"  {table}: {rows} rows erased or redacted; earlier versions removed")
    if result.releases_dropped:
        dropped = ", ".join(map(str, result.releases_dropped))
        print(f"  releases {dropped} held it and are no longer kept (no rollback to them)")
    if result.republished_release is not None:
        print(f"  release {result.republished_release} now serves, without it (not evaluated)")
    print(f"  reports rebuilt: {reports_index}")


def print_evaluation(summary: dict[str, Any], failing: pl.DataFrame) -> None:
    """An evaluation run by hand: its verdict and every case that did not pass."""
    print(f"evaluation {summary['eval_run_id']} of index version {summary['candidate']} "
          "(`eval` publishes nothing)")  # fmt: skip
    print_eval(summary)
    for row in failing.iter_rows(named=True):
        print(f"  {row['status']} {row['case_id']}: {'; '.join(row['failures'])}")


def print_search(result: SearchResult) -> None:
    """The question, its receipt (trace, release, confidence, time) and each hit's passage; a
    question the confidence model escalates says so first."""
    escalate = " (escalate: a person should answer)" if result.escalate else ""
    print(f"{result.question}\n  trace {result.trace_id}, release {result.release}, "
          f"confidence {result.confidence:.2f}{escalate}, {result.latency_ms:.0f} ms")  # fmt: skip
    for rank, hit in enumerate(result.hits, start=1):
        print(f"  {rank}. {hit.doc_id} v{hit.doc_version} [{hit.heading}] "
              f"chars {hit.char_start}-{hit.char_end} score {hit.score:.4f}")  # fmt: skip
        print("     " + " ".join(hit.text.split())[:200])


def print_trace(report: TraceReport) -> None:
    """A past search rebuilt: who asked what, from which index, and which hits went stale."""
    t = report.trace
    print(f"trace {t['trace_id']} at {t['searched_at']} by {t['caller']}: {t['question']}")
    retained = "" if report.index_retained else " (no longer retained: texts unavailable)"
    print(f"  index version {t['index_version']}{retained}, model {t['model_id']}")
    for hit in report.hits:
        print(f"  {hit['rank']}. {hit['doc_id']} v{hit['doc_version']}: {hit['status']}")
        if hit["text"]:
            print("     " + " ".join(hit["text"].split())[:200])
    print(f"  {report.stale_hits} of {len(report.hits)} hits no longer current")


def print_reports(reports: ReportSet, actions: dict[str, str]) -> None:
    """Where each owner's page is, and what it asks them to act on."""
    print(f"quality reports in {reports.directory}")
    print(f"  {describe_release(reports.release)}")
    if reports.index:
        print(f"  index: {reports.index}")
    for report in reports.owners:
        print(f"  {report.owner}: {report.path}")
        for kind, count in report.needs_action.items():
            if count:
                print(f"    needs action: {actions[kind]}: {count}")
    if reports.data_docs:
        print(f"  Data Docs: {reports.data_docs}")


PLAIN_EVERY_SECONDS = 5.0  # a plain progress line at most this often, and at the end


@contextmanager
def progress_shown(enabled: bool = True) -> Iterator[None]:
    """Show the progress of long work on stderr while the block runs: a bar per kind of work
    with its rate and time left on a terminal, a plain line every few seconds otherwise."""
    if not enabled:
        yield
    elif sys.stderr.isatty():
        with _bars() as show, listening(show):
            yield
    else:
        with listening(_PlainProgress()):
            yield


@contextmanager
def _bars() -> Iterator[Any]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:.1f}/s" if task.speed else "")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True)) as bars:
        tasks: dict[str, Any] = {}

        def show(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bars.add_task(what, total=total)
            bars.update(tasks[what], completed=done, total=total)

        yield show


class _PlainProgress:
    """`documents parsed: 120/246 (11.8/s, about 11 s left)`, at most every few seconds."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.shown: dict[str, float] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done == 0 or what not in self.started:
            self.started[what], self.shown[what] = now, now
            return
        if done < total and now - self.shown[what] < PLAIN_EVERY_SECONDS:
            return
        self.shown[what] = now
        rate = done / max(now - self.started[what], 1e-9)
        left = f", about {(total - done) / rate:.0f} s left" if done < total else ""
        print(f"{what}: {done}/{total} ({rate:.1f}/s{left})", file=sys.stderr, flush=True)
