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
from shared.billing.accounts import AccountRow, parse_row
from shared.config import Settings
from shared.entrypoint import positive_int
from shared.errors import ConfigError, ImportRejected

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


def read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs from a CSV or JSON Lines file.

    Raises:
        ConfigError: the file cannot be read or its format is unknown.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"FILE: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"FILE: {path} is not UTF-8 text") from None
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows: list[tuple[int, dict[str, Any]]] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append((number, {"__error__": f"not JSON ({exc.msg})"}))
                continue
            rows.append(
                (number, value if isinstance(value, dict) else {"__error__": "not an object"})
            )
        return rows
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        return [(reader.line_num, dict(r)) for r in reader]
    raise ConfigError(f"FILE: {path.name}: expected a .csv or .jsonl file")


def validate(
    rows: list[tuple[int, dict[str, Any]]], today: dt.date
) -> tuple[list[AccountRow], list[str]]:
    good: list[AccountRow] = []
    errors: list[str] = []
    seen: dict[int, int] = {}
    for number, raw in rows:
        if "__error__" in raw:
            errors.append(f"line {number}: {raw['__error__']}")
            continue
        try:
            row = parse_row(raw, today=today)
        except ValueError as exc:
            errors.append(f"line {number}: {exc}")
            continue
        if row.id in seen:
            errors.append(f"line {number}: id {row.id} repeats line {seen[row.id]}")
            continue
        seen[row.id] = number
        good.append(row)
    return good, errors


def _import(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db import accounts_repo
    from shared.db.pool import connect

    rows, errors = validate(read_rows(Path(args.file)), dt.datetime.now(dt.UTC).date())
    if errors:
        for line in errors:
            sys.stderr.write(f"billq: {args.file}: {line}\n")
        raise ImportRejected(f"{len(errors)} bad row(s) in {args.file}; nothing imported")

    async def main() -> tuple[int, int]:
        conn = await connect(settings)
        try:
            async with conn.transaction():
                return await accounts_repo.upsert(conn, rows)
        finally:
            await conn.close()

    inserted, updated = asyncio.run(main())
    unchanged = len(rows) - inserted - updated
    print(
        f"accounts import: {len(rows)} rows: inserted={inserted} updated={updated} "
        f"unchanged={unchanged}"
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
    from shared.db import accounts_repo

    at = args.at or dt.datetime.now(dt.UTC)
    row = asyncio.run(_with_pool(settings, lambda pool: accounts_repo.cancel(pool, args.id, at)))
    if row is None:
        raise ConfigError(f"ID: no account {args.id}")
    print(
        f"account {args.id}: cancelled effective {at.isoformat()}; status {row['before']} → "
        f"{row['after']}; no period starting at or after it is billed"
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
        "number) imports nothing. Re-importing updates changed accounts by id "
        "without touching their billing state.",
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
        "update-payment-method", help="replace the card; a past-due or suspended account is retried"
    )
    p.add_argument("id", type=positive_int, metavar="ID")
    p.add_argument("payment_method", metavar="PAYMENT_METHOD", help="gateway token, e.g. pm_...")
    p.set_defaults(handler=_update_pm)
