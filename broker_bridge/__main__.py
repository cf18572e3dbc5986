"""`python -m broker_bridge [--instance N] [--metrics-port P]`: the same as `fieldhub bridge`."""

from __future__ import annotations

import sys

from fieldhub.cli import main

if __name__ == "__main__":
    sys.exit(main(["bridge", *sys.argv[1:]]))
