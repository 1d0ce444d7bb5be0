"""`policyfresh`: build and refresh the pipeline, search with receipts, explain past answers."""

from __future__ import annotations

import argparse
import getpass
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policyfresh.index.embedding import Embedder
from policyfresh.index.holds import describe_hold, held_summary
from policyfresh.quality.golden import load_golden
from policyfresh.store.config import Settings
from policyfresh.store.errors import ConfigError, PoliciesNotFoundError, PolicyfreshError
from policyfresh.store.freshness import freshness_summary
from policyfresh.store.locks import lock_location

if TYPE_CHECKING:
    from policyfresh.serve.impact import AffectedAnswer, AffectedHit, Impact, Reasked

# Commands import what they use: lancedb, torch and Dagster take seconds to import, and a
# refresh with nothing to do should not wait for them.

DOCUMENT_COUNTS = ("added", "changed", "deleted", "unchanged", "quarantined")
CHECK_OUTCOMES = {
    "passed": "passed",
    "warned": "WARNED (nothing blocked)",
    "failed": "FAILED",
    "blocked": "FAILED (later stages skipped)",
}
CHUNK_COUNTS = (
    *("documents_rechunked", "inserted", "updated", "deleted", "blocked"),
    "rescan_changed",  # chunks whose redacted text a PII rescan changed: embedded again
)
VECTOR_COUNTS = ("embedded", "reused", "deleted")
SHOWN_SKIPPED = 5
SERVICE_PORT = 8000
GOLDEN_HELP = "golden cases file (default: $POLICYFRESH_GOLDEN_CASES or evals/golden_cases.csv)"
SIDE = 48  # characters of each column when old and new text are shown side by side
REASK_NOTE = (
    "only redacted questions are stored, so they were asked again as stored: a placeholder "
    "such as <PERSON> stands where the person wrote a name"
)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from policyfresh.index.watermark import record_refresh, unchanged_since_refresh

    if not settings.policies.is_dir():  # say so before a Dagster run fails on it
        raise PoliciesNotFoundError(f"policies folder not found: {settings.policies}")
    if args.allow_mass_delete:
        settings = replace(settings, allow_mass_delete=True)
    if settings.golden_cases:
        load_golden(settings.golden_cases)  # a malformed file is named before the run starts
    model_id = Embedder().model_id
    last = None if args.force else unchanged_since_refresh(settings, model_id)
    summary = _nothing_changed(last) if last else _refresh(settings)
    if last is None:
        record_refresh(settings, model_id, summary)
    summary["freshness"] = freshness_summary(settings)
    summary["held"] = held_summary(settings)
    status = 1 if {"failed", "blocked"} & set(summary["checks"].values()) else 0
    if args.json:
        print(json.dumps(summary))
    else:
        _print_run(settings, summary)
    return status


def _nothing_changed(last: dict[str, Any]) -> dict[str, Any]:
    """The summary of a refresh that had nothing to do: the last run's, with zero changes."""
    documents = last["documents"]
    live = sum(documents[k] for k in ("added", "changed", "unchanged"))
    release = last["release"]["served"]
    served = f"release {release} is served" if release is not None else "no release served yet"
    return {
        **last,
        "run_id": None,
        "nothing_changed_since": last["run_id"],
        "documents": dict.fromkeys(DOCUMENT_COUNTS, 0)
        | {"unchanged": live, "quarantined": documents["quarantined"]},
        "chunks": dict.fromkeys(CHUNK_COUNTS, 0),
        "vectors": last["vectors"] | dict.fromkeys(VECTOR_COUNTS, 0),
        "eval": last["eval"] and {**last["eval"], "reused": True},
        "release": last["release"] | {"published": False, "message": served},
    }


def _refresh(settings: Settings) -> dict[str, Any]:
    """Run the refresh job in the Dagster instance under the home; its summary."""
    # The orchestration layer imports dagster; the core never does, so it is loaded only here.
    from orchestration.runner import run_refresh

    materialized = run_refresh(settings)
    docs = materialized.get("policy_documents", {})
    chunks = materialized.get("policy_chunks", {})
    vectors = materialized.get("policy_vectors", {})
    summary: dict[str, Any] = {
        "run_id": materialized["run"]["run_id"],
        "home": str(settings.home),
        "policies": str(settings.policies),
        "documents": {k: docs.get(k, 0) for k in DOCUMENT_COUNTS},
        "quarantined_files": materialized.get("ingest_errors", {}).get("files", []),
        "owners_file_errors": materialized.get("ingest_errors", {}).get("owners_file_errors", []),
        "chunks": {k: chunks.get(k, 0) for k in CHUNK_COUNTS},
        "vectors": {k: vectors.get(k, 0) for k in VECTOR_COUNTS}
        | {"rows": vectors.get("dagster/row_count"), "index_version": vectors.get("table_version")},
        "eval": materialized.get("regression_eval", {}).get("summary"),
        "release": _release_summary(settings, materialized.get("served_index")),
        "reports": _reports_summary(materialized.get("quality_reports")),
        "checks": materialized["checks"],
    }
    return summary


