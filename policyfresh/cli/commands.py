"""The commands of `policyfresh`: each reads its arguments, calls the core and prints the
result, as JSON with `--json` or for people through `rendering`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from policyfresh.cli.rendering import (
    CHUNK_COUNTS,
    DOCUMENT_COUNTS,
    REASK_NOTE,
    VECTOR_COUNTS,
    print_evaluation,
    print_freshness,
    print_impact,
    print_purge,
    print_releases,
    print_reports,
    print_rollback,
    print_run,
    print_search,
    print_status,
    print_trace,
    progress_shown,
)
from policyfresh.index.embedding import Embedder
from policyfresh.index.holds import held_summary
from policyfresh.quality.golden import load_golden
from policyfresh.store.config import Settings
from policyfresh.store.errors import ConfigError, PoliciesNotFoundError, PolicyfreshError
from policyfresh.store.freshness import freshness_summary
from policyfresh.store.progress import advance

WARM_WORKER = "warm run worker"
RESTART_AFTER_SECONDS = 5.0

# Commands import what they use: lancedb, torch and Dagster take seconds to import, and a
# refresh with nothing to do should not wait for them.


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from policyfresh.index.watermark import record_refresh, unchanged_since_refresh

    if not settings.policies.is_dir():  # say so before a Dagster run fails on it
        raise PoliciesNotFoundError(f"policies folder not found: {settings.policies}")
    if args.allow_mass_delete:
        settings = replace(settings, allow_mass_delete=True)
    if settings.golden_cases:
        load_golden(settings.golden_cases)  # a malformed file is named before the run starts
    model_id = Embedder().model_id
    last = None if args.force else unchanged_since_refresh(settings, model_id)
    with progress_shown(enabled=not args.json):
        summary = _nothing_changed(last) if last else _refresh(settings)
    if last is None:
        record_refresh(settings, model_id, summary)
    summary["freshness"] = freshness_summary(settings)
    summary["held"] = held_summary(settings)
    status = 1 if {"failed", "blocked"} & set(summary["checks"].values()) else 0
    if args.json:
        print(json.dumps(summary))
    else:
        print_run(settings, summary)
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
    materialized = _warm_refresh(settings)
    if materialized is None:
        # The orchestration layer imports dagster; the core never does, so it is loaded here.
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


def _warm_refresh(settings: Settings) -> dict[str, Any] | None:
    """The refresh job run by the warm run worker of `policyfresh dev` on this home, followed
    to its end with its progress; None when no worker answers. Ctrl-C interrupts the run."""
    from orchestration.warm_socket import request, socket_path

    path = socket_path(settings.dagster_home)
    if not path.exists():
        return None
    golden = str(settings.golden_cases) if settings.golden_cases else "none"
    asked = {"home": str(settings.home), "policies": str(settings.policies), "golden": golden,
             "allow_mass_delete": settings.allow_mass_delete}  # fmt: skip
    child = None
    try:
        for reply in request(path, {"refresh": asked}):
            if "pid" in reply:
                child = reply["pid"]
            elif "progress" in reply:
                advance(*reply["progress"])
            elif "error" in reply:
                raise PolicyfreshError(reply["error"])
            else:
                return reply["result"]
    except KeyboardInterrupt:
        if child is not None:
            os.kill(child, signal.SIGINT)
        raise
    except OSError:
        if child is None:
            return None  # a socket left by a worker that is gone
        raise
    raise PolicyfreshError(f"the warm run worker's child {child} ended without a summary: "
                           "see the output of `policyfresh dev`")  # fmt: skip


def _reports_summary(reports: dict[str, Any] | None) -> dict[str, Any] | None:
    """Where the owners' reports are, the release they describe, and how many owners have
    something to act on."""
    if not reports:
        return None
    return {k: reports.get(k) for k in ("index", "release", "owners_needing_action")}


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


def cmd_eval(settings: Settings, args: argparse.Namespace) -> int:
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
        print_evaluation(summary, evaluation.cases.filter(pl.col("status") != "pass"))
    return 1 if summary["verdict"] == "blocked" else 0


def cmd_releases(settings: Settings, args: argparse.Namespace) -> int:
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
    else:
        print_releases(rows)
    return 0


def cmd_rollback(settings: Settings, args: argparse.Namespace) -> int:
    from policyfresh.release.releases import rollback

    result = rollback(settings, args.to, actor=args.actor, reason=args.reason)
    if args.json:
        print(json.dumps(result))
    else:
        print_rollback(result)
    return 0


def cmd_purge(settings: Settings, args: argparse.Namespace) -> int:
    from policyfresh.quality.reports import build_reports
    from policyfresh.release.purge import purge_document

    result = purge_document(settings, args.doc_id, reason=args.reason, requested_by=args.actor)
    reports = build_reports(settings, Embedder().model_id)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print_purge(result, args.actor, reports.index)
    return 0


def cmd_search(settings: Settings, args: argparse.Namespace) -> int:
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
        else:
            print_search(result)
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


def cmd_trace(settings: Settings, args: argparse.Namespace) -> int:
    from policyfresh.serve.traces import explain_trace

    report = explain_trace(settings, args.trace_id)
    if args.json:
        print(json.dumps({**report.__dict__, "stale_hits": report.stale_hits}, default=str))
    else:
        print_trace(report)
    return 0


def cmd_impact(settings: Settings, args: argparse.Namespace) -> int:
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
    print_impact(found, reasked or {})
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from policyfresh.quality.status import index_status
    from policyfresh.release.releases import release_status

    status = index_status(settings, Embedder()) | release_status(settings)
    freshness = freshness_summary(settings)
    if args.json:
        print(json.dumps(status | {"freshness": freshness}))
    else:
        print_status(status)
        print_freshness(freshness)
    lagging = status["documents_not_chunked"] + status["chunks_over_token_limit"]
    healthy = not lagging and not any(status["reconciliation"].values()) and not freshness["late"]
    return 0 if healthy and not status["waiting"] else 1


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    from policyfresh.quality.reports import ACTIONS, build_reports

    reports = build_reports(settings, Embedder().model_id, owner=args.owner)
    if args.json:
        print(json.dumps(reports.to_dict()))
    else:
        print_reports(reports, ACTIONS)
    return 0


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    from orchestration.runner import export_settings, prepare_instance

    prepare_instance(settings)
    export_settings(settings)
    workspace = Path(__file__).resolve().parents[2] / "workspace.yaml"
    print(f"Dagster UI for {settings.policies}, instance {settings.dagster_home}", file=sys.stderr)
    commands = {
        "Dagster webserver and daemon": [
            *(sys.executable, "-m", "dagster", "dev", "-w", str(workspace)),
            *args.dagster_args,
        ],
        WARM_WORKER: [sys.executable, "-m", "orchestration.warm_worker"],
    }
    if args.serve is not None:
        from policyfresh.serve.api_keys import load_api_keys

        load_api_keys(settings)  # missing keys are named before anything starts
        commands["search service"] = [
            *(sys.executable, "-m", "policyfresh.cli", "--home", str(settings.home)),
            *("--policies", str(settings.policies), "serve", "--port", str(args.serve)),
        ]
    return _supervise(commands, restart={WARM_WORKER})


def _supervise(commands: dict[str, list[str]], restart: set[str]) -> int:
    """Run the commands side by side and restart those in `restart` when they exit (not more
    often than every few seconds); when another stops, stop them all and return its code."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    children = {name: subprocess.Popen(command) for name, command in commands.items()}
    started = dict.fromkeys(commands, time.monotonic())
    try:
        while True:
            for name, child in list(children.items()):
                code = child.poll()
                if code is None:
                    continue
                if name not in restart:
                    return code
                if time.monotonic() - started[name] >= RESTART_AFTER_SECONDS:
                    print(f"policyfresh dev: the {name} exited ({code}): starting it again",
                          file=sys.stderr)  # fmt: skip
                    children[name] = subprocess.Popen(commands[name])
                    started[name] = time.monotonic()
            time.sleep(0.5)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.terminate()
        for child in children.values():
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
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
