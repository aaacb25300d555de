"""``python -m billq`` is ``billq`` (for environments without the console script)."""

from __future__ import annotations

from billq.main import main

if __name__ == "__main__":
    raise SystemExit(main())
