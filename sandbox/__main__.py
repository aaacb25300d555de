"""``python -m sandbox`` is ``billq sandbox-gateway``."""

from __future__ import annotations

import sys

from sandbox.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
