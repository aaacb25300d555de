"""A chaos scenario's pipeline: real subprocesses, faults, settling, the money count."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aio_pika
import asyncpg
import testkit

from shared.amqp import names, topology
from shared.config import Settings

PERIOD_END = "2026-04-01"


def seed_value() -> int:
    return int(os.environ.get("CHAOS_SEED", random.randrange(1, 10**6)))


@dataclass
class Result:
    scenario: str
    seed: int
    accounts: int
    faults: int = 0
    charged_once: int = 0
    double_charges: int = 0
    lost: int = 0
    settle_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    info: str = ""

    def record(self) -> None:
        path = os.environ.get("CHAOS_RESULTS")
        if path:
            with open(path, "a") as out:
                out.write(json.dumps(asdict(self)) + "\n")


class Pipeline:
    """Distributor, workers and reconciler as real processes against one environment."""

    # Every pipeline of the running test, so a failing test still stops its processes
    # (the autouse fixture in conftest.py); a leftover worker would skew every later test.
    live: ClassVar[list[Pipeline]] = []

    def __init__(
        self,
        settings: Settings,
        db_url: str,
        amqp_url: str,
        gateway_url: str,
        tmp: Path,
        **extra_env: str,
    ) -> None:
        self.settings = settings
        self.db_url = db_url
        self.amqp_url = amqp_url
        self.gateway_url = gateway_url
        self.tmp = tmp
        self.env = testkit.env_for(settings.model_copy(update={"gateway_url": gateway_url}))
        self.env.update(
            BILLQ_DATABASE_URL=db_url, BILLQ_AMQP_URL=amqp_url, BILLQ_PUBLISH_TIMEOUT="10"
        )
        self.env.update(extra_env)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.spawned: list[subprocess.Popen[bytes]] = []
        self._n = 0
        Pipeline.live.append(self)

    def billq(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "billq", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        self._n += 1
        log = (self.tmp / f"{args[0]}-{self._n}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "billq", *args],
            env=self.env,
            stdout=log,
            stderr=log,
        )
        self.spawned.append(proc)
        return proc

    def start_worker(self, *flags: str) -> subprocess.Popen[bytes]:
        proc = self.spawn("worker", *flags)
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.workers.remove(proc)

    def stop_workers(self) -> None:
        for proc in self.workers:
            testkit.stop_process(proc, timeout=30)
        self.workers.clear()

    def kill_all(self) -> None:
        """Kill whatever this pipeline started and is still running (test teardown)."""
        for proc in self.spawned:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.workers.clear()

    async def seed(self, n: int) -> None:
        conn = await asyncpg.connect(self.db_url)
        try:
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
                    "pm_card_visa",
                    None,
                )
                for i in range(1, n + 1)
            ]
            await conn.copy_records_to_table(
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
        finally:
            await conn.close()

    async def _db(self, query: str) -> Any:
        conn = await asyncpg.connect(self.db_url, timeout=5)
        try:
            return await conn.fetchval(query)
        finally:
            await conn.close()

    async def open_jobs(self) -> int:
        return int(
            await self._db(
                "SELECT count(*) FROM billing_jobs WHERE state NOT IN ('succeeded','failed','dead','already_paid')"
            )
        )

    async def queued(self) -> int:
        conn = await aio_pika.connect(self.amqp_url.split(",")[0], timeout=5)
        total = 0
        try:
            p = self.settings.queue_prefix
            for q in [names.work_queue(p), names.priority_queue(p)] + [
                names.lane_retry_queue(p, lane, t)
                for lane in names.LANES
                for t in topology.retry_tiers(self.settings)
            ]:
                channel = await conn.channel()
                try:
                    total += (
                        await channel.declare_queue(q, passive=True)
                    ).declaration_result.message_count or 0
                finally:
                    if not channel.is_closed:
                        await channel.close()
        finally:
            await conn.close()
        return total

    async def settle(
        self, expected_jobs: int, timeout: float = 120.0, reconcile_every: float = 3.0
    ) -> float:
        """Wait until every job is terminal and nothing is queued, running the reconciler
        the way cron would; returns seconds taken."""
        start = time.monotonic()
        last_reconcile = start
        while True:
            try:
                jobs = int(await self._db("SELECT count(*) FROM billing_jobs"))
                if (
                    jobs >= expected_jobs
                    and await self.open_jobs() == 0
                    and await self.queued() == 0
                ):
                    return round(time.monotonic() - start, 1)
            except (TimeoutError, OSError, asyncpg.PostgresError, aio_pika.exceptions.AMQPError):
                pass  # a service is down right now: that is the scenario
            if time.monotonic() - start > timeout:
                raise AssertionError(f"not settled within {timeout}s: see logs in {self.tmp}")
            if time.monotonic() - last_reconcile > reconcile_every:
                await asyncio.to_thread(self.billq, "reconcile")
                last_reconcile = time.monotonic()
            await asyncio.sleep(0.5)

    async def finish(
        self,
        result: Result,
        started: float,
        *,
        timeout: float = 120.0,
        reconcile_every: float = 3.0,
        workers_survive: bool = False,
    ) -> None:
        """Settle the run, stop the workers and count the money into ``result``.

        ``workers_survive``: the fault was not aimed at the workers, so none may have died.
        """
        try:
            await self.settle(result.accounts, timeout=timeout, reconcile_every=reconcile_every)
            if workers_survive:
                assert all(w.poll() is None for w in self.workers), "a worker died"
        finally:
            self.stop_workers()
        result.settle_s = round(time.monotonic() - started, 1)
        await self.count_money(result)

    async def count_money(self, result: Result) -> Result:
        """The invariants, as numbers; the test asserts on them."""
        intents = await asyncio.to_thread(testkit.ledger, self.gateway_url)
        per_account = Counter(
            int(i["metadata"]["billq_account_id"]) for i in intents if i["status"] == "succeeded"
        )
        conn = await asyncpg.connect(self.db_url)
        try:
            charges = Counter(
                r["account_id"] for r in await conn.fetch("SELECT account_id FROM charges")
            )
            jobs = await conn.fetch("SELECT account_id, state FROM billing_jobs")
            advanced = await conn.fetchval(
                f"SELECT count(*) FROM accounts WHERE next_billing_at = '{PERIOD_END}Z'"
            )
            behind = await conn.fetchval(
                f"SELECT count(*) FROM accounts WHERE next_billing_at > '{PERIOD_END}Z'"
            )
        finally:
            await conn.close()
        accounts = range(1, result.accounts + 1)
        result.charged_once = sum(1 for a in accounts if per_account[a] == 1 and charges[a] == 1)
        result.double_charges = sum(1 for a in accounts if per_account[a] > 1 or charges[a] > 1)
        terminal = {"succeeded", "failed", "dead", "already_paid"}
        jobbed = {j["account_id"] for j in jobs if j["state"] in terminal}
        result.lost = sum(1 for a in accounts if a not in jobbed or per_account[a] == 0)
        if advanced != result.accounts or behind:
            result.notes.append(f"next_billing_at advanced for {advanced}, too far for {behind}")
        if len(jobs) != result.accounts:
            result.notes.append(f"{len(jobs)} jobs for {result.accounts} accounts")
        return result


def assert_invariants(result: Result) -> None:
    result.record()
    assert result.double_charges == 0, result
    assert result.lost == 0, result
    assert result.charged_once == result.accounts, result
    assert not result.notes, result