def _reports_summary(reports: dict[str, Any] | None) -> dict[str, Any] | None:
    """Where the owners' reports are, the release they describe, and how many owners have
    something to act on."""
    if not reports:
        return None
    return {k: reports.get(k) for k in ("index", "release", "owners_needing_action")}


def _print_run(settings: Settings, summary: dict[str, Any]) -> None:
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
    _print_eval(summary["eval"])
    release = summary["release"]
    print(f"  release: {release['message']}")
    if summary.get("reports"):
        reports = summary["reports"]
        print(f"  reports: {reports['index']} (release {reports.get('release') or 'none'} served; "
              f"{reports['owners_needing_action']} owners with something to act on)")  # fmt: skip
    _print_freshness(summary["freshness"])
    checks_from = f" (from run {since})" if since else ""
    for check, outcome in summary["checks"].items():
        print(f"  check {check}: {CHECK_OUTCOMES[outcome]}{checks_from}")


def _print_freshness(freshness: dict[str, Any]) -> None:
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


def _release_summary(settings: Settings, served: dict[str, Any] | None) -> dict[str, Any]:
    """`published` and `candidate` after a run; the served release stays when it was skipped."""
    from policyfresh.release.releases import release_status

    status = release_status(settings)
    latest = (status["latest"] or {}).get("release")
    served_now = (status["published"] or {}).get("release")
    if served is None:  # the gate failed: the publishing step did not run
        message = f"candidate {latest} not published; release {served_now} keeps serving"
    else:
        message = served["message"]
    return {
        "published": bool(served and served["published"]),
        "candidate": latest,
        "served": served_now,
        "message": message,
    }


def _print_eval(evaluation: dict[str, Any] | None) -> None:
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


def _eval(settings: Settings, args: argparse.Namespace) -> int:
    import polars as pl

    from policyfresh.quality.evaluation import evaluate

    evaluation = evaluate(settings, Embedder(), run_id="cli:eval")
    if evaluation is None:
        raise PolicyfreshError(f"no vector index under {settings.vectors_uri}: run a refresh")
    summary = evaluation.summary()
    if args.json:
        print(json.dumps({**summary, "metrics": evaluation.run["metrics"],
                          "changes": evaluation.changes}, default=str))  # fmt: skip
    else:
        print(f"evaluation {summary['eval_run_id']} of index version {summary['candidate']} "
              "(`eval` publishes nothing)")  # fmt: skip
        _print_eval(summary)
        for row in evaluation.cases.filter(pl.col("status") != "pass").iter_rows(named=True):
            print(f"  {row['status']} {row['case_id']}: {'; '.join(row['failures'])}")
    return 1 if summary["verdict"] == "blocked" else 0


def _releases(settings: Settings, args: argparse.Namespace) -> int:
    from policyfresh.release.releases import read_releases, release_status

    releases = read_releases(settings)
    served = release_status(settings)["published"]
    served_id = served and served["release"]
    rows = [
        {**r, "served": r["release"] == served_id}
        for r in releases.sort("release", descending=True).iter_rows(named=True)
    ]
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    if not rows:
        print("no release evaluated yet: run a refresh")
    for r in rows:
        mark = "*" if r["served"] else " "
        published = r["published_at"].isoformat(timespec="seconds") if r["published_at"] else "-"
        print(f"{mark} release {r['release']}  {r['verdict']:<11} published {published}  "
              f"model {r['model_id']}  eval {r['eval_run_id']}")  # fmt: skip
        for reason in r["reasons"]:
            print(f"      blocked: {reason}")
    return 0


def _rollback(settings: Settings, args: argparse.Namespace) -> int:
    from policyfresh.release.releases import rollback

    result = rollback(settings, args.to, actor=args.actor, reason=args.reason)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"now serving release {result['release']} (was {result['previous_release']}), "
          f"by {result['actor']}: {result['reason']}")  # fmt: skip
    return 0


