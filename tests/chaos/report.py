"""Print the chaos table from the JSON lines the scenarios wrote (CHAOS_RESULTS)."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table


def main(path: str) -> int:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    table = Table(title="billq chaos: charged exactly once, nothing lost")
    for col in (
        "scenario",
        "seed",
        "accounts",
        "faults injected",
        "charged once",
        "double charges",
        "lost",
        "time to settle (s)",
    ):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for r in rows:
        table.add_row(
            r["scenario"],
            str(r["seed"]),
            str(r["accounts"]),
            str(r["faults"]),
            str(r["charged_once"]),
            str(r["double_charges"]),
            str(r["lost"]),
            str(r["settle_s"]),
        )
    Console(width=140).print(table)
    bad = [
        r for r in rows if r["double_charges"] or r["lost"] or r["charged_once"] != r["accounts"]
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
