"""Admin commands: ``queues``, ``dlq``, ``jobs``, ``workers``, ``scale-hint``.

Text for people, ``--json`` for scripts. Exit 0 on success, 1 when the action could not be
done (e.g. cancelling a job in flight), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from aio_pika.abc import AbstractConnection

from billq import output
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
    from shared.amqp.inspect import queue_depths

    async def main(pool: asyncpg.Pool, conn: AbstractConnection) -> list[dict[str, Any]]:
        depths = await queue_depths(conn, settings)
        processing = await pool.fetchval(
            "SELECT count(*) FROM billing_jobs WHERE state = 'processing'"
        )
        rows = []
        for d in depths:
            # Without the management plugin the broker does not report unacked counts;
            # jobs in 'processing' are exactly the deliveries workers hold.
            unacked = int(processing) if d.role == "work" else 0
            rows.append(
                {
                    "queue": d.name,
                    "role": d.role,
                    "depth": d.ready + unacked,
                    "ready": d.ready,
                    "unacked": unacked,
                    "consumers": d.consumers,
                }
            )
        return rows

    rows = asyncio.run(_with(settings, main))
    if args.json:
        output.print_json(rows)
    else:
        output.print_table(rows, ("queue", "role", "depth", "ready", "unacked", "consumers"))
    return 0


def _dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    from shared.amqp import dlq

    letters = asyncio.run(
        _with(settings, lambda _p, c: dlq.read(c, settings, args.limit), broker=True)
    )
    rows = [letter.summary() for letter in letters]
    if args.json:
        output.print_json(rows)
    else:
        output.print_table(rows, ("id", "job_id", "error_class", "error"))
    return 0


def _dlq_show(args: argparse.Namespace, settings: Settings) -> int:
    from shared.amqp import dlq

    letters = asyncio.run(_with(settings, lambda _p, c: dlq.read(c, settings, 100_000)))
    found = [x for x in letters if x.id == args.id]
    if not found:
        raise ConfigError(f"ID: no dead letter {args.id}")
    letter = found[0]
    data = {
        **letter.summary(),
        "headers": {k: str(v) for k, v in letter.headers.items()},
        "body": letter.body[:2000].decode("utf-8", "replace"),
    }
    if args.json:
        output.print_json(data)
    else:
        for key, value in data.items():
            print(f"{key:>12}: {value}")
    return 0


def _actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (containers)
        return "cli"


def _dlq_replay(args: argparse.Namespace, settings: Settings) -> int:
    from shared import operations
    from shared.amqp import dlq
    from shared.errors import InvalidMessage
    from shared.messages import parse_message

    if not args.all and not args.ids:
        raise ConfigError("dlq replay: give dead-letter IDs or --all")

    def named_job(letter: dlq.DeadLetter) -> operations.LetterJob | None:
        if letter.job_id is None:
            return None
        try:
            msg = parse_message(letter.body, max_bytes=settings.max_message_bytes)
        except InvalidMessage:
            return operations.LetterJob(letter.id, letter.job_id, None, None)
        return operations.LetterJob(letter.id, msg.job_id, msg.account_id, msg.idempotency_key)

    async def main(pool: asyncpg.Pool, conn: AbstractConnection) -> dict[str, Any]:
        wanted = None if args.all else set(args.ids)
        # Revive the jobs first: a replayed message must find its job claimable. Whether the
        # period may still be charged is decided at the claim (already paid → nothing moves).
        letters = await dlq.read(conn, settings, 100_000)
        chosen = [x for x in letters if wanted is None or x.id in wanted]
        named = [j for j in map(named_job, chosen) if j is not None]
        revived, skipped = await operations.revive_for_replay(pool, named)
        replayed = await dlq.replay(conn, settings, {x.id for x in chosen})
        result = {
            "replayed": [x.id for x in replayed],
            "jobs_revived": revived,
            "jobs_not_revived": skipped,
        }
        await operations.record_action(
            pool, _actor(), "dlq.replay", ",".join(sorted(x.id for x in chosen)), str(result)
        )
        return result

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
    from shared.db import ops_repo

    rows = asyncio.run(
        _with(
            settings,
            lambda p, _c: ops_repo.list_jobs(p, args.state, args.run, args.account, args.limit),
            broker=False,
        )
    )
    if args.json:
        output.print_json(output.rows_to_dicts(rows))
    else:
        output.print_table(
            rows, ("id", "run_id", "account_id", "period_start", "state", "attempts", "last_error")
        )
    return 0


def _republish(settings: Settings, pool: asyncpg.Pool, conn: AbstractConnection) -> Any:
    from distributor.outbox import Outbox
    from shared.amqp.publisher import Publisher

    return Outbox(pool, Publisher(conn, timeout=settings.publish_timeout), settings)


def _jobs_retry(args: argparse.Namespace, settings: Settings) -> int:
    from shared import operations

    async def main(pool: asyncpg.Pool, conn: AbstractConnection) -> str:
        state, rows = await operations.prepare_retry(pool, args.id)
        outbox = _republish(settings, pool, conn)
        for row in rows:
            handoff = row["attempts"] if state == "retrying" else None
            await outbox.publish_one(row, handoff=handoff)
        await operations.record_action(pool, _actor(), "jobs.retry", str(args.id), state)
        return state

    state = asyncio.run(_with(settings, main))
    print(f"job {args.id}: was {state}; republished")
    return 0


def _jobs_cancel(args: argparse.Namespace, settings: Settings) -> int:
    from shared import operations
    from shared.gateway.factory import make_gateway

    async def main(pool: asyncpg.Pool, conn: AbstractConnection) -> str:
        gateway = make_gateway(settings)
        try:
            result = await operations.cancel(pool, gateway, args.id, _actor())
        except ActionRefused as exc:
            await operations.record_action(pool, _actor(), "jobs.cancel", str(args.id), str(exc))
            raise
        finally:
            await gateway.aclose()
        await operations.record_action(pool, _actor(), "jobs.cancel", str(args.id), result)
        if result.startswith("unresolved:"):
            from shared.db import ops_repo

            job = await ops_repo.get(pool, args.id)
            await _republish(settings, pool, conn).publish_one(job, handoff=int(result[11:]))
            raise ActionRefused(
                f"job {args.id}: the gateway could not confirm whether an earlier call charged; "
                "the job stays retrying (not cancelled) — try again when the gateway answers"
            )
        return result

    asyncio.run(_with(settings, main))
    print(f"job {args.id}: cancelled (dead)")
    return 0


def _workers(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db import workers_repo
    from shared.db.jobs_repo import STALE_WORKER_S

    rows = asyncio.run(
        _with(settings, lambda p, _c: workers_repo.list_workers(p, STALE_WORKER_S), broker=False)
    )
    data = [{**dict(r), "status": "live" if r["live"] else "stale"} for r in rows]
    if args.json:
        output.print_json(output.rows_to_dicts(data))
    else:
        output.print_table(
            data,
            ("id", "status", "pid", "last_heartbeat", "in_flight", "holding", "handled", "breaker"),
        )
    return 0


def scale_hint(
    open_jobs: int, rate: float, live_workers: int, seconds_left: float
) -> dict[str, Any]:
    """Workers needed to finish ``open_jobs`` in ``seconds_left`` at the observed rate."""
    per_worker = rate / live_workers if live_workers and rate > 0 else None
    if open_jobs == 0:
        needed: int | None = 0
    elif per_worker is None or seconds_left <= 0:
        needed = None
    else:
        needed = max(1, math.ceil(open_jobs / (per_worker * seconds_left)))
    return {
        "open_jobs": open_jobs,
        "rate_per_s": round(rate, 2),
        "live_workers": live_workers,
        "per_worker_rate_per_s": round(per_worker, 2) if per_worker else None,
        "seconds_left": round(seconds_left),
        "workers_needed": needed,
    }


def _scale_hint(args: argparse.Namespace, settings: Settings) -> int:
    from shared.db import ops_repo, workers_repo
    from shared.db.jobs_repo import STALE_WORKER_S

    async def main(pool: asyncpg.Pool, _c: Any) -> dict[str, Any]:
        workers = await workers_repo.list_workers(pool, STALE_WORKER_S)
        live = sum(1 for w in workers if w["live"])
        rate = await ops_repo.recent_rate(pool, args.window)
        open_jobs = await ops_repo.open_count(pool)
        left = (args.deadline - dt.datetime.now(dt.UTC)).total_seconds()
        return scale_hint(open_jobs, rate, live, left)

    hint = asyncio.run(_with(settings, main, broker=False))
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
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(handler=_jobs)
    verbs = jobs.add_subparsers(dest="verb", metavar="VERB", parser_class=type(jobs))
    p = verbs.add_parser("retry", help="republish a dead or stuck job")
    p.add_argument("id", type=positive_int, metavar="ID")
    p.set_defaults(handler=_jobs_retry)
    p = verbs.add_parser("cancel", help="stop a job that is not in flight (it becomes dead)")
    p.add_argument("id", type=positive_int, metavar="ID")
    p.set_defaults(handler=_jobs_cancel)

    p = sub.add_parser("workers", help="live and stale workers from their heartbeats")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_workers)

    p = sub.add_parser("scale-hint", help="workers needed to finish open jobs by a deadline")
    p.add_argument("--deadline", type=_deadline, required=True, help="ISO 8601")
    p.add_argument("--window", type=positive_int, default=60, help="seconds of drain rate to use")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_scale_hint)
