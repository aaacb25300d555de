"""``python -m dashboard`` is ``billq dashboard``."""

from __future__ import annotations

import sys

from dashboard.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
