"""The arguments of `policyfresh`: one subcommand per task, each bound to its command."""

from __future__ import annotations

import argparse
import getpass

from policyfresh.cli import commands

DESCRIPTION = (
    "`policyfresh`: build and refresh the pipeline, search with receipts, explain past answers."
)
SERVICE_PORT = 8000
GOLDEN_HELP = "golden cases file (default: $POLICYFRESH_GOLDEN_CASES or evals/golden_cases.csv)"


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="policyfresh", description=DESCRIPTION)
    parser.add_argument("--home", help="state home (default: $POLICYFRESH_HOME or .policyfresh)")
    parser.add_argument(
        "--policies", help="policies folder (default: $POLICYFRESH_POLICIES or policies/)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    subcommands = parser.add_subparsers(dest="command", required=True)
    run = subcommands.add_parser(
        "run", help="materialize the whole asset graph and print a summary"
    )
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
    run.set_defaults(handler=commands.cmd_run)
    evaluation = subcommands.add_parser(
        "eval", help="evaluate the newest index with the golden cases, without publishing"
    )
    evaluation.add_argument("--golden", help=GOLDEN_HELP)
    evaluation.add_argument("--json", action="store_true")
    evaluation.set_defaults(handler=commands.cmd_eval)
    releases = subcommands.add_parser("releases", help="list releases and their verdicts")
    releases.add_argument("--json", action="store_true")
    releases.set_defaults(handler=commands.cmd_releases)
    back = subcommands.add_parser("rollback", help="serve an earlier release again")
    back.add_argument("--to", type=int, help="release id (default: the one served before)")
    back.add_argument("--reason", default="rollback from the command line", help="recorded")
    back.add_argument("--actor", default=getpass.getuser(), help="recorded (default: you)")
    back.add_argument("--json", action="store_true")
    back.set_defaults(handler=commands.cmd_rollback)
    purge = subcommands.add_parser(
        "purge", help="erase a document from every table, version, release and trace"
    )
    purge.add_argument("doc_id", help="the document, as its path under the policies folder")
    purge.add_argument(
        "--reason", default="erasure from the command line", help="recorded: a takedown, a request"
    )
    purge.add_argument("--actor", default=getpass.getuser(), help="recorded (default: you)")
    purge.add_argument("--json", action="store_true")
    purge.set_defaults(handler=commands.cmd_purge)
    search = subcommands.add_parser("search", help="hybrid search with a receipt per hit")
    search.add_argument("question", nargs="?", help="the question")
    search.add_argument("-k", type=_positive, default=5, help="hits per question (default 5)")
    search.add_argument("--questions", help="a file with one question a line")
    search.add_argument("--caller", default="cli", help="recorded in the trace (default cli)")
    search.add_argument("--json", action="store_true", help="one JSON object per question")
    search.set_defaults(handler=commands.cmd_search)
    trace = subcommands.add_parser("trace", help="reconstruct a past search from its trace id")
    trace.add_argument("trace_id")
    trace.add_argument("--json", action="store_true")
    trace.set_defaults(handler=commands.cmd_trace)
    impact = subcommands.add_parser(
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
    impact.set_defaults(handler=commands.cmd_impact)
    status = subcommands.add_parser("status", help="counts, reconciliation and index version")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=commands.cmd_status)
    report = subcommands.add_parser(
        "report", help="write the HTML quality report of every data owner, and their index"
    )
    report.add_argument("--owner", help="only this owner's report (a name such as team:hr)")
    report.add_argument("--json", action="store_true", help="print the paths and counts as JSON")
    report.set_defaults(handler=commands.cmd_report)
    serve = subcommands.add_parser("serve", help="the search service (HTTP, API keys)")
    serve.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=SERVICE_PORT, help=f"port (default {SERVICE_PORT})"
    )
    serve.set_defaults(handler=commands.cmd_serve)
    dev = subcommands.add_parser("dev", help="start the Dagster UI on this home's instance")
    dev.add_argument(
        "--serve", type=int, nargs="?", const=SERVICE_PORT, metavar="PORT",
        help=f"also start the search service on 127.0.0.1:PORT (default {SERVICE_PORT})",
    )  # fmt: skip
    dev.add_argument(
        "dagster_args", nargs="*", help="passed on to `dagster dev`, after --: dev -- -p 3001"
    )
    dev.set_defaults(handler=commands.cmd_dev)
    return parser
