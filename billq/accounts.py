"""``billq accounts import|list|show|update-payment-method``."""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from billq import output
from shared.billing.accounts import COLUMNS, REQUIRED, AccountRow, parse_row, unknown_columns
from shared.config import Settings
from shared.entrypoint import positive_int
from shared.errors import ConfigError, ImportRejected, InvalidField

LIST_COLUMNS = (
    "id",
    "name",
    "email",
    "amount_cents",
    "currency",
    "billing_interval",
    "billing_anchor_day",
    "next_billing_at",
    "status",
    "dunning_attempt",
    "dunning_next_at",
)


Row = tuple[int, dict[str, Any]]
# A row that could not even be read carries its message (after "line N") under this key.
_ERROR = "__error__"


def _csv_rows(path: Path) -> list[Row]:
    """CSV records with the line each starts on. The csv module reads the file object itself,
    so a quoted field keeps its newlines (splitting lines first would cut such a record)."""
    rows: list[Row] = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, strict=True)
        try:
            header = [h.strip() for h in next(reader, [])]
        except csv.Error as exc:
            raise ImportRejected(
                f"{path.name}: line 1: not CSV ({exc}); nothing imported"
            ) from None
        if not header:
            raise ConfigError(f"FILE: {path.name} is empty (expected a header line)")
        problem = _header_problems(header)
        if problem:
            raise ImportRejected(f"{path.name}: line 1, {problem}; nothing imported")
        while True:
            start = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                rows.append((start, {_ERROR: f": not CSV ({exc})"}))
                break  # the reader cannot resynchronise after a malformed record
            if not record:
                continue  # a blank line
            if len(record) > len(header):
                rows.append(
                    (
                        start,
                        {
                            _ERROR: f", column {len(header) + 1}: a field beyond the header's "
                            f"{len(header)} columns (extra columns are refused)"
                        },
                    )
                )
                continue
            rows.append((start, dict(zip(header, record, strict=False))))
    return rows


def _header_problems(header: list[str]) -> str:
    """The header's first problem as "column N: ...", or ""."""
    for index, name in enumerate(header, start=1):
        if header.index(name) != index - 1:
            return f"column {index}: {name!r} is named twice"
        if unknown_columns([name]):
            return (
                f"column {index}: unknown column {name!r} (extra columns are refused; "
                f"billq reads {', '.join(COLUMNS)})"
            )
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        return f"column {len(header) + 1}: missing column(s) {', '.join(missing)}"
    return ""


def _jsonl_rows(text: str) -> list[Row]:
    rows: list[Row] = []
    # JSON Lines are split on \n only: str.splitlines would also split inside a JSON string
    # on characters such as U+2028, which JSON allows unescaped.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            rows.append((number, {_ERROR: f", column {exc.colno}: not JSON ({exc.msg})"}))
            continue
        except (RecursionError, ValueError) as exc:
            # Nesting deeper than Python's stack, or an integer longer than int() accepts.
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            rows.append((number, {_ERROR: f": not JSON ({reason[:80]})"}))
            continue
        if not isinstance(value, dict):
            rows.append((number, {_ERROR: ", column 1: not a JSON object"}))
            continue
        rows.append((number, value))
    return rows


