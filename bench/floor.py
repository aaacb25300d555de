"""The floor: a bare aio-pika + asyncpg worker with no billq code in it.

It consumes billq's work queue and performs, per account, the Postgres writes at the heart
of a charge — claim the job, insert the charge (idempotent), advance the account, finish
the job — then acks. No gateway, no validation, no signing, no invoices, no heartbeats,
no retries: what is left is the cost of the broker, the database and the driver, which
billq cannot go below. Two modes:

- ``single``: one statement and one transaction per message, acked one by one;
- ``batched``: up to ``--batch`` deliveries in one statement (unnest), one ``multiple`` ack.

``python -m bench.floor --mode batched --database-url … --amqp-url … --queue …``
runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

import aio_pika
import asyncpg
import orjson

# Claim, charge, advance and finish in one statement: what a careful hand-written
# worker does when it cares about round trips.
ONE = """
WITH job AS (
    UPDATE billing_jobs SET state = 'succeeded', attempts = attempts + 1,
           started_at = now(), finished_at = now(), updated_at = now()
     WHERE id = $1 AND state = 'published'
    RETURNING id, account_id, period_start, period_end, amount_cents, currency, idempotency_key
), charge AS (
    INSERT INTO charges (job_id, account_id, period_start, period_end, amount_cents, currency,
                         idempotency_key, gateway_charge_id)
    SELECT id, account_id, period_start, period_end, amount_cents, currency, idempotency_key,
           'floor'
      FROM job
    ON CONFLICT DO NOTHING
)
UPDATE accounts a SET next_billing_at = (j.period_end::timestamp AT TIME ZONE 'UTC'),
       updated_at = now()
  FROM job j WHERE a.id = j.account_id
"""

# The same writes for a whole batch: the job ids as one array.
MANY = ONE.replace("WHERE id = $1 AND", "WHERE id = ANY($1::bigint[]) AND")
assert MANY != ONE


async def _noop_reset(conn: Any) -> None:
    return None


async def run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pool = await asyncpg.create_pool(
        args.database_url, min_size=args.connections, max_size=args.connections, reset=_noop_reset
    )
    conn = await aio_pika.connect_robust(args.amqp_url)
    channel = await conn.channel()
    await channel.set_qos(prefetch_count=args.prefetch)
    queue = await channel.get_queue(args.queue, ensure=False)

    if args.mode == "single":

        async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            job_id = orjson.loads(msg.body)["job_id"]
            await pool.execute(ONE, job_id)
            await msg.ack()

        await queue.consume(on_message)
    else:
        pending: list[aio_pika.abc.AbstractIncomingMessage] = []
        wake = asyncio.Event()

        async def on_batch_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
            pending.append(msg)
            wake.set()

        async def flusher() -> None:
            # One sequential flusher: a multiple ack never covers an uncommitted row.
            while not stop.is_set():
                await wake.wait()
                await asyncio.sleep(args.wait_ms / 1000)
                batch, pending[:] = pending[: args.batch], pending[args.batch :]
                if not pending:
                    wake.clear()
                if not batch:
                    continue
                ids = [orjson.loads(m.body)["job_id"] for m in batch]
                await pool.execute(MANY, ids)
                await batch[-1].ack(multiple=True)

        await queue.consume(on_batch_message)
        task = asyncio.create_task(flusher())
        await stop.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await stop.wait()
    await conn.close()
    await pool.close()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    p.add_argument("--mode", choices=("single", "batched"), required=True)
    p.add_argument("--database-url", required=True)
    p.add_argument("--amqp-url", required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--prefetch", type=int, default=512)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--wait-ms", type=float, default=5.0)
    args = p.parse_args()
    try:
        import uvloop

        uvloop.run(run(args))
    except ImportError:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
