"""`python -m fieldhub`: the command line, fieldhub.cli (the local stack starts its processes
this way)."""

import sys

from fieldhub.cli import main

sys.exit(main())
