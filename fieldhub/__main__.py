"""`python -m fieldhub`: the CLI, imported as `fieldhub.cli` (not run as `__main__`), so the
CommandError that subcommand modules import is the very class that main() catches."""

import sys

from fieldhub.cli import main

sys.exit(main())
