"""The peers' equivalent of a billing run on Dramatiq, for the ``dramatiq`` bench row.

No billq code: one Dramatiq actor per due account doing the heart of the same writes (insert
the period's charge once, advance the account) in one transaction, on the same broker and
database. The enqueuer scans the due accounts and sends one message each (Dramatiq's
RabbitMQ broker publishes with confirms); the workers are Dramatiq's own CLI::

    python -m bench.dramatiq_peer enqueue          # the distributor's part
    dramatiq bench.dramatiq_peer --processes 2 --threads 16

Settings come from the environment: ``BENCH_PEER_DATABASE_URL``, ``BENCH_PEER_AMQP``,
``BENCH_PEER_QUEUE`` (the bench gives each run its own queue).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import dramatiq
import psycopg
from dramatiq.brokers.rabbitmq import RabbitmqBroker

AS_OF = "2026-03-01T12:00:00Z"
NEXT_PERIOD = "2026-04-01T00:00:00Z"
PERIOD_START = "2026-03-01"

TABLE = """
CREATE TABLE IF NOT EXISTS peer_charges (
    account_id   bigint      PRIMARY KEY,
    period_start date        NOT NULL,
    amount_cents integer     NOT NULL,
    currency     char(3)     NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""
DUE = "SELECT id FROM accounts WHERE next_billing_at <= %s ORDER BY id"
INSERT_CHARGE = """
INSERT INTO peer_charges (account_id, period_start, amount_cents, currency)
SELECT id, %s, amount_cents, currency FROM accounts WHERE id = %s AND next_billing_at <= %s
ON CONFLICT (account_id) DO NOTHING
"""
ADVANCE = "UPDATE accounts SET next_billing_at = %s WHERE id = %s AND next_billing_at <= %s"

DATABASE_URL = os.environ.get("BENCH_PEER_DATABASE_URL", "")
QUEUE = os.environ.get("BENCH_PEER_QUEUE", "bench_peer")
dramatiq.set_broker(
    RabbitmqBroker(url=os.environ.get("BENCH_PEER_AMQP", "amqp://guest:guest@127.0.0.1:5672/"))
)

_local = threading.local()


def _connection() -> psycopg.Connection[Any]:
    # One connection per worker thread, opened on its first message.
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(DATABASE_URL)
        _local.conn = conn
    return conn


@dramatiq.actor(queue_name=QUEUE, max_retries=20, min_backoff=100, max_backoff=2000)
def charge_account(account_id: int) -> None:
    conn = _connection()
    with conn.transaction():
        conn.execute(INSERT_CHARGE, (PERIOD_START, account_id, AS_OF))
        conn.execute(ADVANCE, (NEXT_PERIOD, account_id, AS_OF))


def enqueue() -> int:
    """Send one message per due account; returns how many."""
    with psycopg.connect(DATABASE_URL) as conn:
        conn.execute(TABLE)
        conn.commit()
        ids = [row[0] for row in conn.execute(DUE, (AS_OF,))]
    for account_id in ids:
        charge_account.send(account_id)
    dramatiq.get_broker().close()
    return len(ids)


if __name__ == "__main__":
    if sys.argv[1:] == ["enqueue"]:
        print(enqueue(), flush=True)
    elif sys.argv[1:] == ["table"]:
        with psycopg.connect(DATABASE_URL) as c:
            c.execute(TABLE)
    else:
        sys.exit("usage: python -m bench.dramatiq_peer enqueue|table")
