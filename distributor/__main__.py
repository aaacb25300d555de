"""``python -m distributor`` is ``billq distribute``."""

from __future__ import annotations

import sys

from shared.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main(["distribute", *sys.argv[1:]]))
