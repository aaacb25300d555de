"""A stateful model of every path that can move money, for Hypothesis to interleave.

``MoneyMachine`` runs distribute (various ``as_of``), worker batches, gateway faults (5xx,
timeout after the charge, a gateway that answers nothing), a worker crash right after the
charge, lost messages, card updates, account cancels, re-imports, ``jobs retry``,
``jobs cancel``, ``dlq replay``, reconcile and ``audit --repair`` against the real Postgres
and RabbitMQ and an in-process sandbox gateway, and checks the money invariants after every
step:

1. at most one succeeded gateway charge per (account, period) — and per one-off charge
   (an application's ``POST /v1/charges``, under its caller's key), for the amount asked;
2. after reconcile + audit(repair) every (account, period) and every one-off the gateway
   charged has a ``charges`` row (checked by the ``audit_records_every_charge`` rule and at
   teardown);
3. no charge is taken, while an account is cancelled, for a period that starts at or after
   its ``cancelled_at``;
4. no two succeeded gateway charges of one account cover the same day (re-imports change
   ``billing_anchor_day`` and ``billing_interval`` between periods);
5. an operator's cancel (``accounts cancel``) is undone only by ``accounts reactivate``,
   never by a re-import saying ``active``;
R. refunds of recorded charges — full and partial, replayed, unpublished, raced by operators,
   crashed between the gateway's refund and the commit — never refund more than a charge took,
   each key at most once, each recorded with one credit note, and every refund the gateway
   made is recorded after ``reconcile`` alone (``tests/money_refunds.py``, R1-R4).

The harness stands in for the processes so that a run is deterministic and fast:

- a worker batch is ``Handler.handle_batch`` on deliveries fetched with ``basic.get`` from the
  priority queue, then the bulk work queue; the test then does what the consumer does with
  each outcome (ack; a retry copy with its hand-off token; a dead letter with billq's
  headers);
- a retry copy is HELD by the test instead of waiting out a delayed retry queue's TTL, and the
  ``release_retry`` rules publish held copies straight to the work exchange, so a copy comes
  back before or after any other step, as a delay tier allows;
- operator commands are composed from the same calls as the CLI (``shared.operations``,
  ``shared.amqp.dlq``, the outbox).

The database and queues are reset per example (TRUNCATE, purge), not recreated.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import aio_pika
import asyncpg
import httpx
import hypothesis
from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from money_refunds import CrashAfterCall, RefundRules

from distributor.outbox import Outbox
from distributor.run import distribute, reconcile_once
from sandbox.server import build_app
from shared import oneoff, operations
from shared.amqp import dlq, names, topology
from shared.amqp.publisher import Publisher
from shared.audit import audit
from shared.billing.accounts import AccountRow
from shared.billing.periods import Interval
from shared.config import Settings
from shared.db import accounts_repo
from shared.db.jobs_repo import PgJobsRepo
from shared.db.pool import create_pool
from shared.errors import ActionRefused, ConfigError, RequestRefused
from shared.gateway.factory import make_gateway
from shared.messages import HANDOFF_HEADER
from worker.handler import Delivery, Handler
from worker.outcome import Dead, Retry

T = TypeVar("T")

ACCOUNTS = (1, 2, 3)
CARDS = (
    "pm_card_visa",
    "pm_card_mastercard",
    "pm_card_chargeDeclinedInsufficientFunds",  # soft decline: dunning retries it
    "pm_card_chargeDeclinedStolenCard",  # hard decline: the account is suspended
)
FAULTS = ("none", "none", "5xx", "timeout", "down")
ACTOR = "test:stateful"
ANCHORS = (1, 1, 15, 28)
INTERVALS = ("month", "month", "month", "year")
AUTH = {"Authorization": "Bearer sk_test_billq"}


def _months(day: dt.date, k: int) -> dt.date:
    m = day.month - 1 + k
    return dt.date(day.year + m // 12, m % 12 + 1, 1)


def _instant(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


# Periods are placed around the wall clock, so cancels "now", in the past and in the future
# all fall between billed periods: accounts start two months back, distribute bills up to
# four months ahead.
THIS_MONTH = dt.datetime.now(dt.UTC).date().replace(day=1)
START = _months(THIS_MONTH, -2)
CANCEL_AT: dict[str, Callable[[], dt.datetime]] = {
    "now": lambda: dt.datetime.now(dt.UTC),
    "last_month": lambda: _instant(_months(THIS_MONTH, -1)),
    "next_month": lambda: _instant(_months(THIS_MONTH, 1)),
    "in_three_months": lambda: _instant(_months(THIS_MONTH, 3)),
}


@dataclass
class Tally:
    """Figures over every example of one test run."""

    examples: int = 0
    steps: int = 0
    periods_charged: int = 0
    double_charges: int = 0
    faults: int = 0
    crashes: int = 0
    # Rounds Hypothesis ended because an example drew differently when run again (a
    # precondition that follows the services' timing on a loaded machine): not a violation.
    inconsistent_rounds: int = 0
    refunds: int = 0  # refunds the gateway made (each one checked recorded)
    refunded_cents: int = 0
    refund_jobs: int = 0
    rules: Counter[str] = field(default_factory=Counter)


class _Crash(BaseException):
    """A worker process dying right after the gateway answered (not an Exception: nothing
    in the handler may catch it, exactly like a SIGKILL)."""


class MoneyMachine(RefundRules, RuleBasedStateMachine):
    """One example = one fresh billing world (3 accounts, an empty gateway)."""

    def __init__(self, base: Settings, tally: Tally) -> None:
        super().__init__()
        self.tally = tally
        self.base = base
        self.loop = asyncio.new_event_loop()
        # Retry copies: body, headers, message id, routing key (the lane they return to).
        self.held: list[tuple[bytes, dict[str, Any], str | None, str]] = []
        self.seen: set[str] = set()  # succeeded intents already checked
        self.cancelled: dict[int, dt.datetime] = {}  # as of the end of the previous step
        self.operator_cancelled: set[int] = set()  # until `accounts reactivate`
        # Refreshed after every step, for the rules' preconditions (skip steps with no effect).
        self.ready = self.letters = self.jobs = 0
        self.since_audit = 0
        self.oneoffs: dict[str, tuple[int, int]] = {}  # gateway key → (job id, amount asked)
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._init_refunds()
        try:
            self.run(self._setup())
        except BaseException:
            self._close()
            raise
        tally.examples += 1

    # --- plumbing -------------------------------------------------------------------

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)

    async def _setup(self) -> None:
        app = build_app(ledger=":memory:")
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await runner.setup()
        self._closers.append(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        self.settings = self.base.model_copy(update={"gateway": "sandbox", "gateway_url": url})
        self.http = httpx.AsyncClient(base_url=url, headers=AUTH, timeout=10)
        self._closers.append(self.http.aclose)

        self.pool = await create_pool(self.settings, min_size=1, max_size=4)
        self._closers.append(self.pool.close)
        tables = [
            r["tablename"]
            for r in await self.pool.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'schema_migrations'"
            )
        ]
        await self.pool.execute(
            "TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"
        )

        self.conn = await aio_pika.connect(self.settings.amqp_url.get_secret_value())
        self._closers.append(self.conn.close)
        channel = await self.conn.channel()
        await topology.declare(channel, self.settings)
        p = self.settings.queue_prefix
        queues = [names.work_queue(p), names.priority_queue(p), names.dead_letter_queue(p)] + [
            names.lane_retry_queue(p, lane, t)
            for lane in names.LANES
            for t in topology.retry_tiers(self.settings)
        ]
        for q in queues:
            await (await channel.get_queue(q)).purge()
        self.work = await channel.get_queue(names.work_queue(p))
        self.priority = await channel.get_queue(names.priority_queue(p))
        self.publisher = Publisher(self.conn, timeout=self.settings.publish_timeout)
        self.outbox = Outbox(self.pool, self.publisher, self.settings)
        self.gateway = make_gateway(self.settings)
        self._closers.append(self.gateway.aclose)
        jobs = PgJobsRepo(self.pool, worker_id="stateful-worker", lease_s=self.settings.job_lease)
        self.handler = Handler(self.settings, jobs, self.gateway)
        self.crashing = Handler(self.settings, jobs, CrashAfterCall(self.gateway, _Crash))
        async with self.pool.acquire() as conn, conn.transaction():
            await accounts_repo.import_rows(
                cast(asyncpg.Connection, conn),
                [self._row(a) for a in ACCOUNTS],
                today=dt.datetime.now(dt.UTC).date(),
            )

    def _close(self) -> None:
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                self.run(close())
        self._closers.clear()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def teardown(self) -> None:
        try:
            if self._closers:
                self.run(self._settle())
                self.run(self._money_is_safe())
                self.run(self._refunds_are_safe())
                self.run(self._check_everything_recorded())
                self.run(self._count())
                self.run(self.count_refunds())
        finally:
            self._close()

    @staticmethod
    def _row(
        account: int,
        card: str = "pm_card_visa",
        amount: int = 0,
        status: str = "active",
        anchor: int = 1,
        interval: str = "month",
    ) -> AccountRow:
        return AccountRow(
            id=account,
            name=f"c{account}",
            email=f"c{account}@example.com",
            amount_cents=1000 + account + amount,
            currency="USD",
            billing_interval=cast(Interval, interval),
            billing_anchor_day=anchor,
            next_billing_at=_instant(START),
            status=status,
            payment_method=card,
            gateway_customer=f"cus_{account}",
            # A file with a status column: without it an import leaves statuses alone.
            status_given=True,
        )

    def _fault(self, fault: str) -> None:
        self.run(self._set_fault(fault))

    async def _set_fault(self, fault: str) -> None:
        """Through the sandbox's runtime control: "down" is an outage (every request, lookups
        included, answered 503), "5xx" fails every charge unexecuted, "timeout" stores every
        charge and never answers."""
        faults = {
            "fail_rate": float(fault == "5xx"),
            "timeout_rate": float(fault == "timeout"),
            "outage_status": 503 if fault == "down" else 0,
        }
        (await self.http.put("/_sandbox/faults", json=faults)).raise_for_status()
        if fault != "none":
            self.tally.faults += 1

    async def _ledger(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = (await self.http.get("/v1/payment_intents", params=params)).json()
            out.extend(page["data"])
            if not page["has_more"]:
                return out
            params["starting_after"] = page["data"][-1]["id"]

    async def _succeeded(self) -> list[dict[str, Any]]:
        return [i for i in await self._ledger() if i["status"] == "succeeded"]

    @staticmethod
    def _period(intent: dict[str, Any]) -> tuple[int, str]:
        """What is charged once: (account, period), or (account, "oneoff:" + key)."""
        meta = intent["metadata"]
        if meta.get("billq_kind") == "oneoff":
            return int(meta["billq_account_id"]), "oneoff:" + meta["billq_idempotency_key"]
        return int(meta["billq_account_id"]), meta["billq_period"]

    async def _job_ids(self) -> list[int]:
        return [r["id"] for r in await self.pool.fetch("SELECT id FROM billing_jobs ORDER BY id")]

    async def _take(self, n: int) -> list[AbstractIncomingMessage]:
        out: list[AbstractIncomingMessage] = []
        for queue in (self.priority, self.work):  # the priority lane first, as workers do
            while len(out) < n:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                out.append(message)
        return out

    async def _handle(self, handler: Handler, messages: list[AbstractIncomingMessage]) -> None:
        """What the consumer does: one broker action per outcome (retry copies are held)."""
        outcomes = await handler.handle_batch(
            [Delivery(m.body, m.headers or {}, bool(m.redelivered)) for m in messages]
        )
        for message, outcome in zip(messages, outcomes, strict=True):
            if isinstance(outcome, Retry):
                headers = dict(message.headers or {})
                headers.pop(HANDOFF_HEADER, None)
                if outcome.handoff is not None:
                    headers[HANDOFF_HEADER] = outcome.handoff
                self.held.append(
                    (message.body, headers, message.message_id, message.routing_key or "")
                )
            elif isinstance(outcome, Dead):
                headers = dict(message.headers or {})
                headers["x-billq-error-class"] = outcome.error_class
                headers["x-billq-error"] = outcome.reason[:1000]
                headers[dlq.ID_HEADER] = dlq.new_letter_id()
                await self.publisher.publish(
                    names.dead_letter_exchange(self.settings.queue_prefix),
                    message.routing_key or names.ROUTING_KEY,
                    message.body,
                    message_id=message.message_id,
                    headers=headers,
                )
            await message.ack()

    async def _settle(self, rounds: int = 6) -> None:
        """The end of every example: copies come back, workers drain the queue, the
        reconciler republishes what was lost — every path then ends where it would."""
        await self._set_fault("none")
        for _ in range(rounds):
            copies, self.held = self.held, []
            await self._release(copies)
            await reconcile_once(self.settings)
            while messages := await self._take(20):
                await self._handle(self.handler, messages)
            if not self.held:
                return

    async def _check_everything_recorded(self) -> None:
        """Invariant 2: after reconcile + audit(repair), every period charged is recorded;
        R4: after reconcile alone, every refund given back is (the audit finds none)."""
        await self._set_fault("none")
        await reconcile_once(self.settings)
        await self.refunds_recorded_after_reconcile()
        report = await audit(self.pool, self.gateway, since=None, repair=True)
        refund_findings = (
            report.findings.refunded_not_recorded + report.findings.refund_recorded_not_refunded
        )
        assert not refund_findings, f"the audit found refund differences: {refund_findings}"
        charged = {self._period(i) for i in await self._succeeded()}
        recorded = {
            (r["account_id"], r["period_start"].isoformat())
            if r["kind"] == "period"
            else (r["account_id"], "oneoff:" + r["idempotency_key"])
            for r in await self.pool.fetch(
                "SELECT kind, account_id, period_start, idempotency_key FROM charges"
            )
        }
        missing = sorted(charged - recorded)
        assert not missing, (
            f"money taken and never recorded for {missing} after reconcile + audit --repair "
            f"(not repaired: {report.not_repaired})"
        )

    async def _count(self) -> None:
        per = Counter(self._period(i) for i in await self._succeeded())
        self.tally.periods_charged += len(per)
        self.tally.double_charges += sum(n - 1 for n in per.values())

    # --- invariants 1 and 3, after every step ------------------------------------------

    @invariant()
    def money_is_safe(self) -> None:
        self.tally.steps += 1
        self.since_audit += 1
        self.run(self._money_is_safe())

    async def _money_is_safe(self) -> None:
        succeeded = await self._succeeded()
        per = Counter(self._period(i) for i in succeeded)
        twice = {k: n for k, n in per.items() if n > 1}
        assert not twice, f"a period was charged more than once at the gateway: {twice}"
        for intent in succeeded:
            if intent["id"] in self.seen:
                continue
            self.seen.add(intent["id"])
            account, period = self._period(intent)
            if period.startswith("oneoff:"):
                key = intent["metadata"]["billq_idempotency_key"]
                assert intent["amount"] == self.oneoffs[key][1], (
                    f"one-off {key} charged {intent['amount']}, asked {self.oneoffs[key][1]}"
                )
                continue  # asked for now: no period for a cancellation to precede
            cancelled = self.cancelled.get(account)
            starts = _instant(dt.date.fromisoformat(period))
            assert cancelled is None or starts < cancelled, (
                f"account {account} cancelled at {cancelled} was charged for the period "
                f"{period} ({intent['id']})"
            )
        await self._no_day_is_charged_twice(succeeded)
        reactivated = await self.pool.fetch(
            "SELECT id FROM accounts WHERE id = ANY($1::bigint[]) AND cancelled_at IS NULL",
            sorted(self.operator_cancelled),
        )
        assert not reactivated, (
            f"accounts {[r['id'] for r in reactivated]} were cancelled by an operator and "
            "reactivated without `accounts reactivate`"
        )
        self.cancelled = {
            r["id"]: r["cancelled_at"]
            for r in await self.pool.fetch(
                "SELECT id, cancelled_at FROM accounts WHERE cancelled_at IS NOT NULL"
            )
        }
        self.jobs = int(await self.pool.fetchval("SELECT count(*) FROM billing_jobs"))
        p = self.settings.queue_prefix
        channel = await self.conn.channel()
        try:
            counts = {}
            for name in (names.work_queue(p), names.priority_queue(p), names.dead_letter_queue(p)):
                declared = await channel.declare_queue(name, passive=True)
                counts[name] = declared.declaration_result.message_count or 0
            # Both lanes feed the worker batches (``_take`` reads the priority lane first).
            self.ready = counts[names.work_queue(p)] + counts[names.priority_queue(p)]
            self.letters = counts[names.dead_letter_queue(p)]
        finally:
            await channel.close()

    async def _no_day_is_charged_twice(self, succeeded: list[dict[str, Any]]) -> None:
        """Invariant 4: the periods of an account's gateway charges never share a day (a
        one-off charge covers no period: it is charged once by its key, invariant 1)."""
        keys = [i["metadata"]["billq_idempotency_key"] for i in succeeded]
        periods: dict[int, list[tuple[dt.date, dt.date, str]]] = {}
        for r in await self.pool.fetch(
            "SELECT account_id, period_start, period_end, idempotency_key FROM billing_jobs"
            " WHERE idempotency_key = ANY($1::text[]) AND kind = 'period' ORDER BY period_start",
            keys,
        ):
            periods.setdefault(r["account_id"], []).append(
                (r["period_start"], r["period_end"], r["idempotency_key"])
            )
        for account, spans in periods.items():
            for (_, end, key), (start, _, other) in itertools.pairwise(spans):
                assert end <= start, (
                    f"account {account} was charged twice for the days from {start} to {end}: "
                    f"{key} and {other}"
                )

    # --- the distributor and the reconciler -------------------------------------------

    @initialize()
    def the_first_period_is_distributed(self) -> None:
        self.run(distribute(self.settings, as_of=_instant(START) + dt.timedelta(hours=12)))

    @rule(month=st.integers(0, 6), gateway=st.sampled_from(("up", "up", "down")))
    def a_distributor_run(self, month: int, gateway: str) -> None:
        self.tally.rules["a_distributor_run"] += 1
        as_of = _instant(_months(START, month)) + dt.timedelta(hours=12)
        self._fault("down" if gateway == "down" else "none")
        try:
            self.run(distribute(self.settings, as_of=as_of))
        finally:
            self._fault("none")

    @rule(month=st.integers(0, 6))
    def another_distributor_run(self, month: int) -> None:
        self.a_distributor_run(month, "up")

    @rule(gateway=st.sampled_from(("up", "down")))
    def reconcile(self, gateway: str) -> None:
        self.tally.rules["reconcile"] += 1
        self._fault("down" if gateway == "down" else "none")
        try:
            self.run(reconcile_once(self.settings))
        finally:
            self._fault("none")

    # Not every step: an audit repairs what it finds, which would hide a path that leaves
    # money unrecorded for the steps after it.
    @precondition(lambda self: self.since_audit >= 5)
    @rule()
    def reconcile_and_audit_then_every_charge_is_recorded(self) -> None:
        self.tally.rules["audit"] += 1
        self.since_audit = 0
        self.run(self._check_everything_recorded())

    # --- workers, the broker, the gateway's faults --------------------------------------

    @precondition(lambda self: self.ready > 0)
    @rule(size=st.integers(1, 5), fault=st.sampled_from(FAULTS))
    def a_worker_batch(self, size: int, fault: str) -> None:
        self.tally.rules["a_worker_batch"] += 1
        messages = self.run(self._take(size))
        if not messages:
            return
        self._fault(fault)
        try:
            self.run(self._handle(self.handler, messages))
        finally:
            self._fault("none")

    # Workers take most of the steps, as they do in production.
    @precondition(lambda self: self.ready > 0)
    @rule(size=st.integers(1, 5), fault=st.sampled_from(FAULTS))
    def a_worker_batch_with_faults(self, size: int, fault: str) -> None:
        self.tally.rules["a_worker_batch_with_faults"] += 1
        self.a_worker_batch(size, fault)

    @precondition(lambda self: self.ready > 0)
    @rule(size=st.integers(1, 5))
    def a_clean_worker_batch(self, size: int) -> None:
        self.tally.rules["a_clean_worker_batch"] += 1
        self.a_worker_batch(size, "none")

    @precondition(lambda self: self.ready > 0)
    @rule()
    def a_worker_dies_after_the_gateway_answered(self) -> None:
        self.tally.rules["a_worker_dies_after_the_gateway_answered"] += 1
        messages = self.run(self._take(1))
        if not messages:
            return
        try:
            self.run(self._handle(self.crashing, messages))
        except _Crash:
            self.tally.crashes += 1
            # The channel dies with the process: the broker redelivers (redelivered=True),
            # and the job stays 'processing' under a worker with no heartbeat.
            self.run(messages[0].nack(requeue=True))

    @precondition(lambda self: self.ready > 0)
    @rule()
    def the_broker_loses_a_message(self) -> None:
        self.tally.rules["the_broker_loses_a_message"] += 1
        for message in self.run(self._take(1)):
            self.run(message.ack())

    @precondition(lambda self: bool(self.held))
    @rule(pick=st.integers(0, 20))
    def release_retry(self, pick: int) -> None:
        self.tally.rules["release_retry"] += 1
        self.run(self._release([self.held.pop(pick % len(self.held))]))

    @precondition(lambda self: bool(self.held))
    @rule()
    def release_every_retry(self) -> None:
        self.tally.rules["release_every_retry"] += 1
        copies, self.held = self.held, []
        self.run(self._release(copies))

    async def _release(self, copies: list[tuple[bytes, dict[str, Any], str | None, str]]) -> None:
        for body, headers, message_id, routing_key in copies:
            await self.publisher.publish(
                names.work_exchange(self.settings.queue_prefix),
                names.lane_routing_key(names.lane_of_routing_key(routing_key)),
                body,
                message_id=message_id,
                headers=headers,
            )

    # --- accounts -------------------------------------------------------------------------

    # One rule for every change to an account, weighted like real life: card updates and
    # re-imports often, a cancel (final) now and then.
    # Re-imports may move the anchor or switch the interval between (or during) periods.
    @rule(
        change=st.sampled_from(
            ("card", "card", "card", "reimport", "reimport", "cancel", "reactivate")
        ),
        account=st.sampled_from(ACCOUNTS),
        card=st.sampled_from(CARDS),
        amount=st.integers(0, 2),
        status=st.sampled_from(("active", "active", "cancelled")),
        at=st.sampled_from(("its_next_period", "its_next_period", *sorted(CANCEL_AT))),
        plan=st.tuples(st.sampled_from(ANCHORS), st.sampled_from(INTERVALS)),
    )
    def change_an_account(
        self,
        change: str,
        account: int,
        card: str,
        amount: int,
        status: str,
        at: str,
        plan: tuple[int, str],
    ) -> None:
        self.tally.rules[f"account_{change}"] += 1
        if change == "card":  # as `billq accounts update-payment-method`
            self.run(accounts_repo.update_payment_method(self.pool, account, card))
        elif change == "cancel":  # as `billq accounts cancel ID --at TS`
            self.run(self._cancel(account, at))
            self.operator_cancelled.add(account)
        elif change == "reactivate":  # as `billq accounts reactivate ID`
            today = dt.datetime.now(dt.UTC).date()
            self.run(accounts_repo.reactivate(self.pool, account, ACTOR, today=today))
            self.operator_cancelled.discard(account)
        else:  # as `billq accounts import` of one row
            self.run(self._reimport(self._row(account, card, amount, status, *plan)))

    # What integrators run every night: every account re-imported as `active` (with today's
    # plan), whatever support did in between — it must not undo an operator's cancel.
    @precondition(lambda self: bool(self.operator_cancelled))
    @rule(
        card=st.sampled_from(CARDS[:2]),
        plan=st.tuples(st.sampled_from(ANCHORS), st.sampled_from(INTERVALS)),
    )
    def the_nightly_sync_says_active(self, card: str, plan: tuple[int, str]) -> None:
        self.tally.rules["the_nightly_sync_says_active"] += 1
        for account in ACCOUNTS:
            self.run(self._reimport(self._row(account, card, 0, "active", *plan)))

    async def _cancel(self, account: int, at: str) -> None:
        if at == "its_next_period":  # "at the end of the current term": the very period
            # that may already have a job queued — only the claim's gate can stop it now
            when = await self.pool.fetchval(
                "SELECT next_billing_at FROM accounts WHERE id = $1", account
            )
        else:
            when = CANCEL_AT[at]()
        await accounts_repo.cancel(self.pool, account, when, ACTOR)

    async def _reimport(self, row: AccountRow) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await accounts_repo.import_rows(
                cast(asyncpg.Connection, conn), [row], today=dt.datetime.now(dt.UTC).date()
            )

    # --- an application ---------------------------------------------------------------

    @rule(
        account=st.sampled_from(ACCOUNTS),
        key=st.sampled_from(("order-1", "order-2", "order-3")),
        amount=st.sampled_from((500, 700)),
        published=st.sampled_from((True, True, False)),
    )
    def an_application_asks_for_a_one_off_charge(
        self, account: int, key: str, amount: int, published: bool
    ) -> None:
        """What ``POST /v1/charges`` runs; ``published`` False: the API died between its
        commit and its publish (the next distribute or reconcile publishes the job)."""
        self.tally.rules["oneoff" if published else "oneoff_unpublished"] += 1
        self.run(self._oneoff(account, key, amount, published))

    async def _oneoff(self, account: int, key: str, amount: int, published: bool) -> None:
        request = oneoff.ChargeRequest(account, amount, "USD", None)
        try:
            created = await oneoff.create(self.pool, request, key)
        except RequestRefused:  # the key used with another body, or a cancelled account
            return
        gateway_key = created.body["idempotency_key"]
        first = self.oneoffs.setdefault(gateway_key, (created.body["id"], amount))
        assert first[0] == created.body["id"], f"key {key} made a second job"
        assert created.replayed == (created.job_id is None)
        if created.job_id is None:
            return
        if published:
            await oneoff.publish(self.pool, self.publisher, self.settings, created.job_id)
        else:
            # It died a while ago: older than BILLQ_PUBLISH_TIMEOUT, so the next distribute
            # or reconcile publishes it (a younger one may still be publishing itself).
            await self.pool.execute(
                "UPDATE billing_jobs SET created_at = created_at - interval '1 hour' WHERE id = $1",
                created.job_id,
            )

    # --- operators ------------------------------------------------------------------------

    @precondition(lambda self: self.jobs > 0)
    @rule(
        action=st.sampled_from(("retry", "cancel")),
        pick=st.integers(0, 1000),
        gateway=st.sampled_from(("up", "up", "down")),
    )
    def operator_on_a_job(self, action: str, pick: int, gateway: str) -> None:
        self.tally.rules[f"jobs_{action}"] += 1
        if action == "retry":
            self.run(self._jobs_retry(pick))
            return
        self._fault("down" if gateway == "down" else "none")
        try:
            self.run(self._jobs_cancel(pick))
        finally:
            self._fault("none")

    async def _job(self, pick: int) -> int | None:
        ids = await self._job_ids()
        return ids[pick % len(ids)] if ids else None

    async def _jobs_retry(self, pick: int) -> None:
        if (job_id := await self._job(pick)) is None:
            return
        with contextlib.suppress(ActionRefused, ConfigError):  # what the CLI runs
            await operations.retry_job(self.pool, self.conn, self.settings, job_id, ACTOR)

    async def _jobs_cancel(self, pick: int) -> None:
        if (job_id := await self._job(pick)) is None:
            return
        with contextlib.suppress(ActionRefused, ConfigError):  # what the CLI runs
            await operations.cancel_job(self.pool, self.conn, self.settings, job_id, ACTOR)

    @rule(pick=st.none() | st.integers(0, 100))
    def dlq_replay(self, pick: int | None) -> None:
        self.tally.rules["dlq_replay"] += 1
        self.run(self._dlq_replay(pick))

    async def _dlq_replay(self, pick: int | None) -> None:
        # What `billq dlq replay --all` (pick None) or `billq dlq replay ID` runs.
        letters = await dlq.read(self.conn, self.settings, 100_000)
        if not letters:
            return
        ids = None if pick is None else {letters[pick % len(letters)].id}
        await operations.replay_dead_letters(self.pool, self.conn, self.settings, ids, ACTOR)


def machine_settings(settings: Settings) -> Settings:
    """A short gateway timeout (each timeout-after-charge step costs one), few attempts (so
    jobs give up and die), and every waiting job counts as stalled for the reconciler."""
    return settings.model_copy(
        update={"gateway_timeout": 0.4, "max_attempts": 3, "stuck_after": 0.001}
    )


def run_machine(
    settings: Settings,
    tally: Tally,
    *,
    examples: int,
    steps: int,
    seed: int | None = None,
    **extra: Any,
) -> None:
    """One Hypothesis run of the machine; raises on the first invariant broken (shrunk)."""

    @hypothesis.seed(seed)
    def machine() -> MoneyMachine:
        return MoneyMachine(machine_settings(settings), tally)

    run_state_machine_as_test(
        machine,  # type: ignore[arg-type]  # a factory: documented, typed as the class
        settings=hypothesis.settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            # Each example talks to real services: slow by Hypothesis's standards.
            suppress_health_check=list(HealthCheck),
            **extra,
        ),
    )
