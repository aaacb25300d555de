"""``python -m worker`` is ``billq worker``."""

from __future__ import annotations

import sys

from worker.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