def _purge(settings: Settings, args: argparse.Namespace) -> int:
    from policyfresh.quality.reports import build_reports
    from policyfresh.release.purge import purge_document

    result = purge_document(settings, args.doc_id, reason=args.reason, requested_by=args.actor)
    reports = build_reports(settings, Embedder().model_id)
    if args.json:
        print(json.dumps(asdict(result)))
        return 0
    versions = ", ".join(f"v{v}" for v in result.versions) or "none left in policy_documents"
    print(f"purged {result.doc_id} ({versions}) by {args.actor}, recorded as {result.purge_id}")
    for table, rows in result.rows_erased.items():
        print(f"  {table}: {rows} rows erased or redacted; earlier versions removed")
    if result.releases_dropped:
        dropped = ", ".join(map(str, result.releases_dropped))
        print(f"  releases {dropped} held it and are no longer kept (no rollback to them)")
    if result.republished_release is not None:
        print(f"  release {result.republished_release} now serves, without it (not evaluated)")
    print(f"  reports rebuilt: {reports.index}")
    return 0


def _search(settings: Settings, args: argparse.Namespace) -> int:
    from policyfresh.serve.query_encoder import query_encoder

    questions = [args.question] if args.question else []
    if args.questions:
        try:
            lines = Path(args.questions).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read --questions {args.questions}: {exc}") from exc
        questions += [line.strip() for line in lines if line.strip()]
    if not questions:
        raise ConfigError("give a QUESTION or --questions FILE")
    embedder = Embedder()
    with ThreadPoolExecutor(1) as pool:  # the encoder loads while Lance and polars import
        loading = pool.submit(query_encoder, settings, embedder)
        from policyfresh.serve.search import answer_many

        encoder = loading.result()
    results, traces = answer_many(settings, encoder, questions, k=args.k, caller=args.caller)
    for result in results:
        if args.json:
            print(json.dumps(result.to_dict()))
            continue
        print(f"{result.question}\n  trace {result.trace_id}, release {result.release}, "
              f"confidence {result.confidence:.2f}, {result.latency_ms:.0f} ms")  # fmt: skip
        for rank, hit in enumerate(result.hits, start=1):
            print(f"  {rank}. {hit.doc_id} v{hit.doc_version} [{hit.heading}] "
                  f"chars {hit.char_start}-{hit.char_end} score {hit.score:.4f}")  # fmt: skip
            print("     " + " ".join(hit.text.split())[:200])
    sys.stdout.flush()  # the answers first: redacting the questions for their traces loads Presidio
    if "torch" not in sys.modules:
        # spaCy and Presidio import torch when it is installed, though their NER runs without it:
        # kept out here, where nothing else needs it, the trace is written seconds sooner.
        sys.modules["torch"] = None  # type: ignore[assignment]
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # "PyTorch was not found"
    from policyfresh.serve.trace_store import write_traces

    write_traces(settings, traces, run_id=f"search:{args.caller}")
    if encoder is embedder:  # the torch model answered: export the light one for next time
        _export_query_encoder(settings, embedder)
    return 0


def _export_query_encoder(settings: Settings, embedder: Embedder) -> None:
    from policyfresh.serve.query_encoder import ExportError, export_onnx

    try:
        export = export_onnx(settings, embedder)
    except ExportError as exc:
        print(f"note: searches keep using torch: {exc}", file=sys.stderr)
        return
    print(f"note: exported the query encoder to {export.directory} "
          f"({export.seconds:.0f} s, once per model): later searches start in about a second",
          file=sys.stderr)  # fmt: skip


def _trace(settings: Settings, args: argparse.Namespace) -> int:
    from policyfresh.serve.traces import explain_trace

    report = explain_trace(settings, args.trace_id)
    if args.json:
        print(json.dumps({**report.__dict__, "stale_hits": report.stale_hits}, default=str))
        return 0
    t = report.trace
    print(f"trace {t['trace_id']} at {t['searched_at']} by {t['caller']}: {t['question']}")
    retained = "" if report.index_retained else " (no longer retained: texts unavailable)"
    print(f"  index version {t['index_version']}{retained}, model {t['model_id']}")
    for hit in report.hits:
        print(f"  {hit['rank']}. {hit['doc_id']} v{hit['doc_version']}: {hit['status']}")
        if hit["text"]:
            print("     " + " ".join(hit["text"].split())[:200])
    print(f"  {report.stale_hits} of {len(report.hits)} hits no longer current")
    return 0


