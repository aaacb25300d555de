"""The worker's charges against a rate-limiting gateway: fewer at once, resent after a 429.

A gateway that rate-limits (Stripe answers 429 past its per-account rate) runs nothing for a
429, and it is up. So a rate-limited charge must not cost what a failure costs — the job's
attempt, a trip through the delayed-retry queue, a point against the breaker — and the worker
must send less. ``RateLimitedGateway`` wraps the worker's gateway (outside ``BreakerGateway``)
and sends every charge and refund through one ``RateLimiter``:

- at most ``limit`` calls in flight, an ``AimdLimit`` (worker/aimd.py): a 429 halves it, at
  most once a second, and successes grow it back up to ``BILLQ_CONCURRENCY``;
- after a 429 no call starts until its ``Retry-After`` has passed (jittered backoff when the
  gateway sent none), and the rate-limited call is resent under the same idempotency key,
  ahead of calls that have not been sent yet;
- ``BILLQ_GATEWAY_MAX_RPS``, when set, paces calls with a token bucket;
- a call that cannot go within ``BILLQ_RATE_LIMIT_WAIT_S`` (see ``rate_limit_budget_s``)
  raises ``GatewayRateLimited``: the job takes the normal transient path — and so, once the
  worker is stopping (``give_up_waiting``), does every call still waiting, so its job is handed
  on within the shutdown grace instead of abandoned at its end.

Reads (key searches, listings) pass straight through. With no 429 ever, a charge costs a
counter up and down and two comparisons.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from shared.backoff import Backoff
from shared.config import Settings
from shared.errors import GatewayRateLimited
from shared.gateway.port import (
    ChargeOutcome,
    ChargeRequest,
    ForwardingGateway,
    PaymentGateway,
    Refunded,
    RefundRequest,
)
from worker.aimd import AimdLimit, TokenBucket
from worker.metrics import Metrics

_T = TypeVar("_T")

log = structlog.get_logger("billq.worker")


class RateLimiter:
    """Slots for the gateway's calls; ``RateLimitedGateway`` takes one per call."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self._aimd = AimdLimit(settings.concurrency)
        rps = settings.gateway_max_rps
        self._bucket = TokenBucket(rps, burst=max(1.0, rps / 10)) if rps else None
        self.budget_s = settings.rate_limit_budget_s
        self._metrics = metrics
        self._in_flight = 0
        self._waiters: deque[asyncio.Future[bool]] = deque()  # True: granted, False: refused
        self._stopping = False
        self._paused_until = 0.0  # time.monotonic(); 0 while not paused
        self._wake: asyncio.TimerHandle | None = None
        self._backoff = Backoff(base=0.5, cap=10.0, floor=0.1, jitter=0.5)
        self.rate_limited = 0
        if metrics is not None:
            metrics.gateway_limit.set(self._aimd.limit)

    @property
    def limit(self) -> int:
        return self._aimd.limit

    async def acquire(self, deadline: float, *, resent: bool = False) -> None:
        """A slot, by ``deadline`` (``time.monotonic()``); a resent call goes first.

        Raises:
            GatewayRateLimited: no slot before the deadline.
        """
        if self._in_flight < self._aimd.limit and not self._waiters and not self._paused_until:
            self._in_flight += 1
        else:
            await self._queue(deadline, resent)
        if self._bucket is not None:
            try:
                await self._paced(deadline)
            except BaseException:
                self.release()
                raise

    def release(self) -> None:
        self._in_flight -= 1
        if self._waiters:
            self._grant()

    def on_success(self) -> None:
        if self._backoff.attempt:
            self._backoff.reset()
        if self._aimd.at_ceiling:
            return
        recovered = self._aimd.on_success()
        if self._metrics is not None:
            self._metrics.gateway_limit.set(self._aimd.limit)
        if recovered:
            log.info("gateway.rate_limit_recovered", limit=self._aimd.limit)
        if self._waiters:
            self._grant()

    def on_rate_limited(self, exc: GatewayRateLimited, deadline: float) -> bool:
        """A 429: cut the limit, hold every call for the wait the gateway asked; True when
        the call may still be resent before its deadline."""
        self.rate_limited += 1
        if self._metrics is not None:
            self._metrics.gateway_rate_limited.inc()
        if not self.budget_s or self._stopping:
            return False
        now = time.monotonic()
        wait = exc.retry_after_s if exc.retry_after_s is not None else self._backoff.next()
        self._paused_until = max(self._paused_until, now + wait)
        if self._aimd.on_rate_limited(now):
            # One line per cut (at most one a second), not one per 429.
            log.warning(
                "gateway.rate_limited",
                limit=self._aimd.limit,
                retry_after_s=exc.retry_after_s,
                wait_s=round(wait, 3),
                rate_limited=self.rate_limited,
            )
            if self._metrics is not None:
                self._metrics.gateway_limit.set(self._aimd.limit)
        return now + wait < deadline

    def give_up_waiting(self) -> None:
        """The worker is stopping: calls waiting now, and any that would wait later, fail as
        rate-limited at once (their jobs go to the retry tiers); calls that can go still go."""
        self._stopping = True
        while self._waiters:
            slot = self._waiters.popleft()
            if not slot.done():
                slot.set_result(False)

    async def _queue(self, deadline: float, resent: bool) -> None:
        if self._stopping:
            raise GatewayRateLimited("gateway rate-limited and the worker is stopping")
        slot: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if resent:
            self._waiters.appendleft(slot)
        else:
            self._waiters.append(slot)
        self._grant()
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                granted = await slot
        except BaseException as exc:
            if slot.done() and not slot.cancelled() and slot.result():
                self.release()  # granted just as it gave up: hand the slot on
            else:
                slot.cancel()
                if slot in self._waiters:
                    self._waiters.remove(slot)
            if isinstance(exc, TimeoutError):
                raise GatewayRateLimited(
                    f"gateway rate-limited: no slot within {self.budget_s:g} s "
                    f"(limit {self._aimd.limit})"
                ) from None
            raise
        if not granted:
            raise GatewayRateLimited("gateway rate-limited and the worker is stopping")

    async def _paced(self, deadline: float) -> None:
        assert self._bucket is not None
        now = time.monotonic()
        wait = self._bucket.reserve(now)
        if now + wait > deadline:
            raise GatewayRateLimited(
                f"gateway paced to BILLQ_GATEWAY_MAX_RPS: no turn within {self.budget_s:g} s"
            )
        if wait > 0:
            await asyncio.sleep(wait)

    def _grant(self) -> None:
        """Hand free slots to the waiters in order, unless the gateway asked us to wait."""
        if self._paused_until:
            left = self._paused_until - time.monotonic()
            if left > 0:
                if self._wake is None:
                    self._wake = asyncio.get_running_loop().call_later(left, self._resume)
                return
            self._paused_until = 0.0
        while self._waiters and self._in_flight < self._aimd.limit:
            slot = self._waiters.popleft()
            if not slot.done():
                self._in_flight += 1
                slot.set_result(True)

    def _resume(self) -> None:
        self._wake = None
        self._grant()

    def close(self) -> None:
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None


class RateLimitedGateway(ForwardingGateway):
    """A ``PaymentGateway`` whose charges and refunds go through a ``RateLimiter``."""

    def __init__(self, inner: PaymentGateway, limiter: RateLimiter) -> None:
        super().__init__(inner)
        self.limiter = limiter

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        return await self._limited(lambda: self._inner.charge(request))

    async def refund(self, request: RefundRequest) -> Refunded:
        return await self._limited(lambda: self._inner.refund(request))

    async def _limited(self, call: Callable[[], Awaitable[_T]]) -> _T:
        limiter = self.limiter
        deadline = time.monotonic() + limiter.budget_s
        resent = False
        while True:
            await limiter.acquire(deadline, resent=resent)
            try:
                answer = await call()
            except GatewayRateLimited as exc:
                # Nothing ran at the gateway: the same key may go again, spending no attempt.
                # The pause is set before the slot is released, so no waiter goes meanwhile.
                if not limiter.on_rate_limited(exc, deadline):
                    raise
                resent = True
                continue
            finally:
                limiter.release()
            limiter.on_success()
            return answer

    async def aclose(self) -> None:
        self.limiter.close()
        await self._inner.aclose()
