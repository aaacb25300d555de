"""Admin commands: ``queues``, ``dlq``, ``jobs``, ``workers``, ``scale-hint``.

Text for people, ``--json`` for scripts. Exit 0 on success, 1 when the action could not be
done (e.g. cancelling a job in flight), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aio_pika.abc import AbstractConnection

from billq import fleet, output
from shared.billing.jobs import JOB_STATES
from shared.config import Settings
from shared.entrypoint import positive_int
from shared.errors import ActionRefused, ConfigError


async def _with(
    settings: Settings,
    fn: Callable[[asyncpg.Pool, AbstractConnection], Awaitable[Any]],
    *,
    broker: bool = True,
) -> Any:
    from shared.amqp.connection import connect_any
    from shared.db.pool import create_pool

    pool = await create_pool(settings, min_size=1, max_size=2)
    try:
        if not broker:
            return await fn(pool, None)  # type: ignore[arg-type]
        conn = await connect_any(settings.amqp_urls)
        try:
            return await fn(pool, conn)
        finally:
            await conn.close()
    finally:
        await pool.close()


def _queues(args: argparse.Namespace, settings: Settings) -> int:
    from shared import views

    rows = asyncio.run(_with(settings, lambda p, c: views.queues(p, c, settings)))
    if args.json:
        output.print_json(rows)
    else:
        output.print_table(rows, ("queue", "role", "depth", "ready", "unacked", "consumers"))
    return 0


def _dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    from shared import views

    rows = asyncio.run(
        _with(settings, lambda _p, c: views.dead_letters(c, settings, args.limit), broker=True)
    )
    if args.json:
        output.print_json(rows)
    else:
        output.print_table(rows, ("id", "job_id", "error_class", "error"))
    return 0


def _dlq_show(args: argparse.Namespace, settings: Settings) -> int:
    from shared import views

    data = asyncio.run(_with(settings, lambda _p, c: views.dead_letter(c, settings, args.id)))
    if args.json:
        output.print_json(data)
    else:
        for key, value in data.items():
            print(f"{key:>12}: {value}")
    return 0


def _dlq_replay(args: argparse.Namespace, settings: Settings) -> int:
    from shared import operations

    if not args.all and not args.ids:
        raise ConfigError("dlq replay: give dead-letter IDs or --all")

    async def main(pool: asyncpg.Pool, conn: AbstractConnection) -> dict[str, Any]:
        wanted = None if args.all else set(args.ids)
        return await operations.replay_dead_letters(pool, conn, settings, wanted, fleet.actor())

    result = asyncio.run(_with(settings, main))
    if args.json:
        output.print_json(result)
    else:
        print(
            f"dlq replay: {len(result['replayed'])} message(s) republished, "
            f"{len(result['jobs_revived'])} job(s) revived"
        )
        for letter, why in sorted(result["jobs_not_revived"].items()):
            print(f"  {letter}: job not revived: {why}")
    missing = set(args.ids or ()) - set(result["replayed"])
    if missing:
        raise ActionRefused(f"no dead letter with id {', '.join(sorted(missing))}")
    return 0


def _dlq_purge(args: argparse.Namespace, settings: Settings) -> int:
    from shared.amqp import dlq

    if not args.yes:
        raise ConfigError("dlq purge deletes every dead letter; add --yes to confirm")
    n = asyncio.run(_with(settings, lambda _p, c: dlq.purge(c, settings)))
    print(f"dlq purge: {n} dead letter(s) deleted")
    return 0


def _jobs(args: argparse.Namespace, settings: Settings) -> int:
    from shared import views

    rows = asyncio.run(
        _with(
            settings,
            lambda p, _c: views.jobs(
                p, args.state, args.run, args.account, args.limit, args.before
            ),
            broker=False,
        )
    )
    if args.json:
        output.print_json(output.rows_to_dicts(rows))
    else:
        output.print_table(
            rows,
            (
                "id",
                "kind",
                "run_id",
                "account_id",
                "period_start",
                "state",
                "attempts",
                "last_error",
            ),
        )
    return 0


def _jobs_retry(args: argparse.Namespace, settings: Settings) -> int:
    from shared import operations

    state = asyncio.run(
        _with(settings, lambda p, c: operations.retry_job(p, c, settings, args.id, fleet.actor()))
    )
    print(f"job {args.id}: was {state}; republished")
    return 0


def _jobs_cancel(args: argparse.Namespace, settings: Settings) -> int:
    from shared import operations

    asyncio.run(
        _with(settings, lambda p, c: operations.cancel_job(p, c, settings, args.id, fleet.actor()))
    )
    print(f"job {args.id}: cancelled (dead)")
    return 0


def _workers(args: argparse.Namespace, settings: Settings) -> int:
    from shared import views

    data = asyncio.run(_with(settings, lambda p, _c: views.workers(p), broker=False))
    if args.json:
        output.print_json(output.rows_to_dicts(data))
    else:
        output.print_table(
            data,
            (
                "id",
                "status",
                "pid",
                "last_heartbeat",
                "in_flight",
                "holding",
                "handled",
                "breaker",
                "gateway_limit",
            ),
        )
    return 0


def _scale_hint(args: argparse.Namespace, settings: Settings) -> int:
    from shared import views

    hint = asyncio.run(
        _with(
            settings,
            lambda p, _c: views.scale_hint_at(p, args.deadline, args.window),
            broker=False,
        )
    )
    if args.json:
        output.print_json(hint)
    elif hint["workers_needed"] is None:
        print(
            f"scale-hint: {hint['open_jobs']} open jobs, no drain rate observed yet "
            f"({hint['live_workers']} live workers); start workers and ask again"
        )
    else:
        print(
            f"scale-hint: {hint['open_jobs']} open jobs, {hint['rate_per_s']}/s with "
            f"{hint['live_workers']} workers → {hint['workers_needed']} workers finish in "
            f"{hint['seconds_left']}s"
        )
    return 0


def _deadline(text: str) -> dt.datetime:
    from shared.billing.periods import parse_as_of

    try:
        return parse_as_of(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--as-of", "--deadline")) from None


def register(sub: Any) -> None:
    p = sub.add_parser("queues", help="depth, ready, unacked, consumers of billq's queues")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_queues)

    dlq = sub.add_parser("dlq", help="dead letters: list, show, replay, purge")
    verbs = dlq.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=type(dlq))
    p = verbs.add_parser("list", help="dead letters with their reasons (left in the queue)")
    p.add_argument("--limit", type=positive_int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_dlq_list)
    p = verbs.add_parser("show", help="one dead letter with headers and body")
    p.add_argument("id", metavar="ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_dlq_show)
    p = verbs.add_parser("replay", help="republish dead letters to the work exchange")
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--all", action="store_true", help="replay every dead letter")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_dlq_replay)
    p = verbs.add_parser("purge", help="delete every dead letter (needs --yes)")
    p.add_argument("--yes", action="store_true", help="confirm")
    p.set_defaults(handler=_dlq_purge)

    jobs = sub.add_parser("jobs", help="list jobs; `jobs retry ID`, `jobs cancel ID`")
    jobs.add_argument("--state", choices=JOB_STATES)
    jobs.add_argument("--run", type=positive_int)
    jobs.add_argument("--account", type=positive_int)
    jobs.add_argument("--limit", type=positive_int, default=100)
    jobs.add_argument(
        "--before",
        type=positive_int,
        metavar="ID",
        help="next page: only jobs older than job ID (the last one of the previous page)",
    )
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(handler=_jobs)
    verbs = jobs.add_subparsers(dest="verb", metavar="VERB", parser_class=type(jobs))
    p = verbs.add_parser("retry", help="republish a dead or stuck job")
    p.add_argument("id", type=positive_int, metavar="ID")
    p.set_defaults(handler=_jobs_retry)
    p = verbs.add_parser("cancel", help="stop a job that is not in flight (it becomes dead)")
    p.add_argument("id", type=positive_int, metavar="ID")
    p.set_defaults(handler=_jobs_cancel)

    p = sub.add_parser(
        "workers", help="live and stale workers from their heartbeats; `workers restart`"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_workers)
    verbs = p.add_subparsers(dest="verb", metavar="VERB", parser_class=type(p))
    r = verbs.add_parser(
        "restart",
        help="every worker of this prefix, on every host, finishes its in-flight charges "
        "and exits 3 (its supervisor starts it again)",
    )
    r.set_defaults(handler=fleet.workers_restart)

    p = sub.add_parser("scale-hint", help="workers needed to finish open jobs by a deadline")
    p.add_argument("--deadline", type=_deadline, required=True, help="ISO 8601")
    p.add_argument("--window", type=positive_int, default=60, help="seconds of drain rate to use")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_scale_hint)
