"""`ragfresh`: build and refresh the pipeline, search with receipts, explain past answers."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from ragfresh.config import Settings

DOCUMENT_COUNTS = ("added", "changed", "deleted", "unchanged", "quarantined")


def _run(settings: Settings, args: argparse.Namespace) -> int:
    # The orchestration layer imports dagster; the core never does, so it is loaded only here.
    from orchestration.runner import run_refresh

    materialized = run_refresh(settings)
    docs = materialized.get("policy_documents", {})
    summary: dict[str, Any] = {
        "run_id": materialized["run"]["run_id"],
        "home": str(settings.home),
        "policies": str(settings.policies),
        "documents": {k: docs.get(k, 0) for k in DOCUMENT_COUNTS},
        "quarantined_files": materialized.get("ingest_errors", {}).get("files", []),
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"ragfresh run {summary['run_id']} over {settings.policies}")
    print(f"  state: {settings.home} (Dagster instance: {settings.dagster_home})")
    print("  documents: " + ", ".join(f"{k} {summary['documents'][k]}" for k in DOCUMENT_COUNTS))
    for error in summary["quarantined_files"]:
        print(f"  quarantined {error['path']}: {error['reason']}")
    return 0


def _dev(settings: Settings, args: argparse.Namespace) -> int:
    from orchestration.runner import prepare_instance

    prepare_instance(settings)
    os.environ["RAGFRESH_HOME"] = str(settings.home)
    os.environ["RAGFRESH_POLICIES"] = str(settings.policies)
    print(f"Dagster UI for {settings.policies}, instance {settings.dagster_home}", file=sys.stderr)
    os.execvp("dagster", ["dagster", "dev", "-w", "workspace.yaml", *args.dagster_args])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragfresh", description=__doc__)
    parser.add_argument("--home", help="state home (default: $RAGFRESH_HOME or .ragfresh)")
    parser.add_argument(
        "--policies", help="policies folder (default: $RAGFRESH_POLICIES or policies/)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="materialize the whole asset graph and print a summary")
    run.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    run.set_defaults(handler=_run)
    dev = commands.add_parser("dev", help="start the Dagster UI on this home's instance")
    dev.add_argument("dagster_args", nargs="*", help="passed on to `dagster dev`")
    dev.set_defaults(handler=_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO if args.verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    settings = Settings.load(home=args.home, policies=args.policies)
    try:
        return args.handler(settings, args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"ragfresh: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
