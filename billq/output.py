"""Printing for people (aligned text) and scripts (JSON, CSV) — one place, one style."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any


def plain(value: Any) -> Any:
    """JSON-friendly value: ISO dates, strings for decimals."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def rows_to_dicts(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{k: plain(v) for k, v in dict(r).items()} for r in rows]


def print_json(data: Any) -> None:
    print(json.dumps(plain(data)))


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def csv_cell(value: Any) -> Any:
    """One CSV cell, neutralised as OWASP recommends: a text cell that a spreadsheet would
    read as a formula gets a leading single quote. Numbers (``-5``, ``12.50``) stay numbers."""
    if not isinstance(value, str) or not value.startswith(_FORMULA_START):
        return value
    if _NUMBER.match(value):
        return value
    return "'" + value


def print_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Every ``--csv`` output goes through here, so every cell is neutralised."""
    writer = csv.DictWriter(sys.stdout, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for r in rows_to_dicts(rows):
        writer.writerow({k: csv_cell(v) for k, v in r.items()})


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    data = [
        [("" if v is None else str(v)) for v in (plain(dict(r).get(c)) for c in columns)]
        for r in rows
    ]
    widths = [max([len(c)] + [len(row[i]) for row in data]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in data:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def money(minor: int, currency: str) -> str:
    """An amount in the currency's ISO 4217 minor units, for people: ``465,830 JPY``."""
    from shared.billing.money import format_amount

    return format_amount(minor, currency)
