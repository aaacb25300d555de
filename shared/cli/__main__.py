"""``python -m shared.cli`` is ``billq`` (for environments without the console script)."""

from __future__ import annotations

from shared.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
