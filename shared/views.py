"""What operators look at, as data: the CLI's ``--json`` shapes and the dashboard's ``/api``.

``billq status|runs|report|queues|dlq|jobs|workers|scale-hint|accounts show`` and the
dashboard both call these, so a page and a command can never disagree about a number.
Each function takes an open pool (and a broker connection where it reads queues) and
returns plain dicts and lists; ``plain`` turns dates and decimals into JSON values.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import math
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
from aio_pika.abc import AbstractConnection

from shared.billing.jobs import JOB_STATES, OPEN_STATES
from shared.config import Settings
from shared.errors import ConfigError


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


def rows_to_dicts(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Records or mappings as JSON-friendly dicts."""
    return [{k: plain(v) for k, v in dict(r).items()} for r in rows]


async def run_status(pool: asyncpg.Pool, run_id: int | None) -> dict[str, Any]:
    """``billq status --json``: the run (latest by default), its counts, rate and ETA.

    Raises:
        ConfigError: there is no such run (or no run at all).
    """
    from shared.db import runs_repo

    rid = run_id if run_id is not None else await runs_repo.latest_run_id(pool)
    if rid is None:
        raise ConfigError("no billing run yet (run `billq distribute`)")
    await runs_repo.fold_summaries(pool)
    await runs_repo.settle_run(pool, rid)
    run = await runs_repo.get_run(pool, rid)
    if run is None:
        raise ConfigError(f"RUN: no billing run {rid}")
    counts = await runs_repo.run_counts(pool, rid)
    rate = await runs_repo.recent_rate(pool, rid)
    total = sum(counts.values())
    open_jobs = sum(counts.get(s, 0) for s in OPEN_STATES)
    return {
        "run_id": rid,
        "state": run["state"],
        "as_of": run["as_of"].isoformat(),
        "total": total,
        "counts": {s: counts.get(s, 0) for s in JOB_STATES},
        "rate_per_s": round(rate, 1),
        "eta_s": round(open_jobs / rate, 1) if rate > 0 else None,
    }


async def runs(pool: asyncpg.Pool, limit: int) -> list[dict[str, Any]]:
    """``billq runs --json`` (rows with dates as they come from Postgres)."""
    from shared.db import billing_repo, runs_repo

    await runs_repo.settle_open_runs(pool)
    await runs_repo.fold_summaries(pool)
    return [dict(r) for r in await billing_repo.runs(pool, limit)]


async def report(
    pool: asyncpg.Pool, run_id: int, dead_limit: int | None = None, dead_after: int = 0
) -> dict[str, Any]:
    """``billq report RUN --json``: billed per currency, refunded per currency (refunds of the
    run's charges), declines by reason, dead jobs, blocked accounts (due but given no job).

    Dead jobs come by id: ``dead_limit`` of them (all by default) after the job
    ``dead_after``; ``dead_next`` is the ``dead_after`` of the next page (None on the last),
    ``dead_total`` the run's dead jobs (from its summary rows, not counted).

    Raises:
        ConfigError: there is no such run.
    """
    from shared.db import billing_repo, runs_repo

    await runs_repo.settle_run(pool, run_id)
    run = await runs_repo.get_run(pool, run_id)
    if run is None:
        raise ConfigError(f"RUN: no billing run {run_id}")
    counts = await runs_repo.run_counts(pool, run_id)
    # One row past the page tells whether another follows.
    asked = None if dead_limit is None else dead_limit + 1
    parts = await billing_repo.report(pool, run_id, asked, dead_after)
    dead = parts["dead"][:dead_limit]
    more = dead_limit is not None and len(parts["dead"]) > dead_limit
    return {
        "run_id": run["id"],
        "state": run["state"],
        "as_of": run["as_of"],
        "jobs": counts,
        "billed": rows_to_dicts(parts["billed"]),
        "refunded": rows_to_dicts(parts["refunded"]),
        "declines": rows_to_dicts(parts["declines"]),
        "dead": rows_to_dicts(dead),
        "dead_total": counts.get("dead", 0),
        "dead_next": dead[-1]["job_id"] if more else None,
        "blocked": rows_to_dicts(parts["blocked"]),
    }


# The lane of a job is names.routing_key_for_job's: dunning retries and the one-off and
# refund kinds (names.PRIORITY_KINDS) travel the priority lane.
PROCESSING_BY_LANE = """
SELECT count(*) FILTER (WHERE NOT (dunning_attempt > 0 OR kind = ANY($1::text[]))) AS work,
       count(*) FILTER (WHERE dunning_attempt > 0 OR kind = ANY($1::text[])) AS priority
  FROM billing_jobs WHERE state = 'processing'
"""


async def queues(
    pool: asyncpg.Pool, conn: AbstractConnection, settings: Settings
) -> list[dict[str, Any]]:
    """``billq queues --json``: depth, ready, unacked and consumers of each billq queue."""
    from shared.amqp.inspect import queue_depths

    depths = await queue_depths(conn, settings)
    from shared.amqp import names

    row = await pool.fetchrow(PROCESSING_BY_LANE, sorted(names.PRIORITY_KINDS))
    processing: dict[str, int] = dict(row) if row is not None else {}
    rows = []
    for d in depths:
        # Without the management plugin the broker does not report unacked counts;
        # jobs in 'processing' are exactly the deliveries workers hold, per lane.
        unacked = int(processing.get(d.role, 0))
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


