"""``python -m worker`` is ``billq worker``."""

from __future__ import annotations

import sys

from shared.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main(["worker", *sys.argv[1:]]))