def read_rows(path: Path) -> list[Row]:
    """(line number, row) pairs from a CSV or JSON Lines file; a CSV row's line is where its
    record starts.

    Raises:
        ConfigError: the file cannot be read or its format is unknown.
        ImportRejected: the CSV header is wrong (unknown, repeated or missing columns).
    """
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".json", ".csv"):
        raise ConfigError(f"FILE: {path.name}: expected a .csv or .jsonl file")
    try:
        if suffix == ".csv":
            return _csv_rows(path)
        return _jsonl_rows(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise ConfigError(f"FILE: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"FILE: {path} is not UTF-8 text") from None


def validate(rows: list[Row], today: dt.date) -> tuple[list[AccountRow], list[str]]:
    """The rows that are good, and one message per bad row naming its line and column."""
    good: list[AccountRow] = []
    errors: list[str] = []
    seen: dict[int, int] = {}
    for number, raw in rows:
        if _ERROR in raw:
            errors.append(f"line {number}{raw[_ERROR]}")
            continue
        try:
            row = parse_row(raw, today=today)
            _check_chargeable(row)
        except InvalidField as exc:
            errors.append(f"line {number}, column {exc.column}: {exc.reason}")
            continue
        if row.id in seen:
            errors.append(f"line {number}, column id: id {row.id} repeats line {seen[row.id]}")
            continue
        seen[row.id] = number
        good.append(row)
    return good, errors


def _check_chargeable(row: AccountRow) -> None:
    """The gateway must take the currency and the exact amount, or every charge would die."""
    from shared.gateway import amounts

    if row.currency.lower() not in amounts.accepted_currencies():
        raise InvalidField("currency", f"{row.currency} is not accepted by the payment gateway")
    try:
        amounts.check_chargeable(row.amount_cents, row.currency)
    except ValueError as exc:
        raise InvalidField("amount_cents", str(exc)) from None


def _import(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db import accounts_repo
    from shared.db.pool import connect

    today = dt.datetime.now(dt.UTC).date()
    rows, errors = validate(read_rows(Path(args.file)), today)
    if errors:
        for line in errors:
            sys.stderr.write(f"billq: {args.file}: {line}\n")
        raise ImportRejected(f"{len(errors)} bad row(s) in {args.file}; nothing imported")

    async def main() -> accounts_repo.ImportCounts:
        conn = await connect(settings)
        try:
            async with conn.transaction():
                return await accounts_repo.import_rows(conn, rows, today=today)
        finally:
            await conn.close()

    counts = asyncio.run(main())
    for kept in counts.kept_cancelled:
        when = kept.cancelled_at.isoformat() if kept.cancelled_at else "earlier"
        sys.stderr.write(
            f"billq: {args.file}: account {kept.account_id}: status active ignored: cancelled by "
            f"{kept.cancelled_by} ({when}) with `billq accounts cancel`; it stays cancelled — "
            f"`billq accounts reactivate {kept.account_id}` bills it again\n"
        )
    print(
        f"accounts import: {len(rows)} rows: inserted={counts.inserted} "
        f"updated={counts.updated} unchanged={len(rows) - counts.changed} "
        f"cancelled={counts.cancelled} reactivated={counts.reactivated} "
        f"kept_cancelled={len(counts.kept_cancelled)}"
    )
    return 0


def _instant(flag: str) -> Any:
    def parse(text: str) -> dt.datetime:
        from shared.billing.periods import parse_as_of

        try:
            return parse_as_of(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("--as-of", flag)) from None

    return parse


_due_before = _instant("--due-before")


async def _with_pool(settings: Settings, fn: Any) -> Any:
    from shared.db.pool import create_pool

    pool = await create_pool(settings, min_size=1, max_size=2)
    try:
        return await fn(pool)
    finally:
        await pool.close()


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db import accounts_repo

    rows = asyncio.run(
        _with_pool(
            settings,
            lambda pool: accounts_repo.list_accounts(
                pool, args.status, args.due_before, args.limit
            ),
        )
    )
    if args.json:
        output.print_json(output.rows_to_dicts(rows))
    elif args.csv:
        output.print_csv(rows, LIST_COLUMNS)
    else:
        output.print_table(rows, LIST_COLUMNS)
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    from shared import views

    data = asyncio.run(_with_pool(settings, lambda pool: views.account(pool, args.id)))
    if args.json:
        output.print_json(data)
        return 0
    for key, value in data.items():
        if key != "events":
            print(f"{key:>18}: {output.plain(value) if value is not None else '-'}")
    print("events:")
    output.print_table(
        data["events"], ("at", "kind", "from_status", "to_status", "reason", "job_id")
    )
    return 0


def _update_pm(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db import accounts_repo

    row = asyncio.run(
        _with_pool(
            settings,
            lambda pool: accounts_repo.update_payment_method(pool, args.id, args.payment_method),
        )
    )
    if row is None:
        raise ConfigError(f"ID: no account {args.id}")
    retry = " (unpaid period retried at the next distribute)" if row["after"] == "past_due" else ""
    print(
        f"account {args.id}: payment method updated; status {row['before']} → {row['after']}{retry}"
    )
    return 0


def _cancel(args: argparse.Namespace, settings: Settings) -> int:
    from billq.fleet import actor
    from shared.db import accounts_repo

    at = args.at or dt.datetime.now(dt.UTC)
    row = asyncio.run(
        _with_pool(settings, lambda pool: accounts_repo.cancel(pool, args.id, at, actor()))
    )
    if row is None:
        raise ConfigError(f"ID: no account {args.id}")
    print(
        f"account {args.id}: cancelled effective {at.isoformat()}; status {row['before']} → "
        f"{row['after']}; no period starting at or after it is billed"
    )
    return 0


def _reactivate(args: argparse.Namespace, settings: Settings) -> int:
    from billq.fleet import actor
    from shared.db import accounts_repo

    today = dt.datetime.now(dt.UTC).date()
    found, row = asyncio.run(
        _with_pool(
            settings,
            lambda pool: accounts_repo.reactivate(pool, args.id, actor(), today=today),
        )
    )
    if not found:
        raise ConfigError(f"ID: no account {args.id}")
    if row is None:
        print(f"account {args.id}: not cancelled and no cancellation scheduled; nothing to undo")
        return 0
    print(
        f"account {args.id}: reactivated; status {row['status']}; billed again from "
        f"{row['next_billing_at'].isoformat()} (never for the time it was cancelled)"
    )
    return 0


def register(sub: Any) -> None:
    accounts = sub.add_parser("accounts", help="import, list and inspect accounts")
    verbs = accounts.add_subparsers(
        dest="verb", metavar="VERB", required=True, parser_class=type(accounts)
    )

    p = verbs.add_parser(
        "import",
        help="load accounts from CSV or JSON Lines (all or nothing)",
        description="Validate every row first; any bad row (reported by line "
        "and column) imports nothing. Re-importing updates changed accounts by id "
        "without touching their billing state; a status column cancels "
        "(cancelled) or reactivates (active) an account, never overriding "
        "billq's own past_due/suspended. An account an operator cancelled "
        "(`accounts cancel`) stays cancelled whatever the file says: such rows are "
        "reported (kept_cancelled=N) and `accounts reactivate ID` undoes the cancel.",
    )
    p.add_argument("file", help="a .csv or .jsonl file with the accounts contract columns")
    p.set_defaults(handler=_import)

    p = verbs.add_parser("list", help="list accounts")
    p.add_argument("--status", choices=["active", "past_due", "suspended", "cancelled"])
    p.add_argument("--due-before", type=_due_before, help="next_billing_at before this time")
    p.add_argument("--limit", type=positive_int, default=1000)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    p.set_defaults(handler=_list)

    p = verbs.add_parser("show", help="one account with its event history")
    p.add_argument("id", type=positive_int, metavar="ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_show)

    p = verbs.add_parser(
        "cancel",
        help="cancel an account: no period that starts at or after --at is billed",
        description="Cancel now, or at --at (ISO 8601). Open jobs for periods that start "
        "after the cancellation end without charging; a period already paid stays paid.",
    )
    p.add_argument("id", type=positive_int, metavar="ID")
    p.add_argument(
        "--at", type=_instant("--at"), help="when the cancellation takes effect (default: now)"
    )
    p.set_defaults(handler=_cancel)

    p = verbs.add_parser(
        "reactivate",
        help="undo a cancel, an operator's too, or withdraw a scheduled one",
        description="Reactivate a cancelled account — the only way to undo `accounts cancel` "
        "(an import's status=active does not) — or withdraw a cancellation scheduled with "
        "--at. Billed again from its next anchored date on or after today, never for the "
        "time it was cancelled. Recorded in operator_actions with who did it.",
    )
    p.add_argument("id", type=positive_int, metavar="ID")
    p.set_defaults(handler=_reactivate)

    p = verbs.add_parser(
        "update-payment-method", help="replace the card; a past-due or suspended account is retried"
    )
    p.add_argument("id", type=positive_int, metavar="ID")
    p.add_argument("payment_method", metavar="PAYMENT_METHOD", help="gateway token, e.g. pm_...")
    p.set_defaults(handler=_update_pm)
