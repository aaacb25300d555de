"""Operators' actions on jobs — retry, cancel, revive for a dead-letter replay — with the money
rules in one place, so the CLI and the dashboard cannot differ.

``replay_dead_letters``, ``retry_job`` and ``cancel_job`` are the whole actions as
``billq dlq replay`` and ``billq jobs retry|cancel`` run them (and the dashboard's buttons):
the rules below, the republish, and the ``operator_actions`` record with the actor.

None of these charges anything: they only make a job claimable again (or end it), and a claim is
where the gate decides whether money may move (``ClaimedJob.gate``). What they add is the rule
that no terminal state hides money: a job that may have called the gateway is resolved with it
(``find_by_idempotency_key``) before an operator may end it, and money it took is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog
from aio_pika.abc import AbstractConnection

from shared.amqp.publisher import Publisher
from shared.config import Settings
from shared.db import jobs_repo, ops_repo, refunds_repo
from shared.errors import ActionRefused, BillqError, ConfigError
from shared.gateway.port import Charged, PaymentGateway

log = structlog.get_logger("billq.operations")

# Why a state refuses `jobs retry` (dead revives, retrying republishes).
NOT_RETRIED = {
    "succeeded": "it is already charged",
    "already_paid": "its period is already paid by another job",
    "failed": "it was declined: dunning retries it, or update the payment method",
    "processing": "a worker holds it now",
    "pending": "the next distribute publishes it",
    "published": "its message is queued",
}


@dataclass(frozen=True, slots=True)
class LetterJob:
    """What a dead letter says about its job (from its body)."""

    letter_id: str
    job_id: int
    account_id: int | None
    idempotency_key: str | None


async def record_action(
    pool: asyncpg.Pool, actor: str, action: str, target: str, outcome: str
) -> None:
    await pool.execute(ops_repo.RECORD_ACTION, actor, action, target, outcome[:1000])


async def revive_for_replay(
    pool: asyncpg.Pool, letters: Sequence[LetterJob]
) -> tuple[list[int], dict[str, str]]:
    """Revive the dead jobs these letters name, so the replayed messages find them claimable.

    A letter revives its job only when its body matches the job (account and key) and the
    operator did not cancel the job. Returns (revived job ids, {letter id: why not revived}).
    """
    revived = await ops_repo.revive_matching(
        pool,
        [x.job_id for x in letters],
        [x.account_id for x in letters],
        [x.idempotency_key for x in letters],
    )
    skipped: dict[str, str] = {}
    ids = {r["id"] for r in revived}
    rest = [x for x in letters if x.job_id not in ids]
    if rest:
        jobs = {r["id"]: r for r in await ops_repo.get_many(pool, [x.job_id for x in rest])}
        for x in rest:
            job = jobs.get(x.job_id)
            if job is None:
                skipped[x.letter_id] = f"job {x.job_id} does not exist"
            elif (job["account_id"], job["idempotency_key"]) != (x.account_id, x.idempotency_key):
                skipped[x.letter_id] = f"the letter's body does not match job {x.job_id}"
            elif job["cancelled_at"] is not None:
                skipped[x.letter_id] = f"job {x.job_id} was cancelled by an operator"
            else:
                skipped[x.letter_id] = f"job {x.job_id} is {job['state']}"
    await ops_repo.reopen_runs(pool, [r["id"] for r in revived])
    return sorted(ids), skipped


async def prepare_retry(pool: asyncpg.Pool, job_id: int) -> tuple[str, list[asyncpg.Record]]:
    """``jobs retry``: (state before, rows to republish). A dead job is revived with a fresh
    attempt budget; a retrying one is republished with its hand-off token.

    Raises:
        ConfigError: no such job.
        ActionRefused: the job's state does not allow a retry.
    """
    job = await ops_repo.get(pool, job_id)
    if job is None:
        raise ConfigError(f"ID: no job {job_id}")
    state = str(job["state"])
    if state in NOT_RETRIED:
        raise ActionRefused(f"job {job_id} is {state}; not retried: {NOT_RETRIED[state]}")
    if state == "dead" and job["cancelled_at"] is not None:
        raise ActionRefused(f"job {job_id} was cancelled by an operator; not retried")
    if state == "dead":
        rows = await ops_repo.revive(pool, [job_id])
        await ops_repo.reopen_runs(pool, [job_id])
        return state, rows
    return state, [job]


async def cancel(pool: asyncpg.Pool, gateway: PaymentGateway, job_id: int, actor: str) -> str:
    """``jobs cancel``: end a job that is not in flight, never hiding money.

    A job no worker ever claimed ends at once; a refund job that was claimed is refused. Any
    other job that may have called the gateway is first taken (fenced, so no worker claims it
    meanwhile) and its key looked up: a charge found is recorded (the job succeeded; the
    cancel is refused), no charge → cancelled.

    Returns:
        "cancelled", or "unresolved:<token>" when the gateway could not answer: the job was
        released to ``retrying`` with that hand-off token and must be republished.

    Raises:
        ConfigError: no such job.
        ActionRefused: in flight, already finished, found charged at the gateway, or a
            refund that may have been made.
    """
    job = await ops_repo.get(pool, job_id)
    if job is None:
        raise ConfigError(f"ID: no job {job_id}")
    if await ops_repo.cancel_unclaimed(pool, job_id, actor):
        return "cancelled"
    if await refunds_repo.is_refund_job(pool, job_id):
        # A refund that may have been made is never cancelled: its worker finishes it under
        # its key — looking the refund up first (``find_refund``), recorded once — and a
        # refund the gateway made is recorded by the next reconcile whatever the job's state.
        raise ActionRefused(
            f"job {job_id} is a refund that a worker already tried: it may have been made at "
            "the gateway, so it is not cancelled; it completes under its own key"
        )
    token = await ops_repo.take_for_cancel(pool, job_id, actor)
    if token is None:
        state = (await ops_repo.get(pool, job_id) or job)["state"]
        raise ActionRefused(
            f"job {job_id} is {state}; only pending, published or retrying jobs can be cancelled"
        )
    try:
        found = await gateway.find_by_idempotency_key(job["idempotency_key"])
    except BillqError as exc:
        await ops_repo.release(pool, job_id, token, "cancel refused: gateway unresolved")
        log.warning("job.cancel_unresolved", job_id=job_id, error=str(exc))
        return f"unresolved:{token}"
    if isinstance(found, Charged):
        await jobs_repo.record_successes(pool, [(job_id, token, found.charge_id)])
        raise ActionRefused(
            f"job {job_id} was already charged at the gateway ({found.charge_id}); "
            "the charge is recorded and the job not cancelled"
        )
    await ops_repo.cancel_taken(pool, job_id, token, actor)
    return "cancelled"


# --- whole actions: the CLI's commands and the dashboard's buttons ---------------------------


async def replay_dead_letters(
    pool: asyncpg.Pool,
    conn: AbstractConnection,
    settings: Settings,
    ids: set[str] | None,
    actor: str,
) -> dict[str, Any]:
    """``dlq replay``: revive the chosen letters' jobs, then republish the letters (every
    letter when ``ids`` is None). Only letters with these ids are touched.

    Returns ``{"replayed": [letter ids], "jobs_revived": [job ids], "jobs_not_revived":
    {letter id: why}}``; an id no longer in the dead-letter queue is not in ``replayed``.
    """
    from shared.amqp import dlq
    from shared.errors import InvalidMessage
    from shared.messages import parse_message

    def named_job(letter: dlq.DeadLetter) -> LetterJob | None:
        if letter.job_id is None:
            return None
        try:
            msg = parse_message(letter.body, max_bytes=settings.max_message_bytes)
        except InvalidMessage:
            return LetterJob(letter.id, letter.job_id, None, None)
        return LetterJob(letter.id, msg.job_id, msg.account_id, msg.idempotency_key)

    # Revive the jobs first: a replayed message must find its job claimable. Whether the
    # period may still be charged is decided at the claim (already paid → nothing moves).
    letters = await dlq.read(conn, settings, 100_000)
    chosen = [x for x in letters if ids is None or x.id in ids]
    named = [j for j in map(named_job, chosen) if j is not None]
    revived, skipped = await revive_for_replay(pool, named)
    replayed = await dlq.replay(conn, settings, {x.id for x in chosen})
    result: dict[str, Any] = {
        "replayed": [x.id for x in replayed],
        "jobs_revived": revived,
        "jobs_not_revived": skipped,
    }
    await record_action(
        pool, actor, "dlq.replay", ",".join(sorted(x.id for x in chosen)), str(result)
    )
    return result


async def retry_job(
    pool: asyncpg.Pool, conn: AbstractConnection, settings: Settings, job_id: int, actor: str
) -> str:
    """``jobs retry``: republish a dead or retrying job; returns the state it was in.

    Raises:
        ConfigError: no such job.
        ActionRefused: the job's state does not allow a retry.
    """
    state, rows = await prepare_retry(pool, job_id)
    publisher = _publisher(conn, settings)
    try:
        for row in rows:
            handoff = row["attempts"] if state == "retrying" else None
            await publish_job(publisher, settings, row, handoff)
    finally:
        await publisher.close()  # its channel: the dashboard's connection lives on
    await record_action(pool, actor, "jobs.retry", str(job_id), state)
    return state


async def cancel_job(
    pool: asyncpg.Pool, conn: AbstractConnection, settings: Settings, job_id: int, actor: str
) -> str:
    """``jobs cancel``: ``cancel`` with the gateway, recorded; an unresolved job is
    republished with its hand-off token and the cancel refused.

    Raises:
        ConfigError: no such job.
        ActionRefused: in flight, finished, charged, or the gateway could not answer.
    """
    from shared.gateway.factory import make_gateway

    gateway = make_gateway(settings)
    try:
        result = await cancel(pool, gateway, job_id, actor)
    except ActionRefused as exc:
        await record_action(pool, actor, "jobs.cancel", str(job_id), str(exc))
        raise
    finally:
        await gateway.aclose()
    await record_action(pool, actor, "jobs.cancel", str(job_id), result)
    if result.startswith("unresolved:"):
        job = await ops_repo.get(pool, job_id)
        publisher = _publisher(conn, settings)
        try:
            await publish_job(publisher, settings, job, int(result[11:]))
        finally:
            await publisher.close()
        raise ActionRefused(
            f"job {job_id}: the gateway could not confirm whether an earlier call charged; "
            "the job stays retrying (not cancelled) — try again when the gateway answers"
        )
    return result


def _publisher(conn: AbstractConnection, settings: Settings) -> Publisher:
    return Publisher(conn, timeout=settings.publish_timeout)


async def publish_job(
    publisher: Publisher, settings: Settings, row: Any, handoff: int | None
) -> None:
    """The job's charge message exactly as the distributor's outbox publishes it (signed;
    the hand-off header for a retrying job). Here because ``shared`` cannot import the
    distributor and the dashboard republishes too."""
    from shared.amqp import names
    from shared.messages import HANDOFF_HEADER, MESSAGE_TYPE, encode_job
    from shared.signing import SIGNATURE_HEADER, sign

    body = encode_job(row)
    headers: dict[str, object] = {}
    if handoff is not None:
        headers[HANDOFF_HEADER] = handoff
    keys = settings.signing_key_list
    if keys:
        headers[SIGNATURE_HEADER] = sign(body, keys[0])
    await publisher.publish(
        names.work_exchange(settings.queue_prefix),
        names.routing_key_for_job(dunning_attempt=row["dunning_attempt"], kind=row.get("kind")),
        body,
        message_id=row["idempotency_key"],
        message_type=MESSAGE_TYPE,
        headers=headers or None,
    )
