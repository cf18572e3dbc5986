"""`python -m fieldhub.cli`: the same as `python -m fieldhub` (tests and benchmarks run it)."""

import sys

from fieldhub.cli import main

sys.exit(main())
