"""Finance views: ``billq runs``, ``billq report RUN``, ``billq invoices list|show``."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
from typing import Any

from billq import output
from shared.config import Settings
from shared.entrypoint import positive_int
from shared.errors import ConfigError

RUN_COLUMNS = (
    "id",
    "as_of",
    "state",
    "total",
    "succeeded",
    "declined",
    "dead",
    "in_flight",
    "hook",
    "started_at",
    "finished_at",
)
INVOICE_COLUMNS = (
    "number",
    "account_id",
    "period_start",
    "period_end",
    "amount_cents",
    "currency",
    "status",
    "gateway_charge_id",
)


async def _with_pool(settings: Settings, fn: Any) -> Any:
    from shared.db.pool import create_pool

    pool = await create_pool(settings, min_size=1, max_size=2)
    try:
        return await fn(pool)
    finally:
        await pool.close()


def _runs(args: argparse.Namespace, settings: Settings) -> int:
    from shared import views

    rows = asyncio.run(_with_pool(settings, lambda pool: views.runs(pool, args.limit)))
    if args.json:
        output.print_json(output.rows_to_dicts(rows))
    else:
        output.print_table(rows, RUN_COLUMNS)
    return 0


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from shared import views

    report = asyncio.run(_with_pool(settings, lambda pool: views.report(pool, args.run)))
    if args.json:
        output.print_json(report)
    elif args.csv:
        rows = (
            [
                {
                    "section": "billed",
                    "key": b["currency"],
                    "count": b["charges"],
                    "amount_cents": b["amount_cents"],
                }
                for b in report["billed"]
            ]
            + [
                {
                    "section": "refunded",
                    "key": r["currency"],
                    "count": r["refunds"],
                    "amount_cents": r["amount_cents"],
                }
                for r in report["refunded"]
            ]
            + [
                {"section": "declines", "key": d["reason"], "count": d["jobs"]}
                for d in report["declines"]
            ]
            + [
                {"section": "dead", "key": d["job_id"], "count": 1, "reason": d["reason"]}
                for d in report["dead"]
            ]
            + [
                {"section": "blocked", "key": b["account_id"], "count": 1, "reason": b["reason"]}
                for b in report["blocked"]
            ]
        )
        output.print_csv(rows, ("section", "key", "count", "amount_cents", "reason"))
    else:
        print(f"run {report['run_id']} ({report['state']}), as of {report['as_of']}")
        print("jobs: " + ", ".join(f"{k}={v}" for k, v in sorted(report["jobs"].items())))
        print("billed:")
        for b in report["billed"]:
            print(
                f"  {output.money(b['amount_cents'], b['currency']):>20}  ({b['charges']} charges)"
            )
        print("refunded (refunds of this run's charges):" + ("" if report["refunded"] else " none"))
        for r in report["refunded"]:
            print(
                f"  {output.money(r['amount_cents'], r['currency']):>20}  ({r['refunds']} refunds)"
            )
        print("declines by reason:" + ("" if report["declines"] else " none"))
        for d in report["declines"]:
            print(f"  {d['reason']}: {d['jobs']}")
        print("dead jobs:" + ("" if report["dead"] else " none"))
        for d in report["dead"]:
            print(f"  job {d['job_id']} account {d['account_id']}: {d['reason']}")
        print("blocked accounts (due, no job):" + ("" if report["blocked"] else " none"))
        for b in report["blocked"]:
            print(f"  account {b['account_id']} period {b['period_start']}: {b['reason']}")
    return 0


def _period(text: str) -> tuple[dt.date, dt.date]:
    match = re.fullmatch(r"(\d{4})-(\d{2})", text)
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM, got {text!r}")
    year, month = int(match.group(1)), int(match.group(2))
    end = dt.date(year + (month == 12), month % 12 + 1, 1)
    return dt.date(year, month, 1), end


def _invoices_list(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db import billing_repo

    rows = asyncio.run(
        _with_pool(
            settings,
            lambda pool: billing_repo.invoices(
                pool, args.account, args.period, args.limit, args.after
            ),
        )
    )
    if args.json:
        output.print_json(output.rows_to_dicts(rows))
    else:
        output.print_table(rows, INVOICE_COLUMNS)
    return 0


def _invoices_show(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db import billing_repo

    row = asyncio.run(_with_pool(settings, lambda pool: billing_repo.invoice(pool, args.number)))
    if row is None:
        raise ConfigError(f"NUMBER: no invoice {args.number}")
    notes = json.loads(row["credit_notes"])
    if args.json:
        output.print_json({**dict(row), "credit_notes": notes})
        return 0
    print(f"Invoice {row['number']} — {row['status'].upper()}")
    print(f"  account       {row['account_id']}")
    print(f"  period        {row['period_start']} to {row['period_end']}")
    print(f"  amount        {output.money(row['amount_cents'], row['currency'])}")
    print(f"  charge        {row['gateway_charge_id'] or '-'}")
    print(f"  issued        {output.plain(row['created_at'])}")
    print(f"  paid          {output.plain(row['paid_at']) if row['paid_at'] else '-'}")
    if notes:
        print(f"  credited      {output.money(row['credited_cents'], row['currency'])}")
    for note in notes:
        amount = output.money(note["amount_cents"], row["currency"])
        print(f"  credit note   {note['number']}  {amount}  (refund {note['refund_id']})")
    return 0


def _invoice_number(text: str) -> str:
    # Six digits, more past the year's 999,999th (migration 0018).
    if not re.fullmatch(r"\d{4}-\d{6,10}", text):
        raise argparse.ArgumentTypeError(
            f"expected an invoice number like 2026-000123, got {text!r}"
        )
    return text


def register(sub: Any) -> None:
    p = sub.add_parser("runs", help="list billing runs with their progress")
    p.add_argument("--limit", type=positive_int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_runs)

    p = sub.add_parser(
        "report", help="finance summary of a run: billed, refunded, declines, dead jobs"
    )
    p.add_argument("run", type=positive_int, metavar="RUN")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    p.set_defaults(handler=_report)

    invoices = sub.add_parser("invoices", help="list and show invoices")
    verbs = invoices.add_subparsers(
        dest="verb", metavar="VERB", required=True, parser_class=type(invoices)
    )
    p = verbs.add_parser("list", help="invoices in number order (year, then sequence)")
    p.add_argument("--account", type=positive_int, help="only this account")
    p.add_argument("--period", type=_period, help="periods starting in this month (YYYY-MM)")
    p.add_argument("--limit", type=positive_int, default=1000)
    p.add_argument(
        "--after",
        type=_invoice_number,
        metavar="NUMBER",
        help="the next page: invoices numbered after NUMBER (the last one of the page before)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_invoices_list)
    p = verbs.add_parser("show", help="one invoice")
    p.add_argument("number", type=_invoice_number, metavar="NUMBER")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_invoices_show)
