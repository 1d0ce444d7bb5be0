"""`python -m policyfresh.cli`: the same as the `policyfresh` command."""

import sys

from policyfresh.cli.commands import main

sys.exit(main())
