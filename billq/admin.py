"""Operator commands: migrate, topology, schema, seed, status."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from typing import Any

from shared.billing.jobs import OPEN_STATES, TERMINAL
from shared.config import Settings
from shared.entrypoint import positive_int


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db.migrations import migrate

    applied = asyncio.run(migrate(settings))
    print(f"migrate: applied {len(applied)}" + (f" ({', '.join(applied)})" if applied else ""))
    return 0


def _topology(args: argparse.Namespace, settings: Settings) -> int:
    from shared.amqp import names, topology
    from shared.amqp.connection import connect_any

    async def main() -> None:
        conn = await connect_any(settings.amqp_urls)
        try:
            channel = await conn.channel()
            await topology.declare(channel, settings)
        finally:
            await conn.close()

    asyncio.run(main())
    p = settings.queue_prefix
    tiers = ", ".join(names.retry_queue(p, t) for t in topology.retry_tiers(settings))
    priority_tiers = ", ".join(
        names.priority_retry_queue(p, t) for t in topology.retry_tiers(settings)
    )
    print(
        f"topology: exchange {names.work_exchange(p)} → {names.work_queue(p)} (quorum), "
        f"{names.priority_queue(p)} (quorum, priority lane); "
        f"retry {tiers}; priority retry {priority_tiers}; "
        f"dead letters {names.dead_letter_exchange(p)} → "
        f"{names.dead_letter_queue(p)}"
    )
    return 0


def _schema(args: argparse.Namespace, settings: Settings) -> int:
    from shared.messages import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _seed(args: argparse.Namespace, settings: Settings) -> int:
    from sandbox import seed
    from shared.billing.periods import parse_as_of
    from shared.db.pool import connect

    as_of = parse_as_of(args.as_of) if args.as_of else dt.datetime.now(dt.UTC)

    async def main() -> int:
        conn = await connect(settings)
        try:
            start = await seed.next_free_id(conn)
            rows = seed.demo_accounts(
                args.accounts,
                as_of=as_of,
                decline_rate=args.decline_rate,
                start_id=start,
                seed=args.seed,
            )
            return await seed.insert_accounts(conn, rows)
        finally:
            await conn.close()

    n = asyncio.run(main())
    print(f"seed: inserted {n} accounts due at {as_of.date().isoformat()}")
    return 0


async def run_status(settings: Settings, run_id: int | None) -> dict[str, Any]:
    from shared import views
    from shared.db.pool import create_pool

    pool = await create_pool(settings, min_size=1, max_size=2)
    try:
        return await views.run_status(pool, run_id)
    finally:
        await pool.close()


def _status_line(s: dict[str, Any]) -> str:
    c = s["counts"]
    eta = f" eta={s['eta_s']}s" if s["eta_s"] is not None else ""
    return (
        f"run {s['run_id']} {s['state']}: total={s['total']} succeeded={c['succeeded']} "
        f"failed={c['failed']} dead={c['dead']} open="
        f"{sum(c[k] for k in OPEN_STATES)} rate={s['rate_per_s']}/s{eta}"
    )


def _status(args: argparse.Namespace, settings: Settings) -> int:
    if not args.watch:
        status = asyncio.run(run_status(settings, args.run))
        print(json.dumps(status) if args.json else _status_line(status))
        return 0
    return asyncio.run(_watch(settings, args.run, args.timeout))


async def _watch(settings: Settings, run_id: int | None, timeout: float | None) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout else None
    status = await run_status(settings, run_id)
    with Progress(
        TextColumn("run {task.fields[run]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        disable=not sys.stdout.isatty(),
    ) as progress:
        task = progress.add_task("billing", total=status["total"], run=status["run_id"])
        while True:
            done = sum(status["counts"][s] for s in TERMINAL)
            progress.update(task, completed=done, total=status["total"])
            if status["state"] not in ("running", "published"):
                break
            if deadline is not None and loop.time() > deadline:
                print(_status_line(status))
                sys.stderr.write("billq: error: status --watch timed out before the run ended\n")
                return 1
            await asyncio.sleep(0.5)
            status = await run_status(settings, status["run_id"])
    print(_status_line(status))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("migrate", help="create the database if missing and apply migrations")
    p.set_defaults(handler=_migrate)

    p = sub.add_parser("topology", help="declare exchanges and queues (idempotent)")
    p.set_defaults(handler=_topology)

    p = sub.add_parser("schema", help="print the charge message's JSON Schema")
    p.set_defaults(handler=_schema)

    p = sub.add_parser("seed", help="insert realistic demo accounts, all due now")
    p.add_argument("--accounts", type=positive_int, required=True, help="how many")
    p.add_argument("--as-of", help="make them due at this ISO 8601 time (default: now)")
    p.add_argument("--decline-rate", type=float, default=0.05, help="share of declining cards")
    p.add_argument("--seed", type=int, default=7, help="random seed")
    p.set_defaults(handler=_seed)

    p = sub.add_parser("status", help="progress of a billing run (latest by default)")
    p.add_argument("run", nargs="?", type=positive_int, metavar="RUN", help="billing run id")
    p.add_argument("--json", action="store_true", help='{"run_id","state","total","counts"}')
    p.add_argument("--watch", action="store_true", help="follow until the run completes")
    p.add_argument("--timeout", type=float, help="with --watch: give up after SECONDS")
    p.set_defaults(handler=_status)
