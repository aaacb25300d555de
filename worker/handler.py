"""Handle charge messages: validate → claim → charge → record. Never raises.

A batch is claimed in one statement; from there each message moves on its own (its charge,
its record — group-committed with whatever else finished meanwhile — and its outcome
reported at once), so one slow charge holds only itself. Each failure is classified where
it happens (see ``shared.errors``); the handler turns the class into an ``Outcome`` and the
consumer performs it.

Longer than most modules: every way a claimed job can end (charged, declined, refused by
the money gate, out of attempts, outcome unresolved) lives here, next to the others.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from shared import signing
from shared.billing import dunning
from shared.billing.claims import ClaimedJob, ClaimRequest
from shared.billing.jobs import TERMINAL
from shared.billing.refunds import refund_metadata
from shared.config import Settings
from shared.db.jobs_port import JobsRepo
from shared.errors import (
    AccountNotBillable,
    ActionRefused,
    BadSignature,
    BillqError,
    FatalError,
    InvalidMessage,
    OutcomeUnknown,
    TransientError,
    UnknownJob,
)
from shared.gateway.port import (
    Charged,
    ChargeOutcome,
    ChargeRequest,
    PaymentGateway,
    Refunded,
    RefundRequest,
    charge_metadata,
)
from shared.gateway.pruned_keys import charge_safely
from shared.messages import HANDOFF_HEADER, ChargeMessage, parse_message
from worker.group import GroupCommit
from worker.outcome import Ack, Dead, Outcome, Retry

log = structlog.get_logger("billq.worker")

# Called with (index in the batch, outcome) as soon as a delivery's outcome is known.
OnOutcome = Callable[[int, Outcome], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Delivery:
    body: bytes
    headers: Mapping[str, Any]
    redelivered: bool


def _handoff(headers: Mapping[str, Any]) -> int | None:
    value = headers.get(HANDOFF_HEADER)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Handler:
    """Collaborators are injected so tests can swap the gateway."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobsRepo,
        gateway: PaymentGateway,
        observe_gateway: Callable[[float], None] | None = None,
    ) -> None:
        self._settings = settings
        self._jobs = jobs
        self._gateway = gateway
        self._observe_gateway = observe_gateway
        self._signing_keys = settings.signing_key_list
        # Charges finish one by one; their records still share transactions (group commit).
        self._records: GroupCommit[tuple[ClaimedJob, str], bool | None] = GroupCommit(
            self._record_group,
            window_s=settings.batch_wait_ms / 1000 / 5,
            max_size=settings.worker_batch_max,
        )

    async def handle_batch(
        self, batch: Sequence[Delivery], on_outcome: OnOutcome | None = None
    ) -> list[Outcome]:
        """Claim the batch in one statement, then let each delivery move on its own: its
        charge, its record (group-committed with whatever else is ready) and
        ``on_outcome(index, outcome)`` as soon as its outcome is known, so one slow charge
        holds only itself. Returns every outcome once all are known."""
        started = time.perf_counter()
        outcomes: list[Outcome | None] = [None] * len(batch)
        reported: set[int] = set()

        async def report(i: int, outcome: Outcome) -> None:
            outcomes[i] = outcome
            if on_outcome is not None and i not in reported:
                reported.add(i)
                await on_outcome(i, outcome)

        messages: dict[int, ChargeMessage] = {}
        for i, d in enumerate(batch):
            try:
                messages[i] = self._validate(d)
            except (InvalidMessage, BadSignature) as exc:
                log.warning("message.invalid", error_class=type(exc).__name__, reason=str(exc))
                await report(i, Dead(type(exc).__name__, str(exc)))
        if messages:
            try:
                await self._handle_valid(batch, messages, report)
            except Exception as exc:  # a bug must not kill the worker: retry, bounded
                log.exception("batch.unexpected_error")
                for i in messages:
                    if outcomes[i] is None:
                        await report(
                            i,
                            Retry(
                                self._settings.retry_delay(1),
                                None,
                                f"unexpected {type(exc).__name__}",
                            ),
                        )
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        done: list[Outcome] = []
        per_message = log.is_enabled_for(logging.DEBUG)
        for i, outcome in enumerate(outcomes):
            assert outcome is not None
            done.append(outcome)
            if not per_message:
                continue
            msg = messages.get(i)
            log.debug(
                "message.handled",
                job_id=msg.job_id if msg else None,
                account_id=msg.account_id if msg else None,
                outcome=type(outcome).__name__.lower(),
                detail=getattr(outcome, "kind", None) or getattr(outcome, "reason", None),
                duration_ms=elapsed_ms,
                batch=len(batch),
            )
        # One line per batch at info (a line per message costs more than the charge's SQL);
        # per-message lines at debug. Declines, retries and dead letters log their own.
        log.info(
            "batch.handled",
            size=len(batch),
            outcomes=dict(Counter(type(o).__name__.lower() for o in done)),
            duration_ms=elapsed_ms,
        )
        return done

    def _validate(self, d: Delivery) -> ChargeMessage:
        limit = self._settings.max_message_bytes
        if len(d.body) > limit:  # before any HMAC or parsing
            raise InvalidMessage(f"body of {len(d.body)} bytes exceeds {limit}", d.body)
        if self._signing_keys:
            signing.verify(d.body, d.headers, self._signing_keys)
        return parse_message(d.body, max_bytes=limit)

    async def _handle_valid(
        self,
        batch: Sequence[Delivery],
        messages: dict[int, ChargeMessage],
        report: OnOutcome,
    ) -> None:
        order = list(messages)
        requests = [
            ClaimRequest(
                messages[i].job_id,
                messages[i].account_id,
                messages[i].idempotency_key,
                batch[i].redelivered,
                _handoff(batch[i].headers),
            )
            for i in order
        ]
        try:
            claimed = await self._jobs.claim_many(requests)
        except TransientError as err:
            # Whether the claim landed is unknown: the copies wait out the lease.
            log.warning("batch.claim_failed", error=str(err), size=len(order))
            for pos, i in enumerate(order):
                retry = Retry(self._settings.retry_delay(1), requests[pos].handoff, str(err))
                await report(i, retry)
            return
        jobs = {order[pos]: job for pos, job in claimed.items()}
        unclaimed = [i for i in order if i not in jobs]
        moving = [self._settle(i, job, report) for i, job in jobs.items()]
        if unclaimed:
            moving.append(self._not_claimed(unclaimed, messages, report))
        await asyncio.gather(*moving)

    async def _settle(self, i: int, job: ClaimedJob, report: OnOutcome) -> None:
        """One claimed job, on its own: charge (or refund), record, report."""
        if job.refund_of is not None:
            await report(i, await self._refund(job))
            return
        result = await self._charge(job)
        if isinstance(result, Charged):
            outcome = await self._record_charged(job, result.charge_id)
        elif isinstance(result, Ack | Retry | Dead):
            outcome = result
        else:
            outcome = await self._record_decline(job, result)
        await report(i, outcome)

    async def _not_claimed(
        self,
        unclaimed: list[int],
        messages: dict[int, ChargeMessage],
        report: OnOutcome,
    ) -> None:
        snaps = await self._jobs.lookup_many([messages[i].job_id for i in unclaimed])
        for i in unclaimed:
            msg = messages[i]
            snap = snaps.get(msg.job_id)
            if snap is None:
                await report(i, Dead(UnknownJob.__name__, f"job {msg.job_id} does not exist"))
            elif (snap.account_id, snap.idempotency_key) != (msg.account_id, msg.idempotency_key):
                # The message is wrong, not the job: leave the job untouched.
                await report(
                    i, Dead(InvalidMessage.__name__, f"message does not match job {msg.job_id}")
                )
            elif snap.state in TERMINAL or snap.state == "retrying":
                # Finished, or its designated retry copy is on its way.
                log.info("job.duplicate", job_id=msg.job_id, state=snap.state)
                await report(i, Ack("duplicate"))
            else:
                # Held by a live worker: come back later rather than drop a needed copy.
                log.info("job.busy_elsewhere", job_id=msg.job_id, state=snap.state)
                await report(i, Retry(self._settings.retry_delay(1), None, "job busy elsewhere"))

    async def _charge(self, job: ClaimedJob) -> ChargeOutcome | Outcome:
        """The gateway's answer, or the outcome already decided for this job."""
        refused = job.gate()
        if refused == "period_busy":
            return await self._retry(
                job, TransientError(f"period busy: job {job.busy_with} holds a live claim")
            )
        if refused is not None:
            return await self._end_without_charge(job, refused)
        assert job.payment_method is not None
        request = ChargeRequest(
            idempotency_key=job.idempotency_key,
            account_id=job.account_id,
            amount_cents=job.amount_cents,
            currency=job.currency,
            payment_method=job.payment_method,
            customer=job.gateway_customer,
            # Derived from the job's identity only, never from row ids: a restored database
            # sends the very same parameters under the same key.
            metadata=charge_metadata(job.period_start, job.dunning_attempt, job.kind),
        )
        called = time.perf_counter()
        try:
            # A gateway forgets idempotency keys after 24 h: a job first tried that long ago
            # looks its charge up before it may charge again.
            return await charge_safely(
                self._gateway,
                request,
                first_attempt_at=job.started_at,
                now=dt.datetime.now(dt.UTC),
            )
        except TransientError as exc:
            if job.attempts - job.attempt_base >= self._settings.max_attempts:
                return await self._give_up(job, exc)
            return await self._retry(job, exc)
        except FatalError as exc:
            if job.may_have_called_gateway:
                return await self._give_up(job, exc)
            return await self._dead(job, exc)
        finally:
            if self._observe_gateway:
                self._observe_gateway(time.perf_counter() - called)

    async def _refund(self, job: ClaimedJob) -> Outcome:
        """A refund job: the gate, the gateway's refund under the job's own key with its
        frozen amount, then the fenced record. A job an earlier claim may have sent looks its
        refund up first (a crash between the call and the commit, a key the gateway may have
        pruned), and so does one whose outcome is unknown before it is retried or ends: money
        given back is recorded, never left behind a retry or a dead letter."""
        refused = job.gate()
        if refused == "already_refunded":
            reason = f"already refunded: {job.refunded_by} is recorded; nothing refunded"
            try:
                landed = await self._jobs.record_already_paid(job, reason)
            except TransientError as err:
                return Retry(self._settings.retry_delay(1), job.attempts, str(err))
            return Ack("already_refunded" if landed else "fenced")
        if refused is not None or job.refund_of is None or job.refund_charge is None:
            return await self._dead(job, UnknownJob(f"charge {job.refund_of} does not exist"))
        request = RefundRequest(
            idempotency_key=job.idempotency_key,
            charge_id=job.refund_charge,
            amount_cents=job.amount_cents,
            currency=job.currency,
            metadata=refund_metadata(job.refund_of, job.account_id),
        )
        try:
            found = None
            if job.may_have_called_gateway:
                found = await self._gateway.find_refund(job.refund_charge, job.idempotency_key)
            refunded = found or await self._gateway.refund(request)
        except (TransientError, FatalError) as exc:
            if isinstance(exc, FatalError) and not job.may_have_called_gateway:
                # Refused (more than is left, an unknown charge) and never sent before.
                return await self._dead(job, exc)
            resolved = await self._resolve_refund(job, exc)
            if not isinstance(resolved, Refunded):
                return resolved
            refunded = resolved
        try:
            landed = await self._jobs.record_refund(job, refunded.refund_id)
        except TransientError as err:
            log.warning("job.record_failed", job_id=job.job_id, error=str(err))
            return Retry(self._settings.retry_delay(1), job.attempts, str(err))
        except ActionRefused as exc:
            log.error("job.refund_unrecorded", job_id=job.job_id, refund_id=refunded.refund_id)
            return await self._dead(job, exc)
        log.info(
            "job.refunded",
            job_id=job.job_id,
            charge_id=job.refund_of,
            refund_id=refunded.refund_id,
            amount_cents=job.amount_cents,
            landed=landed,
        )
        return Ack("refunded" if landed else "fenced")

    async def _resolve_refund(self, job: ClaimedJob, exc: BillqError) -> Refunded | Outcome:
        """A refund call failed: the refund the gateway holds under the job's key, or the
        outcome once the gateway says it holds none (a retry; dead once out of attempts or
        refused). If the gateway cannot say, the job never ends: it keeps asking, slowly."""
        assert job.refund_charge is not None
        spent = job.attempts - job.attempt_base
        final = isinstance(exc, FatalError) or spent >= self._settings.max_attempts
        try:
            found = await self._gateway.find_refund(job.refund_charge, job.idempotency_key)
        except BillqError as lookup_exc:
            if final:
                return await self._unresolved(job, f"refund unconfirmed: {exc}", lookup_exc)
            return await self._retry(job, exc)
        if found is not None:
            log.info("job.refund_found", job_id=job.job_id, refund_id=found.refund_id)
            return found
        if isinstance(exc, FatalError):
            return await self._dead(job, exc)
        if final:
            return await self._dead(job, exc, f"gave up after {spent} attempts: ")
        return await self._retry(job, exc)

    async def _end_without_charge(self, job: ClaimedJob, refused: str) -> ChargeOutcome | Outcome:
        """The gate said no. An earlier claim may have charged under this key, so the gateway
        is asked first: money it took is recorded, never hidden behind a terminal state."""
        if job.may_have_called_gateway:
            try:
                found = await self._gateway.find_by_idempotency_key(job.idempotency_key)
            except BillqError as exc:
                return await self._unresolved(job, f"{refused}, unresolved at the gateway", exc)
            if isinstance(found, Charged):
                return found
        if refused in ("already_paid", "overlaps_paid"):
            reason = (
                f"already paid: the period's charge is {job.paid_by}; nothing charged"
                if refused == "already_paid"
                else f"overlaps a paid period: charge {job.overlaps_paid} covers some of "
                f"{job.period_start}..{job.period_end}; nothing charged"
            )
            try:
                landed = await self._jobs.record_already_paid(job, reason)
            except TransientError as err:
                return Retry(self._settings.retry_delay(1), job.attempts, str(err))
            log.info(
                "job.already_paid",
                job_id=job.job_id,
                paid_by=job.paid_by or job.overlaps_paid,
                overlap=refused == "overlaps_paid",
            )
            return Ack("already_paid" if landed else "fenced")
        if refused == "account_missing":
            return await self._dead(job, UnknownJob(f"account {job.account_id} does not exist"))
        why = "cancelled before the period" if job.cancelled_before else job.account_status
        return await self._dead(job, AccountNotBillable(f"account {job.account_id} is {why}"))

    async def _give_up(self, job: ClaimedJob, exc: BillqError) -> ChargeOutcome | Outcome:
        """Out of attempts, or refused after an earlier call: the job may end only once the
        gateway confirms what its key holds (a timeout stores the charge)."""
        try:
            found = await self._gateway.find_by_idempotency_key(job.idempotency_key)
        except BillqError as lookup_exc:
            return await self._unresolved(job, str(exc), lookup_exc)
        if found is not None:
            return found
        spent = job.attempts - job.attempt_base
        return await self._dead(job, exc, f"gave up after {spent} attempts: ")

    async def _unresolved(self, job: ClaimedJob, what: str, exc: BillqError) -> Outcome:
        # Never dead with money possibly outstanding: stay 'retrying' (visible in `billq jobs`)
        # and ask again at the slowest tier until the gateway answers.
        log.warning("job.outcome_unresolved", job_id=job.job_id, reason=what, error=str(exc))
        return await self._retry(
            job, OutcomeUnknown(f"{what}: {exc}"), delay=self._settings.retry_delays[-1]
        )

    async def _record_group(self, charged: Sequence[tuple[ClaimedJob, str]]) -> list[bool | None]:
        """One transaction for the charges ready together: per charge, True recorded,
        False a double charge (the period was already paid), None fenced."""
        landed = await self._jobs.record_successes(list(charged))
        return [landed.get(job.job_id) for job, _ in charged]

    async def _record_charged(self, job: ClaimedJob, charge_id: str) -> Outcome:
        try:
            landed = await self._records.submit((job, charge_id))
        except TransientError as err:
            # The gateway remembers each key: the copy replays its answer and records it.
            log.warning("job.record_failed", job_id=job.job_id, error=str(err))
            return Retry(self._settings.retry_delay(1), job.attempts, str(err))
        if landed is False:
            log.error(
                "job.double_charge",
                job_id=job.job_id,
                account_id=job.account_id,
                charge_id=charge_id,
                period_start=job.period_start.isoformat(),
            )
            return Ack("double_charge")
        if landed is None:
            log.warning("job.fenced", job_id=job.job_id, attempt=job.attempts)
            return Ack("fenced")
        log.debug(
            "job.charged",
            job_id=job.job_id,
            account_id=job.account_id,
            attempt=job.attempts,
            charge_id=charge_id,
        )
        return Ack("succeeded")

    async def _record_decline(self, job: ClaimedJob, result: Any) -> Outcome:
        reason = f"declined: {result.decline_code or result.code}"
        decision = dunning.decide(
            attempt=job.dunning_attempt,
            code=result.code,
            decline_code=result.decline_code,
            first_declined_at=job.first_declined_at or dt.datetime.now(dt.UTC),
            schedule_days=self._settings.dunning_schedule,
        )
        try:
            landed = await self._jobs.record_decline(job, reason, result.decline_code, decision)
        except TransientError as err:
            return Retry(self._settings.retry_delay(1), job.attempts, str(err))
        log.info(
            "job.declined",
            job_id=job.job_id,
            account_id=job.account_id,
            attempt=job.attempts,
            code=result.code,
            decline_code=result.decline_code,
            severity=decision.severity,
            next_attempt=decision.next_attempt,
        )
        return Ack("declined" if landed else "fenced")

    async def _retry(
        self, job: ClaimedJob, exc: BillqError, *, delay: float | None = None
    ) -> Outcome:
        if delay is None:
            delay = self._settings.retry_delay(job.attempts - job.attempt_base)
        try:
            if not await self._jobs.record_retry(job, str(exc)[:1000]):
                log.warning("job.fenced", job_id=job.job_id, attempt=job.attempts)
                return Ack("fenced")
        except TransientError:
            pass  # job stays 'processing' at this fence; the copy's hand-off token claims it
        log.info(
            "job.retry_scheduled",
            job_id=job.job_id,
            account_id=job.account_id,
            attempt=job.attempts,
            delay_s=delay,
            error=str(exc),
        )
        return Retry(delay, job.attempts, str(exc))

    async def _dead(self, job: ClaimedJob, exc: BillqError, prefix: str = "") -> Outcome:
        reason = f"{prefix}{exc}"
        try:
            await self._jobs.record_dead(job.job_id, job.attempts, reason)
        except TransientError as err:
            return Retry(self._settings.retry_delay(1), job.attempts, str(err))
        log.warning(
            "job.dead",
            job_id=job.job_id,
            account_id=job.account_id,
            attempt=job.attempts,
            error_class=type(exc).__name__,
            reason=reason,
        )
        return Dead(type(exc).__name__, reason)
