"""`policyfresh`: build and refresh the pipeline, search with receipts, explain past answers."""

from __future__ import annotations

import logging
import sys

from policyfresh.cli.parser import build_parser
from policyfresh.store.config import Settings
from policyfresh.store.errors import PolicyfreshError


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
    except KeyboardInterrupt:
        print("policyfresh: interrupted", file=sys.stderr)
        return 130
