"""``python -m distributor`` is ``billq distribute``."""

from __future__ import annotations

import sys

from distributor.cli import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
