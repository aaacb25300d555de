"""``python -m api`` is ``billq api``."""

from __future__ import annotations

import sys

from api.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
