"""Kill things mid-flight and count the money afterwards.

Fast scenarios (machine services, own database and queue prefix) run in `make test`;
the ones that kill a broker or a database use throwaway nodes and are `slow`
(`make chaos` runs them all and prints the table). Faults come from a seeded RNG: the
seed is printed in every failure (`Result.seed`); replay with CHAOS_SEED=<seed>.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import asyncpg
import pytest
import testkit
from harness import Pipeline, Result, assert_invariants, seed_value
from proxy import CuttableProxy
from services import ThrowawayCluster, ThrowawayPostgres, ThrowawayRabbit, stop_all

from shared.amqp import names
from shared.config import Settings

pytestmark = [pytest.mark.chaos, pytest.mark.integration]
# pytest-timeout's 300 s (pyproject) stays the default; a scenario whose own waits (start-up of
# throwaway nodes, ``distributor.wait``, ``Pipeline.finish``) add up to more sets its own
# limit above that sum, so its own assertion, naming what did not settle, fails first.
AS_OF = testkit.AS_OF


def pipeline(
    settings: Settings,
    gateway: str,
    tmp: Path,
    *,
    db_url: str | None = None,
    amqp_url: str | None = None,
    **env: str,
) -> Pipeline:
    return Pipeline(
        settings,
        db_url or settings.database_url.get_secret_value(),
        amqp_url or settings.amqp_url.get_secret_value(),
        gateway,
        tmp,
        **env,
    )


def distribute_ok(p: Pipeline, *flags: str) -> None:
    out = p.billq("distribute", "--as-of", AS_OF, *flags)
    assert out.returncode == 0, out.stderr


async def test_workers_sigkilled_repeatedly_charge_everyone_exactly_once(
    settings: Settings, tmp_path: Path
) -> None:
    rnd, n = random.Random(seed := seed_value()), 150
    result = Result("1 workers SIGKILLed repeatedly", seed, n)
    with testkit.sandbox_gateway(tmp_path, "--latency-ms", "40") as gw:
        p = pipeline(settings, gw, tmp_path)
        await p.seed(n)
        distribute_ok(p)
        for _ in range(2):
            p.start_worker("--concurrency", "16")
        start = time.monotonic()
        for _ in range(6):
            await asyncio.sleep(rnd.uniform(0.2, 1.0))
            p.kill_worker(rnd.choice(p.workers))
            result.faults += 1
            p.start_worker("--concurrency", "16")
        await p.finish(result, start)
    assert_invariants(result)


async def test_a_gateway_fault_storm_still_charges_everyone_exactly_once(
    settings: Settings, tmp_path: Path
) -> None:
    n, seed = 100, seed_value()
    result = Result("4 gateway 30% 5xx, 20% timeouts, spikes", seed, n)
    flags = (
        "--fail-rate",
        "0.3",
        "--timeout-rate",
        "0.2",
        "--latency-ms",
        "5",
        # 10 % of answers arrive after 1.5 s: beyond BILLQ_GATEWAY_TIMEOUT=1, so they are
        # timeouts of calls that did charge; the key's replay must settle them.
        "--spike-rate",
        "0.1",
        "--spike-ms",
        "1500",
        "--seed",
        str(seed),
    )
    with testkit.sandbox_gateway(tmp_path, *flags) as gw:
        p = pipeline(settings, gw, tmp_path, BILLQ_GATEWAY_TIMEOUT="1", BILLQ_MAX_ATTEMPTS="25")
        await p.seed(n)
        distribute_ok(p)
        start = time.monotonic()
        p.start_worker("--concurrency", "32")
        await p.finish(result, start, timeout=150)
        result.faults = sum(
            log.read_text().count("job.retry_scheduled") for log in tmp_path.glob("worker-*.log")
        )
    assert result.faults > 0, "no fault was injected"
    assert_invariants(result)


async def test_a_purged_work_queue_is_repaired_by_the_reconciler(
    settings: Settings, tmp_path: Path
) -> None:
    rnd, n = random.Random(seed := seed_value()), 200
    result = Result("6 operator purges the work queue", seed, n)
    with testkit.sandbox_gateway(tmp_path, "--latency-ms", "100") as gw:
        p = pipeline(settings, gw, tmp_path, BILLQ_STUCK_AFTER="1")
        await p.seed(n)
        distribute_ok(p)
        start = time.monotonic()
        p.start_worker("--concurrency", "8")
        await asyncio.sleep(rnd.uniform(0.5, 1.5))
        conn = await aio_pika.connect(p.amqp_url)
        try:
            channel = await conn.channel()
            queue = await channel.declare_queue(
                names.work_queue(settings.queue_prefix), passive=True
            )
            purged = await queue.purge()
            result.faults = int(getattr(purged, "message_count", 0) or 0)
        finally:
            await conn.close()
        await p.finish(result, start, reconcile_every=2)
    assert result.faults > 0, "nothing was purged"
    assert_invariants(result)


@pytest.mark.timeout(420)
async def test_a_distributor_killed_between_insert_and_publish_is_completed_by_the_next_run(
    settings: Settings, tmp_path: Path
) -> None:
    rnd, n = random.Random(seed := seed_value()), 3000
    result = Result("7 distributor killed mid-publish", seed, n)
    with testkit.sandbox_gateway(tmp_path) as gw:
        p = pipeline(settings, gw, tmp_path)
        await p.seed(n)
        victim = p.spawn("distribute", "--as-of", AS_OF, "--batch-size", "50")
        await asyncio.sleep(rnd.uniform(0.6, 1.2))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        result.faults = 1
        pending = await p._db("SELECT count(*) FROM billing_jobs WHERE state = 'pending'")
        start = time.monotonic()
        distribute_ok(p)  # the next cron run
        for _ in range(2):
            p.start_worker("--concurrency", "64", "--gateway", "inprocess")
        try:
            await p.settle(n, timeout=180)
        finally:
            p.stop_workers()
        result.settle_s = round(time.monotonic() - start, 1)
        result.info = f"{pending} pending after the kill"
        # The in-process gateway keeps its ledger in the workers: count from Postgres.
        counts = await p._db("SELECT count(DISTINCT account_id) FROM charges")
        dupes = await p._db("SELECT count(*) - count(DISTINCT account_id) FROM charges")
        open_jobs = await p.open_jobs()
        result.charged_once = int(counts)
        result.double_charges = int(dupes)
        result.lost = n - int(counts) + open_jobs
    result.record()
    assert (result.double_charges, result.lost, result.charged_once) == (0, 0, n), result


# --- slow: throwaway services ---------------------------------------------------------------


@pytest.fixture
def throwaway_pg() -> Iterator[ThrowawayPostgres]:
    pg = ThrowawayPostgres()
    pg.start()
    yield pg
    stop_all(pg)


@pytest.fixture
def throwaway_rabbit() -> Iterator[ThrowawayRabbit]:
    node = ThrowawayRabbit()
    node.start()
    yield node
    stop_all(node)


@pytest.fixture
def throwaway_cluster() -> Iterator[ThrowawayCluster]:
    cluster = ThrowawayCluster(3)
    try:
        cluster.start()
        yield cluster
    finally:
        stop_all(cluster)


@pytest.mark.slow
@pytest.mark.timeout(480)
async def test_postgres_killed_and_restarted_mid_run_workers_recover_alone(
    settings: Settings, throwaway_pg: ThrowawayPostgres, tmp_path: Path
) -> None:
    rnd, n = random.Random(seed := seed_value()), 200
    result = Result("3 Postgres kill -9 + restart", seed, n)
    with testkit.sandbox_gateway(tmp_path, "--latency-ms", "30") as gw:
        p = pipeline(settings, gw, tmp_path, db_url=throwaway_pg.url)
        assert p.billq("migrate").returncode == 0
        await p.seed(n)
        distribute_ok(p)
        for _ in range(2):
            p.start_worker("--concurrency", "16")
        start = time.monotonic()
        await asyncio.sleep(rnd.uniform(0.3, 1.0))
        throwaway_pg.crash()
        result.faults = 1
        await asyncio.sleep(rnd.uniform(1.0, 3.0))
        throwaway_pg.start()
        await p.finish(result, start, timeout=180, workers_survive=True)
    assert_invariants(result)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_the_broker_killed_while_publishing_and_consuming_loses_nothing(
    settings: Settings, throwaway_rabbit: ThrowawayRabbit, tmp_path: Path
) -> None:
    rnd, n = random.Random(seed := seed_value()), 1500
    result = Result("2 broker kill -9 + restart", seed, n)
    with testkit.sandbox_gateway(tmp_path, "--latency-ms", "20") as gw:
        p = pipeline(settings, gw, tmp_path, amqp_url=throwaway_rabbit.url)
        await p.seed(n)
        for _ in range(2):
            p.start_worker("--concurrency", "32")
        start = time.monotonic()
        distributor = p.spawn("distribute", "--as-of", AS_OF, "--batch-size", "100")
        for _ in range(2):  # once while publishing, once while consuming
            await asyncio.sleep(rnd.uniform(0.3, 1.5))
            throwaway_rabbit.crash()
            result.faults += 1
            await asyncio.sleep(rnd.uniform(1.0, 3.0))
            throwaway_rabbit.start()
        code = distributor.wait(timeout=120)
        if code != 0:
            result.info = "distributor failed clearly; next run completed"
            distribute_ok(p)  # the next cron run finishes the period
        await p.finish(result, start, timeout=240, workers_survive=True)
    assert_invariants(result)


@pytest.mark.slow
@pytest.mark.timeout(420)
async def test_the_network_between_workers_and_broker_cut_and_restored(
    settings: Settings, tmp_path: Path
) -> None:
    rnd, n = random.Random(seed := seed_value()), 300
    result = Result("5 network to the broker cut", seed, n)
    broker_port = int(settings.amqp_urls[0].rsplit(":", 1)[1].split("/")[0])
    with (
        testkit.sandbox_gateway(tmp_path, "--latency-ms", "50") as gw,
        CuttableProxy(broker_port) as proxy,
    ):
        p = pipeline(settings, gw, tmp_path)
        await p.seed(n)
        distribute_ok(p)
        p.env["BILLQ_AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        for _ in range(2):
            p.start_worker("--concurrency", "16")
        start = time.monotonic()
        for _ in range(2):
            await asyncio.sleep(rnd.uniform(0.5, 1.5))
            proxy.cut()
            await asyncio.sleep(rnd.uniform(1.0, 4.0))
            proxy.restore()
        result.faults = proxy.cuts
        await p.finish(result, start, timeout=120, workers_survive=True)
    assert_invariants(result)


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_the_quorum_leader_killed_in_a_three_node_cluster_loses_nothing(
    settings: Settings, throwaway_cluster: ThrowawayCluster, tmp_path: Path
) -> None:
    """Scenario 8: the work queue is a quorum queue on three nodes; its leader is killed -9
    while the distributor publishes and again while workers consume, then restarted."""
    rnd, n = random.Random(seed := seed_value()), 1500
    result = Result("8 quorum leader kill -9 (3 nodes)", seed, n)
    work = names.work_queue(settings.queue_prefix)
    with testkit.sandbox_gateway(tmp_path, "--latency-ms", "20") as gw:
        p = pipeline(settings, gw, tmp_path, amqp_url=throwaway_cluster.url)
        assert p.billq("topology").returncode == 0
        await p.seed(n)
        for _ in range(2):
            p.start_worker("--concurrency", "32")
        leader = await asyncio.to_thread(throwaway_cluster.leader_of, work)
        start = time.monotonic()
        distributor = p.spawn("distribute", "--as-of", AS_OF, "--batch-size", "100")
        for i in range(2):  # once while publishing, once while consuming
            await asyncio.sleep(rnd.uniform(0.2, 0.8) if i == 0 else rnd.uniform(0.5, 2.0))
            if i:
                leader = await asyncio.to_thread(throwaway_cluster.leader_of, work)
            leader.crash()
            result.faults += 1
            await asyncio.sleep(rnd.uniform(2.0, 5.0))
            await asyncio.to_thread(leader.start)
        # With three brokers the distributor fails over to a live one and finishes its run.
        assert distributor.wait(timeout=180) == 0, "the distributor did not fail over"
        await p.finish(result, start, timeout=300, workers_survive=True)
        # The failover resumed the same run: one run, not a failed one plus a second.
        runs = await p._db("SELECT string_agg(state, ',') FROM billing_runs")
    assert_invariants(result)
    assert runs in ("published", "completed"), runs


@pytest.fixture
def primary_and_standby() -> Iterator[tuple[ThrowawayPostgres, ThrowawayPostgres]]:
    primary = ThrowawayPostgres()
    standby: ThrowawayPostgres | None = None
    try:
        primary.start()
        standby = ThrowawayPostgres(standby_of=primary)
        standby.start()
        yield primary, standby
    finally:
        stop_all(*(pg for pg in (primary, standby) if pg is not None))


async def _terminal_jobs(url: str) -> int | None:
    """Jobs finished, as the given server sees them; None while it does not answer."""
    try:
        conn = await asyncpg.connect(url, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM billing_jobs WHERE state IN ('succeeded','failed','dead')"
            )
        )
    finally:
        await conn.close()


@pytest.mark.slow
async def test_the_postgres_primary_killed_and_the_standby_promoted_loses_nothing(
    settings: Settings,
    primary_and_standby: tuple[ThrowawayPostgres, ThrowawayPostgres],
    tmp_path: Path,
) -> None:
    """Scenario 9: a primary and a streaming standby (asynchronous, the default: the worst
    case, commits the standby had not received are lost). Workers and distributor get both
    hosts with ``target_session_attrs=read-write``; the primary is killed -9 while the
    distributor publishes and workers charge, the standby is promoted a moment later. Nobody
    is told the new address: they find it by themselves. Charges whose commit was lost are
    settled by the key's replay at the gateway (workers' redelivery, reconcile)."""
    primary, standby = primary_and_standby
    rnd, n = random.Random(seed := seed_value()), 1500
    result = Result("9 Postgres primary kill -9, standby promoted", seed, n)
    both = (
        f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/billq"
        "?target_session_attrs=read-write"
    )
    with testkit.sandbox_gateway(tmp_path, "--latency-ms", "20") as gw:
        # A short lease: jobs claimed on the lost primary come back quickly.
        p = pipeline(settings, gw, tmp_path, db_url=both, BILLQ_STUCK_AFTER="5")
        migrated = p.billq("migrate")
        assert migrated.returncode == 0, migrated.stderr
        await p.seed(n)
        for _ in range(2):
            p.start_worker("--concurrency", "16")
        start = time.monotonic()
        distributor = p.spawn("distribute", "--as-of", AS_OF, "--batch-size", "100")
        # Kill once workers are charging (and, usually, the distributor still publishes).
        kill_at = rnd.randint(50, 300)
        while (before := await _terminal_jobs(primary.url) or 0) < kill_at:
            if time.monotonic() - start > 120:
                raise AssertionError(f"no progress before the kill: see {tmp_path}")
            await asyncio.sleep(0.05)
        publishing = distributor.poll() is None
        killed = time.monotonic()
        primary.crash()
        result.faults = 1
        await asyncio.sleep(rnd.uniform(1.0, 3.0))  # the operator (or Patroni) decides
        await asyncio.to_thread(standby.promote)
        promoted = time.monotonic()
        baseline = await _terminal_jobs(standby.url)
        while (done := await _terminal_jobs(standby.url)) is None or done <= (baseline or 0):
            if time.monotonic() - promoted > 120:
                raise AssertionError(f"no job finished on the new primary: see {tmp_path}")
            await asyncio.sleep(0.1)
        recovered = time.monotonic()
        code = distributor.wait(timeout=120)
        if code != 0:  # the run failed clearly; the next cron run, same URL, finishes it
            said = (tmp_path / "distribute-3.log").read_text().strip().splitlines()[-1]
            assert "database unavailable" in said, said  # not taken for a broker failover
            distribute_ok(p)
        await p.finish(result, start, timeout=240, workers_survive=True)
        # A message whose job insert the failover lost is dead-lettered (unknown job) and
        # the job made again by the next distribute: visible to operators, not to money.
        dead = (await testkit.queue_depths(settings))[
            names.dead_letter_queue(settings.queue_prefix)
        ]
        result.info = (
            f"{dead[0]} dead letters; "
            f"promoted {promoted - killed:.1f}s after the kill; workers committing again "
            f"{recovered - promoted:.1f}s after promotion; distributor "
            f"{'mid-run at the kill, ' if publishing else ''}exit {code}; finished jobs "
            f"{before} on the primary just before the kill, {baseline} on the promoted standby"
        )
    assert_invariants(result)