def _impact(settings: Settings, args: argparse.Namespace) -> int:
    from policyfresh.serve.impact import impact, parse_since, reask

    since = parse_since(args.since) if args.since is not None else None
    found = impact(settings, args.release, since, owner=args.owner, caller=args.caller)
    reasked = None
    if args.reask:
        from policyfresh.serve.query_encoder import query_encoder

        reasked = reask(settings, query_encoder(settings, Embedder()), found)
    if args.json:
        entry = found.to_dict(reasked)
        if reasked is not None:
            entry["reask_note"] = REASK_NOTE
        print(json.dumps(entry))
        return 0
    _print_impact(found, reasked or {})
    return 0


def _print_impact(found: Impact, reasked: dict[str, Reasked]) -> None:
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


def _status(settings: Settings, args: argparse.Namespace) -> int:
    from policyfresh.quality.status import index_status
    from policyfresh.release.releases import release_status

    status = index_status(settings, Embedder()) | release_status(settings)
    freshness = freshness_summary(settings)
    if args.json:
        print(json.dumps(status | {"freshness": freshness}))
    else:
        _print_status(status)
        _print_freshness(freshness)
    lagging = status["documents_not_chunked"] + status["chunks_over_token_limit"]
    healthy = not lagging and not any(status["reconciliation"].values()) and not freshness["late"]
    return 0 if healthy and not status["waiting"] else 1


def _print_status(status: dict[str, Any]) -> None:
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


def _report(settings: Settings, args: argparse.Namespace) -> int:
    from policyfresh.quality.reports import ACTIONS, build_reports

    reports = build_reports(settings, Embedder().model_id, owner=args.owner)
    if args.json:
        print(json.dumps(reports.to_dict()))
        return 0
    print(f"quality reports in {reports.directory}")
    print(f"  {_describes(reports.release)}")
    if reports.index:
        print(f"  index: {reports.index}")
    for report in reports.owners:
        print(f"  {report.owner}: {report.path}")
        for kind, count in report.needs_action.items():
            if count:
                print(f"    needs action: {ACTIONS[kind]}: {count}")
    if reports.data_docs:
        print(f"  Data Docs: {reports.data_docs}")
    return 0


def _describes(release: dict[str, Any]) -> str:
    """The release the reports describe, and a candidate that waits."""
    served, waiting = release["published"], release["waiting"]
    line = f"release {served['release']} served" if served else "no release served yet"
    if waiting:
        line += f"; candidate {waiting['release']} not served: {waiting['why']}"
    return line


def _dev(settings: Settings, args: argparse.Namespace) -> int:
    from orchestration.runner import export_settings, prepare_instance

    prepare_instance(settings)
    export_settings(settings)
    workspace = Path(__file__).resolve().parents[2] / "workspace.yaml"
    print(f"Dagster UI for {settings.policies}, instance {settings.dagster_home}", file=sys.stderr)
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), *args.dagster_args]
    if args.serve is None:
        os.execv(sys.executable, command)
    return _beside_the_service(settings, command, args.serve)


