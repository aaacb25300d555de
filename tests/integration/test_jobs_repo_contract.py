"""``JobsRepo``'s rules, run against Postgres (``PgJobsRepo``) and the unit tests' fake.

Each scenario arranges accounts and jobs through a small ``Store`` (SQL for Postgres, plain
objects for the fake) and then speaks only the port, so both must answer alike: what the
handler's unit tests rely on in the fake is what the worker gets from Postgres.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
from collections.abc import AsyncIterator
from typing import Protocol

import asyncpg
import pytest
from jobskit import FakeJobsRepo

from shared.billing.claims import ClaimedJob, ClaimRequest
from shared.billing.dunning import decide
from shared.config import Settings
from shared.db import jobs_repo, workers_repo
from shared.db.jobs_port import JobsRepo
from shared.db.jobs_repo import PgJobsRepo
from shared.db.pool import create_pool

MARCH = dt.date(2026, 3, 1)
APRIL = dt.date(2026, 4, 1)


class Store(Protocol):
    repo: JobsRepo

    async def add_account(
        self, account_id: int, *, status: str = "active", cancelled_at: dt.datetime | None = None
    ) -> None: ...

    async def add_job(
        self,
        job_id: int,
        account_id: int,
        *,
        dunning_attempt: int = 0,
        state: str = "published",
        period: tuple[dt.date, dt.date] = (MARCH, APRIL),
    ) -> None: ...


class FakeStore:
    def __init__(self) -> None:
        # The holder "w1" is a live worker: its claims hold until their lease runs out.
        self.fake = FakeJobsRepo(worker_id="w1", lease_s=30, live_workers={"w1"})
        self.repo: JobsRepo = self.fake

    async def add_account(
        self, account_id: int, *, status: str = "active", cancelled_at: dt.datetime | None = None
    ) -> None:
        self.fake.add_account(account_id, status=status, cancelled_at=cancelled_at)

    async def add_job(
        self,
        job_id: int,
        account_id: int,
        *,
        dunning_attempt: int = 0,
        state: str = "published",
        period: tuple[dt.date, dt.date] = (MARCH, APRIL),
    ) -> None:
        self.fake.add_job(
            job_id,
            account_id,
            period[0],
            dunning_attempt=dunning_attempt,
            state=state,
            period_end=period[1],
        )


class PostgresStore:
    def __init__(self, db: asyncpg.Connection, pool: asyncpg.Pool, run_id: int) -> None:
        self._db, self._run_id = db, run_id
        self.repo: JobsRepo = PgJobsRepo(pool, worker_id="w1", lease_s=30)

    async def add_account(
        self, account_id: int, *, status: str = "active", cancelled_at: dt.datetime | None = None
    ) -> None:
        await self._db.execute(
            "INSERT INTO accounts (id, name, email, amount_cents, currency, billing_interval,"
            " billing_anchor_day, next_billing_at, status, payment_method, cancelled_at)"
            " VALUES ($1, 'n', 'n@example.com', 1999, 'USD', 'month', 1, $2, $3,"
            " 'pm_card_visa', $4)",
            account_id,
            dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
            status,
            cancelled_at,
        )

    async def add_job(
        self,
        job_id: int,
        account_id: int,
        *,
        dunning_attempt: int = 0,
        state: str = "published",
        period: tuple[dt.date, dt.date] = (MARCH, APRIL),
    ) -> None:
        key = f"billq_{account_id}_{period[0].isoformat()}" + (
            f"_d{dunning_attempt}" if dunning_attempt else ""
        )
        await self._db.execute(
            "INSERT INTO billing_jobs (id, run_id, account_id, period_start, period_end,"
            " idempotency_key, amount_cents, currency, state, dunning_attempt)"
            " VALUES ($1, $2, $3, $4, $5, $6, 1999, 'USD', $7, $8)",
            job_id,
            self._run_id,
            account_id,
            period[0],
            period[1],
            key,
            state,
            dunning_attempt,
        )


@pytest.fixture(
    params=[
        pytest.param("fake", marks=pytest.mark.unit),
        pytest.param("postgres", marks=pytest.mark.integration),
    ]
)
def store(request: pytest.FixtureRequest) -> Store:
    # Looked up by name so the fake's cases need no database at all.
    found: Store = request.getfixturevalue(f"{request.param}_store")
    return found


@pytest.fixture
def fake_store() -> FakeStore:
    return FakeStore()


@pytest.fixture
async def postgres_store(
    settings: Settings, db: asyncpg.Connection
) -> AsyncIterator[PostgresStore]:
    pool = await create_pool(settings)
    try:
        # The holder "w1" is a live worker: its claims hold until their lease runs out.
        await workers_repo.heartbeat(pool, "w1", "host", 1, 0, 0)
        run_id = await db.fetchval("INSERT INTO billing_runs (as_of) VALUES (now()) RETURNING id")
        yield PostgresStore(db, pool, run_id)
    finally:
        await pool.close()


def req(
    job_id: int,
    account_id: int = 1,
    *,
    dunning: int = 0,
    key: str | None = None,
    redelivered: bool = False,
    handoff: int | None = None,
) -> ClaimRequest:
    """A claim for the job as its message would carry it."""
    planned = f"billq_{account_id}_{MARCH.isoformat()}" + (f"_d{dunning}" if dunning else "")
    return ClaimRequest(job_id, account_id, key or planned, redelivered, handoff)


async def claim_one(repo: JobsRepo, request: ClaimRequest) -> ClaimedJob | None:
    return (await repo.claim_many([request])).get(0)


async def state(repo: JobsRepo, job_id: int) -> tuple[str, int]:
    snap = (await repo.lookup_many([job_id]))[job_id]
    return snap.state, snap.attempts


# -- the fake is the port ------------------------------------------------------------------


@pytest.mark.unit
def test_the_fake_and_postgres_have_the_ports_methods_with_its_signatures() -> None:
    port = {n: m for n, m in inspect.getmembers(JobsRepo) if not n.startswith("_")}
    assert set(port) == {
        "claim_many",
        "lookup_many",
        "record_successes",
        "record_decline",
        "record_retry",
        "record_already_paid",
        "record_refund",
        "record_dead",
    }
    for impl in (FakeJobsRepo, PgJobsRepo):
        for name, method in port.items():
            theirs = inspect.signature(inspect.unwrap(getattr(impl, name)))
            assert list(theirs.parameters) == list(inspect.signature(method).parameters), (
                impl,
                name,
            )
            assert inspect.iscoroutinefunction(getattr(impl, name)), (impl, name)


# -- claiming ------------------------------------------------------------------------------


async def test_a_published_job_is_claimed_once_with_the_gate_open(store: Store) -> None:
    await store.add_account(1)
    await store.add_job(10, 1)

    first = await claim_one(store.repo, req(10))
    again = await claim_one(store.repo, req(10))

    assert first is not None and again is None
    assert (first.attempts, first.account_status, first.payment_method) == (
        1,
        "active",
        "pm_card_visa",
    )
    assert (first.amount_cents, first.currency, first.period_start) == (1999, "USD", MARCH)
    assert first.gate() is None
    assert first.started_at is not None
    assert await state(store.repo, 10) == ("processing", 1)


async def test_two_copies_of_a_job_in_one_batch_claim_it_once(store: Store) -> None:
    await store.add_account(1)
    await store.add_job(10, 1)

    claimed = await store.repo.claim_many([req(10), req(10, redelivered=True)])

    assert len(claimed) == 1
    assert await state(store.repo, 10) == ("processing", 1)


async def test_a_message_that_does_not_match_its_job_claims_nothing(store: Store) -> None:
    await store.add_account(1)
    await store.add_job(10, 1)

    assert await claim_one(store.repo, req(10, key="billq_1_forged")) is None
    assert await claim_one(store.repo, req(10, account_id=2)) is None
    snap = (await store.repo.lookup_many([10, 11]))[10]
    assert (snap.account_id, snap.idempotency_key, snap.state) == (
        1,
        "billq_1_2026-03-01",
        "published",
    )


async def test_a_retrying_job_is_claimed_only_with_its_hand_off_token(store: Store) -> None:
    await store.add_account(1)
    await store.add_job(10, 1)
    job = await claim_one(store.repo, req(10))
    assert job is not None
    assert await store.repo.record_retry(job, "gateway answered 500")

    assert await claim_one(store.repo, req(10)) is None
    assert await claim_one(store.repo, req(10, handoff=7)) is None
    retried = await claim_one(store.repo, req(10, handoff=job.attempts))

    assert retried is not None and retried.attempts == 2


async def test_a_redelivered_copy_takes_over_and_the_first_holder_is_fenced_out(
    store: Store,
) -> None:
    await store.add_account(1)
    await store.add_job(10, 1)
    first = await claim_one(store.repo, req(10))
    second = await claim_one(store.repo, req(10, redelivered=True))
    assert first is not None and second is not None

    assert await store.repo.record_successes([(first, "pi_old")]) == {}
    assert not await store.repo.record_retry(first, "late")
    assert not await store.repo.record_dead(10, first.attempts, "late")
    assert await store.repo.record_successes([(second, "pi_new")]) == {10: True}
    assert await state(store.repo, 10) == ("succeeded", 2)


# -- the gate ------------------------------------------------------------------------------


# The anchor moved from the 1st to the 15th between two jobs: [Mar 15, May 15) shares days
# with the paid [Mar 1, Apr 1).
SHIFTED = (dt.date(2026, 3, 15), dt.date(2026, 5, 15))
# A second job for the same days: a dunning attempt of the period, or a shifted period.
SAME_DAYS = [
    pytest.param({"dunning_attempt": 1}, "billq_1_2026-03-01_d1", "already_paid", id="same"),
    pytest.param({"period": SHIFTED}, "billq_1_2026-03-15", "overlaps_paid", id="overlapping"),
]


@pytest.mark.parametrize(("second", "key", "gate"), SAME_DAYS)
async def test_days_already_paid_are_gated_and_a_second_charge_is_flagged(
    store: Store, second: dict[str, object], key: str, gate: str
) -> None:
    await store.add_account(1)
    await store.add_job(10, 1)
    await store.add_job(11, 1, **second)  # type: ignore[arg-type]
    first = await claim_one(store.repo, req(10))
    assert first is not None
    assert await store.repo.record_successes([(first, "pi_first")]) == {10: True}

    again = await claim_one(store.repo, req(11, key=key))

    assert again is not None
    assert (again.gate(), again.paid_by or again.overlaps_paid) == (gate, "pi_first")
    # Money the gateway took anyway is never recorded as a second charge for those days.
    assert await store.repo.record_successes([(again, "pi_twice")]) == {11: False}
    assert await state(store.repo, 11) == ("already_paid", 1)


@pytest.mark.parametrize(("second", "key", "gate"), SAME_DAYS)
async def test_days_held_by_a_live_claim_are_busy(
    store: Store, second: dict[str, object], key: str, gate: str
) -> None:
    await store.add_account(1)
    await store.add_job(10, 1)
    await store.add_job(11, 1, **second)  # type: ignore[arg-type]
    assert await claim_one(store.repo, req(10)) is not None

    again = await claim_one(store.repo, req(11, key=key))

    assert again is not None
    assert (again.gate(), again.busy_with) == ("period_busy", 10)


@pytest.mark.integration
@pytest.mark.parametrize(("second", "key", "gate"), SAME_DAYS)
async def test_a_claim_waiting_for_the_accounts_lock_sees_the_claim_it_waited_for(
    settings: Settings,
    db: asyncpg.Connection,
    postgres_store: PostgresStore,
    second: dict[str, object],
    key: str,
    gate: str,
) -> None:
    # The gate reads a snapshot taken after the account's lock was granted: a claim that
    # waited for another claim of the same days sees it committed, and holds off.
    store = postgres_store
    await store.add_account(1)
    await store.add_job(10, 1)
    await store.add_job(11, 1, **second)  # type: ignore[arg-type]
    first = db.transaction()
    await first.start()
    await db.fetch(
        jobs_repo.CLAIM, [10], [1], [req(10).idempotency_key], [False], [None], [0], "w1", 30, 30
    )
    waiting = asyncio.create_task(claim_one(store.repo, req(11, key=key)))
    watcher = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        for _ in range(200):  # until the second claim waits for the lock (or ended without)
            blocked = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if blocked or waiting.done():
                break
            await asyncio.sleep(0.05)
    finally:
        await watcher.close()
    await first.commit()

    again = await waiting

    assert again is not None
    assert (again.gate(), again.busy_with) == ("period_busy", 10)


@pytest.mark.parametrize(("second", "key", "gate"), SAME_DAYS)
async def test_two_jobs_for_the_same_days_claimed_in_one_batch_let_only_one_charge(
    store: Store, second: dict[str, object], key: str, gate: str
) -> None:
    await store.add_account(1)
    await store.add_job(10, 1)
    await store.add_job(11, 1, **second)  # type: ignore[arg-type]

    claimed = await store.repo.claim_many([req(11, key=key), req(10)])

    assert sorted((c.job_id, c.gate(), c.busy_with) for c in claimed.values()) == [
        (10, None, None),
        (11, "period_busy", 10),
    ]


async def test_the_next_period_after_the_paid_one_is_not_an_overlap(store: Store) -> None:
    await store.add_account(1)
    await store.add_job(10, 1)
    await store.add_job(11, 1, period=(APRIL, dt.date(2026, 5, 15)))
    first = await claim_one(store.repo, req(10))
    assert first is not None
    assert await store.repo.record_successes([(first, "pi_march")]) == {10: True}

    after = await claim_one(store.repo, req(11, key="billq_1_2026-04-01"))

    assert after is not None and after.gate() is None


async def test_the_already_paid_record_ends_the_job(store: Store) -> None:
    await store.add_account(1)
    await store.add_job(10, 1)
    job = await claim_one(store.repo, req(10))
    assert job is not None

    assert await store.repo.record_already_paid(job, "already paid")
    assert not await store.repo.record_already_paid(job, "again")
    assert await state(store.repo, 10) == ("already_paid", 1)


@pytest.mark.parametrize(
    ("status", "cancelled", "gate"),
    [
        ("suspended", None, "not_billable"),
        ("cancelled", dt.datetime(2026, 2, 1, tzinfo=dt.UTC), "not_billable"),
        ("past_due", None, None),
        # Cancelled after the period started: that period is still owed.
        ("active", dt.datetime(2026, 3, 15, tzinfo=dt.UTC), None),
    ],
)
async def test_the_gate_bills_only_billable_accounts(
    store: Store, status: str, cancelled: dt.datetime | None, gate: str | None
) -> None:
    await store.add_account(1, status=status, cancelled_at=cancelled)
    await store.add_job(10, 1)

    job = await claim_one(store.repo, req(10))

    assert job is not None and job.gate() == gate


async def test_a_job_whose_account_is_gone_is_gated(store: Store) -> None:
    await store.add_job(10, 99)  # jobs outlive accounts: no foreign key

    job = await claim_one(store.repo, req(10, account_id=99))

    assert job is not None
    assert (job.account_status, job.payment_method, job.gate()) == (None, None, "account_missing")


# -- ending a job --------------------------------------------------------------------------


async def test_a_decline_fails_the_job_once(store: Store) -> None:
    await store.add_account(1)
    await store.add_job(10, 1)
    job = await claim_one(store.repo, req(10))
    assert job is not None
    decision = decide(
        attempt=0,
        code="card_declined",
        decline_code="insufficient_funds",
        first_declined_at=dt.datetime.now(dt.UTC),
    )

    assert await store.repo.record_decline(job, "declined", "insufficient_funds", decision)
    assert not await store.repo.record_decline(job, "declined", "insufficient_funds", decision)
    assert await state(store.repo, 10) == ("failed", 1)


async def test_dead_needs_no_fence_but_never_overwrites_a_finished_job(store: Store) -> None:
    await store.add_account(1)
    await store.add_account(2)
    await store.add_job(10, 1)
    await store.add_job(20, 2, state="succeeded")

    assert await store.repo.record_dead(10, None, "account vanished")
    assert not await store.repo.record_dead(20, None, "too late")
    assert not await store.repo.record_dead(10, None, "twice")
    assert (await state(store.repo, 10))[0] == "dead"
    assert (await state(store.repo, 20))[0] == "succeeded"