async def dead_letters(
    conn: AbstractConnection, settings: Settings, limit: int
) -> list[dict[str, Any]]:
    """``billq dlq list --json`` (the letters stay in the queue)."""
    from shared.amqp import dlq

    return [letter.summary() for letter in await dlq.read(conn, settings, limit)]


async def dead_letter(
    conn: AbstractConnection, settings: Settings, letter_id: str
) -> dict[str, Any]:
    """``billq dlq show ID --json``: one letter with its headers and (the start of) its body.

    Raises:
        ConfigError: no dead letter has this id.
    """
    from shared.amqp import dlq

    found = [x for x in await dlq.read(conn, settings, 100_000) if x.id == letter_id]
    if not found:
        raise ConfigError(f"ID: no dead letter {letter_id}")
    letter = found[0]
    return {
        **letter.summary(),
        "headers": {k: str(v) for k, v in letter.headers.items()},
        "body": letter.body[:2000].decode("utf-8", "replace"),
    }


async def jobs(
    pool: asyncpg.Pool,
    state: str | None,
    run: int | None,
    account: int | None,
    limit: int,
    before: int | None = None,
) -> list[dict[str, Any]]:
    """``billq jobs --json``: newest first, filtered by state, run and account; ``before``
    (a job id) gives the next page: the jobs older than the last one shown."""
    from shared.db import ops_repo

    rows = await ops_repo.list_jobs(pool, ops_repo.JobsPage(state, run, account, limit, before))
    return [dict(r) for r in rows]


async def workers(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """``billq workers --json``: each worker with ``status`` live or stale from its heartbeat."""
    from shared.db import workers_repo
    from shared.db.jobs_repo import STALE_WORKER_S

    rows = await workers_repo.list_workers(pool, STALE_WORKER_S)
    return [{**dict(r), "status": "live" if r["live"] else "stale"} for r in rows]


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


async def scale_hint_at(pool: asyncpg.Pool, deadline: dt.datetime, window_s: int) -> dict[str, Any]:
    """``billq scale-hint --json``: the hint from live workers, drain rate and open jobs."""
    from shared.db import ops_repo, workers_repo
    from shared.db.jobs_repo import STALE_WORKER_S

    found, rate, open_jobs = await asyncio.gather(
        workers_repo.list_workers(pool, STALE_WORKER_S),
        ops_repo.recent_rate(pool, window_s),
        ops_repo.open_count(pool),
    )
    live = sum(1 for w in found if w["live"])
    left = (deadline - dt.datetime.now(dt.UTC)).total_seconds()
    return scale_hint(open_jobs, rate, live, left)


async def account(pool: asyncpg.Pool, account_id: int) -> dict[str, Any]:
    """``billq accounts show ID --json``: the account with its event history.

    Raises:
        ConfigError: there is no such account.
    """
    from shared.db import accounts_repo

    row = await accounts_repo.get(pool, account_id)
    if row is None:
        raise ConfigError(f"ID: no account {account_id}")
    return {**dict(row), "events": rows_to_dicts(await accounts_repo.events(pool, account_id))}


async def dunning(pool: asyncpg.Pool, run_id: int) -> dict[str, Any]:
    """The run's declines through dunning: past_due → each retry → recovered / suspended."""
    from shared.db import insight_repo

    statuses = await insight_repo.dunning_statuses(pool, run_id)
    by_attempt: dict[int, dict[str, int]] = {}
    for r in await insight_repo.dunning_retries(pool, run_id):
        slot = by_attempt.setdefault(int(r["attempt"]), {"succeeded": 0, "failed": 0, "open": 0})
        key = r["state"] if r["state"] in ("succeeded", "failed") else "open"
        slot[key] += int(r["n"])
    retries = [{"attempt": a, **by_attempt[a]} for a in sorted(by_attempt)]
    return {
        "declined": sum(statuses.values()),
        "past_due": statuses.get("past_due", 0),
        "retries": retries,
        "recovered": sum(r["succeeded"] for r in retries),
        "suspended": statuses.get("suspended", 0),
    }


async def throughput(
    pool: asyncpg.Pool, run_id: int, slots: int = 30, window_s: float = 900.0
) -> dict[str, Any]:
    """Finished jobs per slice of the run's last ``window_s`` of activity:
    ``{"start", "slot_s", "counts"}``."""
    from shared.db import insight_repo

    rows = await insight_repo.throughput(pool, run_id, slots, window_s)
    if not rows:
        return {"start": None, "slot_s": 0.0, "counts": []}
    counts = [0] * slots
    for r in rows:
        counts[int(r["slot"])] = int(r["n"])
    return {
        "start": rows[0]["t0"].isoformat(),
        "slot_s": round(float(rows[0]["secs"]) / slots, 3),
        "counts": counts,
    }


async def account_money(pool: asyncpg.Pool, account_id: int, limit: int = 100) -> dict[str, Any]:
    """The account's charges and invoices, newest period first."""
    from shared.db import billing_repo, insight_repo

    invoices = await billing_repo.invoices(pool, account_id, None, limit)
    return {
        "charges": rows_to_dicts(await insight_repo.charges(pool, account_id, limit)),
        "invoices": rows_to_dicts(sorted(invoices, key=lambda r: r["period_start"], reverse=True)),
    }
