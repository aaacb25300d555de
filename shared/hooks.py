"""Run hooks: tell an application when a billing run settles (Laravel's then/catch/finally).

When a run becomes ``completed``, ``completed_with_failures`` or ``failed``, a trigger writes
an event with the run's summary to the ``run_hook_events`` outbox in the same transaction
(migration 0008). Whoever settles runs — every worker's heartbeat, the distributor — then
calls :func:`deliver_due`, which POSTs due events to ``BILLQ_RUN_WEBHOOK_URL``:

* at least once: an event stays pending until a receiver answers 2xx; a failed attempt is
  retried with backoff (``RETRY_DELAYS_S``), up to ``MAX_ATTEMPTS``;
* signed like Stripe's webhooks: ``Billq-Signature: t=<unix>,v1=<hex HMAC-SHA256 of
  "<t>.<body>">`` with ``BILLQ_WEBHOOK_SECRET`` — the timestamp is signed so a captured
  request cannot be replayed later (receivers reject an old ``t``);
* de-duplicable: the body's ``id`` is the same on every retry of one event;
* bounded: at most ``BATCH`` events and ``CALL_BUDGET_S`` seconds per call, so a slow
  receiver never stalls the caller (the worker runs it beside its heartbeat anyway);
* no backlog: events of runs that settled before any process first had a URL are marked
  ``skipped``, never sent (``hooks_repo.SKIP_BACKLOG``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import structlog

from shared.config import Settings
from shared.db import hooks_repo
from shared.errors import BadSignature, HookDeliveryFailed

log = structlog.get_logger("billq.hooks")

SIGNATURE_HEADER = "Billq-Signature"
RETRY_DELAYS_S = (10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)  # the last repeats
MAX_ATTEMPTS = 24  # ~18 h of retries, then the event is 'failed' (billq runs shows it)
BATCH = 10
POST_TIMEOUT_S = 5.0
CALL_BUDGET_S = 15.0
# Longer than one call's budget: a claimed event is not posted twice at the same time.
CLAIM_LEASE_S = 60.0
SIGNATURE_TOLERANCE_S = 300.0


def sign(body: bytes, secret: bytes, timestamp: int) -> str:
    """The ``Billq-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(
    body: bytes,
    header: str,
    secret: bytes,
    *,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """What a receiver does (Python receivers may import it).

    Raises:
        BadSignature: the header is malformed, too old, or no ``v1`` signature matches.
    """
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        raise BadSignature("Billq-Signature has no timestamp") from None
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise BadSignature("Billq-Signature timestamp outside the tolerance")
    expected = sign(body, secret, timestamp).partition(",v1=")[2]
    if not any(hmac.compare_digest(expected, v) for v in parts.get("v1", [])):
        raise BadSignature("Billq-Signature does not verify")


def event_body(row: asyncpg.Record | dict[str, Any]) -> bytes:
    """The JSON body of one event; identical on every attempt (the payload is frozen)."""
    payload = row["payload"]
    data = json.loads(payload) if isinstance(payload, str) else payload
    event = {
        "id": row["event_id"],
        "type": row["type"],
        "created": int(row["created_at"].timestamp()),
        "data": data,
    }
    return json.dumps(event, sort_keys=True, separators=(",", ":")).encode()


def retry_delay(attempts: int) -> float:
    return RETRY_DELAYS_S[min(max(attempts, 1), len(RETRY_DELAYS_S)) - 1]


@dataclass(slots=True)
class Delivery:
    delivered: int = 0
    failed: int = 0


async def deliver_due(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Delivery:
    """POST the due events once each; a no-op when ``BILLQ_RUN_WEBHOOK_URL`` is unset.

    Raises:
        TransientError: the database is unreachable (the events stay due).
    """
    result = Delivery()
    url, secret = settings.run_webhook_url, settings.webhook_secret
    if url is None or secret is None:
        return result
    skipped = await hooks_repo.skip_backlog(pool)
    if skipped:
        log.info("hook.backlog_skipped", events=skipped)
    rows = await hooks_repo.claim_due(pool, BATCH, CLAIM_LEASE_S)
    if not rows:
        return result
    key = secret.get_secret_value().encode()
    async with httpx.AsyncClient(timeout=POST_TIMEOUT_S, transport=transport) as client:
        try:
            async with asyncio.timeout(CALL_BUDGET_S):
                for row in rows:
                    if await _attempt(pool, client, url, key, row):
                        result.delivered += 1
                    else:
                        result.failed += 1
        except TimeoutError:
            # Events not reached keep their lease and are retried when it lapses.
            log.warning("hook.budget_spent", claimed=len(rows), delivered=result.delivered)
    return result


async def _attempt(
    pool: asyncpg.Pool, client: httpx.AsyncClient, url: str, key: bytes, row: asyncpg.Record
) -> bool:
    body = event_body(row)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(body, key, int(time.time())),
        "Billq-Event-Id": row["event_id"],
    }
    try:
        try:
            response = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise HookDeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise HookDeliveryFailed(f"receiver answered {response.status_code}")
    except HookDeliveryFailed as exc:
        delay = retry_delay(row["attempts"])
        await hooks_repo.mark_attempt_failed(pool, row["id"], str(exc), delay, MAX_ATTEMPTS)
        log.warning(
            "hook.attempt_failed",
            event_id=row["event_id"],
            attempts=row["attempts"],
            error=str(exc),
            retry_in_s=delay,
        )
        return False
    await hooks_repo.mark_delivered(pool, row["id"])
    log.info("hook.delivered", event_id=row["event_id"], type=row["type"], attempts=row["attempts"])
    return True
