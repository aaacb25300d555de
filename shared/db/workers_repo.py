"""Worker heartbeats: who is alive, what each holds."""

from __future__ import annotations

import asyncpg

from shared.db.errors import classified

UPSERT = """
INSERT INTO workers (id, hostname, pid, in_flight, handled, breaker, gateway_limit)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (id) DO UPDATE
   SET last_heartbeat = now(), in_flight = EXCLUDED.in_flight, handled = EXCLUDED.handled,
       breaker = EXCLUDED.breaker, gateway_limit = EXCLUDED.gateway_limit
"""

DELETE = "DELETE FROM workers WHERE id = $1"

LIST = """
SELECT w.id, w.hostname, w.pid, w.started_at, w.last_heartbeat, w.in_flight, w.handled, w.breaker,
       w.gateway_limit,
       w.last_heartbeat > now() - make_interval(secs => $1) AS live,
       (SELECT count(*) FROM billing_jobs j
         WHERE j.state = 'processing' AND j.locked_by = w.id) AS holding
  FROM workers w ORDER BY w.started_at
"""


@classified
async def heartbeat(
    pool: asyncpg.Pool,
    worker_id: str,
    hostname: str,
    pid: int,
    in_flight: int,
    handled: int,
    breaker: str = "closed",
    gateway_limit: int | None = None,
) -> None:
    await pool.execute(UPSERT, worker_id, hostname, pid, in_flight, handled, breaker, gateway_limit)


async def deregister(pool: asyncpg.Pool, worker_id: str) -> None:
    await pool.execute(DELETE, worker_id)


async def list_workers(pool: asyncpg.Pool, stale_after_s: float) -> list[asyncpg.Record]:
    return list(await pool.fetch(LIST, stale_after_s))
