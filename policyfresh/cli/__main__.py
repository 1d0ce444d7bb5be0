"""`python -m policyfresh.cli`: the same as the `policyfresh` command."""

import sys

from policyfresh.cli.main import main

sys.exit(main())
