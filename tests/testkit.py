"""Helpers for tests against the real services: databases, queues, subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx

from shared.amqp import names, topology
from shared.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("BILLQ_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP = os.environ.get("BILLQ_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def db_url(name: str) -> str:
    base = PG_ADMIN.rsplit("/", 1)[0]
    return f"{base}/{name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(database: str, prefix: str, **extra: Any) -> Settings:
    return load_settings(database_url=db_url(database), amqp_url=AMQP, queue_prefix=prefix, **extra)


def clean_env() -> dict[str, str]:
    """This process's environment without ``BILLQ_*``, importing billq from this tree.

    Subprocesses run in the session's working directory (an empty one, see ``conftest``),
    so PYTHONPATH, not the directory, finds the source tree.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a billq subprocess with these settings."""
    env = clean_env()
    env.update(
        BILLQ_DATABASE_URL=settings.database_url.get_secret_value(),
        BILLQ_AMQP_URL=settings.amqp_url.get_secret_value(),
        BILLQ_QUEUE_PREFIX=settings.queue_prefix,
        BILLQ_GATEWAY=settings.gateway,
        BILLQ_GATEWAY_URL=settings.gateway_url,
        BILLQ_RETRY_DELAYS="[" + ",".join(str(d) for d in settings.retry_delays) + "]",
        BILLQ_MAX_ATTEMPTS=str(settings.max_attempts),
        BILLQ_GATEWAY_TIMEOUT=str(settings.gateway_timeout),
        BILLQ_JOB_LEASE=str(settings.job_lease),
        BILLQ_SHUTDOWN_GRACE=str(settings.shutdown_grace),
        BILLQ_CATCHUP_MIN_GAP=str(settings.catchup_min_gap),
        BILLQ_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def clone_database(template: str, name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await conn.close()


async def delete_topology(settings: Settings) -> None:
    p = settings.queue_prefix
    conn = await aio_pika.connect(AMQP)
    try:
        # The default tiers too: a process of the test may have declared them under this
        # prefix with settings of its own.
        tiers = set(topology.retry_tiers(settings)) | set(
            topology.retry_tiers(Settings.model_construct())
        )
        queues = [names.work_queue(p), names.priority_queue(p), names.dead_letter_queue(p)] + [
            names.lane_retry_queue(p, lane, t) for lane in names.LANES for t in sorted(tiers)
        ]
        for q in queues:
            channel = await conn.channel()
            # Quorum queues refuse the default if_unused/if_empty delete at connection level.
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.queue_delete(q, if_unused=False, if_empty=False)
        for ex in (
            names.work_exchange(p),
            names.dead_letter_exchange(p),
            names.control_exchange(p),
        ):
            channel = await conn.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.exchange_delete(ex)
    finally:
        await conn.close()


async def fetchrow(db: asyncpg.Connection, query: str, *args: object) -> asyncpg.Record:
    """The row ``query`` returns; no row fails the test."""
    row = await db.fetchrow(query, *args)
    assert row is not None, f"no row for {query}"
    return row


async def queue_depths(settings: Settings) -> dict[str, tuple[int, int]]:
    """name → (messages ready, consumers) for the work, priority, dead and retry queues."""
    p = settings.queue_prefix
    out: dict[str, tuple[int, int]] = {}
    conn = await aio_pika.connect(AMQP)
    try:
        for q in [names.work_queue(p), names.priority_queue(p), names.dead_letter_queue(p)] + [
            names.lane_retry_queue(p, lane, t)
            for lane in names.LANES
            for t in topology.retry_tiers(settings)
        ]:
            channel = await conn.channel()
            try:
                decl = await channel.declare_queue(q, passive=True)
                res = decl.declaration_result
                out[q] = (res.message_count or 0, res.consumer_count or 0)
            except aio_pika.exceptions.AMQPError:
                pass
    finally:
        await conn.close()
    return out


async def get_dead_letters(
    settings: Settings, limit: int = 100
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    conn = await aio_pika.connect(AMQP)
    out = []
    try:
        channel = await conn.channel()
        q = await channel.declare_queue(
            names.dead_letter_queue(settings.queue_prefix), passive=True
        )
        for _ in range(limit):
            msg = await q.get(no_ack=True, fail=False)
            if msg is None:
                break
            out.append(msg)
    finally:
        await conn.close()
    return out


async def publish_raw(settings: Settings, body: bytes, **props: Any) -> None:
    conn = await aio_pika.connect(AMQP)
    try:
        channel = await conn.channel(publisher_confirms=True)
        ex = await channel.get_exchange(names.work_exchange(settings.queue_prefix))
        await ex.publish(aio_pika.Message(body, **props), routing_key=names.ROUTING_KEY)
    finally:
        await conn.close()


def billq_cmd() -> list[str]:
    return [sys.executable, "-m", "billq"]


def billq(
    *args: str, env: Mapping[str, str], timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "billq", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"billq {args} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def spawn(*args: str, env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "billq", *args],
        env=dict(env),
        stdout=out,
        stderr=out,
    )


@contextlib.contextmanager
def sandbox_gateway(tmp: Path, *flags: str) -> Iterator[str]:
    port = free_port()
    proc = spawn(
        "sandbox-gateway",
        "--port",
        str(port),
        "--ledger",
        str(tmp / "ledger.sqlite3"),
        *flags,
        env=clean_env(),
        log=tmp / "gateway.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz", proc)
        yield url
    finally:
        stop_process(proc)


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def ledger(gateway_url: str, path: str = "/v1/payment_intents") -> list[dict[str, Any]]:
    """Every payment intent (or, with ``path="/v1/refunds"``, refund) the sandbox holds."""
    out: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    headers = {"Authorization": "Bearer sk_test_billq"}
    while True:
        page = httpx.get(f"{gateway_url}{path}", params=params, headers=headers, timeout=10).json()
        out.extend(page["data"])
        if not page["has_more"]:
            return out
        params["starting_after"] = page["data"][-1]["id"]


async def wait_until(predicate: Any, timeout: float = 60, interval: float = 0.2) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


# --- Whole-pipeline helpers shared by the e2e tests -----------------------------------

AS_OF = "2026-03-01T12:00:00Z"


async def seed(
    db: asyncpg.Connection, n: int, *, card: Any = lambda i: "pm_card_visa", start: int = 1
) -> None:
    rows = [
        (
            i,
            f"c{i}",
            f"c{i}@example.com",
            1000 + i,
            "USD",
            "month",
            1,
            dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
            "active",
            card(i),
            None,
        )
        for i in range(start, start + n)
    ]
    await db.copy_records_to_table(
        "accounts",
        records=rows,
        columns=(
            "id",
            "name",
            "email",
            "amount_cents",
            "currency",
            "billing_interval",
            "billing_anchor_day",
            "next_billing_at",
            "status",
            "payment_method",
            "gateway_customer",
        ),
    )


async def claimed_jobs(
    db: asyncpg.Connection, run_id: int, first: int, last: int
) -> list[asyncpg.Record]:
    """March's period jobs of accounts ``first``..``last``, as a worker's claim leaves them
    (``processing``, attempt 1): what a group commit records. Returns ``id, attempts``."""
    return list(
        await db.fetch(
            """
            INSERT INTO billing_jobs (run_id, account_id, period_start, period_end,
                                      idempotency_key, amount_cents, currency, payment_method,
                                      state, attempts, locked_by, locked_until, started_at)
            SELECT $1, i, '2026-03-01', '2026-04-01', 'billq_' || i || '_2026-03-01', 1000,
                   'USD', 'pm_card_visa', 'processing', 1, 'w', now() + interval '60 s', now()
              FROM generate_series($2::int, $3::int) AS i
            RETURNING id, attempts
            """,
            run_id,
            first,
            last,
        )
    )


def distribute(env: dict[str, str], *extra: str) -> dict[str, Any]:
    out = billq("distribute", "--as-of", AS_OF, "--json", *extra, env=env)
    return dict(json.loads(out.stdout))


async def all_terminal(db: asyncpg.Connection) -> bool:
    open_jobs = await db.fetchval(
        "SELECT count(*) FROM billing_jobs WHERE state NOT IN ('succeeded','failed','dead','already_paid')"
    )
    return bool(open_jobs == 0)


async def assert_charged_once(
    db: asyncpg.Connection, gateway_url: str, settings: Settings, expect_charged: int
) -> None:
    intents = ledger(gateway_url)
    succeeded = [i for i in intents if i["status"] == "succeeded"]
    keys = [i["metadata"]["billq_idempotency_key"] for i in succeeded]
    assert len(keys) == len(set(keys)), "a key was charged twice at the gateway"
    assert len(succeeded) == expect_charged
    charges = await db.fetch("SELECT idempotency_key, gateway_charge_id FROM charges")
    assert sorted(c["idempotency_key"] for c in charges) == sorted(keys)
    assert {c["gateway_charge_id"] for c in charges} == {i["id"] for i in succeeded}
    depths = await queue_depths(settings)
    work = depths[f"{settings.queue_prefix}.charge"]
    assert work[0] == 0, f"messages left on the work queue: {depths}"
    priority = depths.get(f"{settings.queue_prefix}.charge.priority", (0, 0))
    assert priority[0] == 0, f"messages left on the priority queue: {depths}"


@contextlib.asynccontextmanager
async def workers(settings: Settings, n: int = 1) -> AsyncIterator[None]:
    """``n`` workers in this process (the ``run_worker`` the CLI runs), stopped cleanly."""
    from worker.run import run_worker

    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_worker(settings, stop)) for _ in range(n)]
    try:
        yield
    finally:
        stop.set()
        assert await asyncio.gather(*tasks) == [0] * n