def _beside_the_service(settings: Settings, command: list[str], port: int) -> int:
    """Run `command` and the search service side by side; when one stops, stop the other."""
    from policyfresh.serve.api_keys import load_api_keys

    load_api_keys(settings)  # missing keys are named before anything starts
    service = [sys.executable, "-m", "policyfresh.cli", "--home", str(settings.home),
               "--policies", str(settings.policies), "serve", "--port", str(port)]  # fmt: skip
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    children = [subprocess.Popen(command), subprocess.Popen(service)]
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        return next(child.returncode for child in children if child.returncode is not None)
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from policyfresh.serve.api_keys import load_api_keys
    from policyfresh.serve.limits import server_config
    from policyfresh.serve.service import create_app

    keys = load_api_keys(settings)
    app = create_app(settings, Embedder(), keys)
    print(f"policyfresh search service for {settings.vectors_uri}: {len(keys.grants)} API keys "
          f"from {keys.source}; schema at http://{args.host}:{args.port}/openapi.json",
          file=sys.stderr)  # fmt: skip
    config = server_config(app, settings.service, host=args.host, port=args.port,
                           log_level="info", access_log=False)  # fmt: skip
    uvicorn.Server(config).run()
    return 0


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="policyfresh", description=__doc__)
    parser.add_argument("--home", help="state home (default: $POLICYFRESH_HOME or .policyfresh)")
    parser.add_argument(
        "--policies", help="policies folder (default: $POLICYFRESH_POLICIES or policies/)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="materialize the whole asset graph and print a summary")
    run.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    run.add_argument("--golden", help=GOLDEN_HELP)
    run.add_argument(
        "--force", action="store_true", help="start a run even when nothing changed since the last"
    )
    run.add_argument(
        "--allow-mass-delete",
        action="store_true",
        help="remove documents even when more than POLICYFRESH_MAX_REMOVED_SHARE of them are gone",
    )
    run.set_defaults(handler=_run)
    evaluation = commands.add_parser(
        "eval", help="evaluate the newest index with the golden cases, without publishing"
    )
    evaluation.add_argument("--golden", help=GOLDEN_HELP)
    evaluation.add_argument("--json", action="store_true")
    evaluation.set_defaults(handler=_eval)
    releases = commands.add_parser("releases", help="list releases and their verdicts")
    releases.add_argument("--json", action="store_true")
    releases.set_defaults(handler=_releases)
    back = commands.add_parser("rollback", help="serve an earlier release again")
    back.add_argument("--to", type=int, help="release id (default: the one served before)")
    back.add_argument("--reason", default="rollback from the command line", help="recorded")
    back.add_argument("--actor", default=getpass.getuser(), help="recorded (default: you)")
    back.add_argument("--json", action="store_true")
    back.set_defaults(handler=_rollback)
    purge = commands.add_parser(
        "purge", help="erase a document from every table, version, release and trace"
    )
    purge.add_argument("doc_id", help="the document, as its path under the policies folder")
    purge.add_argument(
        "--reason", default="erasure from the command line", help="recorded: a takedown, a request"
    )
    purge.add_argument("--actor", default=getpass.getuser(), help="recorded (default: you)")
    purge.add_argument("--json", action="store_true")
    purge.set_defaults(handler=_purge)
    search = commands.add_parser("search", help="hybrid search with a receipt per hit")
    search.add_argument("question", nargs="?", help="the question")
    search.add_argument("-k", type=_positive, default=5, help="hits per question (default 5)")
    search.add_argument("--questions", help="a file with one question a line")
    search.add_argument("--caller", default="cli", help="recorded in the trace (default cli)")
    search.add_argument("--json", action="store_true", help="one JSON object per question")
    search.set_defaults(handler=_search)
    trace = commands.add_parser("trace", help="reconstruct a past search from its trace id")
    trace.add_argument("trace_id")
    trace.add_argument("--json", action="store_true")
    trace.set_defaults(handler=_trace)
    impact = commands.add_parser(
        "impact", help="earlier answers whose quoted text a publication no longer serves"
    )
    impact.add_argument(
        "--release", type=int, help="the publication of this release (default: the one served)"
    )
    impact.add_argument(
        "--since", metavar="RELEASE", help="every publication after this release (or ISO time)"
    )
    impact.add_argument("--owner", help="only documents of this owner (such as team:hr)")
    impact.add_argument("--caller", help="only answers given to this caller")
    impact.add_argument(
        "--reask", action="store_true", help="ask the affected (redacted) questions again"
    )
    impact.add_argument("--json", action="store_true", help="print one JSON object")
    impact.set_defaults(handler=_impact)
    status = commands.add_parser("status", help="counts, reconciliation and index version")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)
    report = commands.add_parser(
        "report", help="write the HTML quality report of every data owner, and their index"
    )
    report.add_argument("--owner", help="only this owner's report (a name such as team:hr)")
    report.add_argument("--json", action="store_true", help="print the paths and counts as JSON")
    report.set_defaults(handler=_report)
    serve = commands.add_parser("serve", help="the search service (HTTP, API keys)")
    serve.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=SERVICE_PORT, help=f"port (default {SERVICE_PORT})"
    )
    serve.set_defaults(handler=_serve)
    dev = commands.add_parser("dev", help="start the Dagster UI on this home's instance")
    dev.add_argument(
        "--serve", type=int, nargs="?", const=SERVICE_PORT, metavar="PORT",
        help=f"also start the search service on 127.0.0.1:PORT (default {SERVICE_PORT})",
    )  # fmt: skip
    dev.add_argument(
        "dagster_args", nargs="*", help="passed on to `dagster dev`, after --: dev -- -p 3001"
    )
    dev.set_defaults(handler=_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO if args.verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    ours = logging.getLogger("policyfresh")
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    try:
        settings = Settings.load(
            home=args.home, policies=args.policies, golden=getattr(args, "golden", None)
        )
        return args.handler(settings, args)
    except PolicyfreshError as exc:
        print(f"policyfresh: error: {exc}", file=sys.stderr)
        return 2
