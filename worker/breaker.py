"""A circuit breaker on the payment gateway: an outage must not burn every job's attempts.

Without it, a gateway that is down (5xx, timeouts, refused connections) or that refuses
billq itself (a rotated key: 401; an unusable URL) fails every claimed job in turn: each
claim spends an attempt, and within minutes the whole run is dead-lettered. With it, once
most of the last ``BILLQ_BREAKER_WINDOW`` calls failed that way, the breaker *opens*:

- the consumer claims nothing new; deliveries wait unacked in the prefetch window (claimed
  by nobody, so no attempt is spent) and go back to the queue after ``BILLQ_BREAKER_HOLD_S``;
- a probe asks the gateway a read-only question (a search for a key nobody uses) after a
  jittered, growing delay, from ``BILLQ_BREAKER_PROBE_MIN_S`` up to ``…_PROBE_MAX_S``;
- the first probe the gateway answers *closes* the breaker, and the held work starts.

Declines, rate limits (429) and other answers count as successes: the gateway is up (the
rate limiter in worker/ratelimit.py deals with a 429). A 401 is re-raised as
``GatewayUnavailable`` so the job is retried later instead of dead-lettered.
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
from shared.errors import (
    GatewayMisconfigured,
    GatewayRateLimited,
    GatewayRejected,
    GatewayUnavailable,
    TransientError,
)
from shared.gateway.port import (
    ChargeOutcome,
    ChargeRequest,
    ForwardingGateway,
    PaymentGateway,
    Refunded,
    RefundRequest,
)
from worker.metrics import Metrics

_T = TypeVar("_T")

log = structlog.get_logger("billq.worker")

CLOSED, OPEN = "closed", "open"
# The probe's search: read-only, and no charge ever carries this key.
PROBE_KEY = "billq_breaker_probe"


class Breaker:
    """The breaker's state; ``BreakerGateway`` feeds it, the consumer asks ``admits``."""

    def __init__(
        self,
        settings: Settings,
        probe: Callable[[], Awaitable[object]],
        metrics: Metrics | None = None,
    ) -> None:
        self._window = settings.breaker_window
        self._needed = max(1, round(settings.breaker_failure_ratio * self._window))
        self._calls: deque[bool] = deque(maxlen=max(1, self._window))
        self._failures = 0
        self._probe = probe
        self._metrics = metrics
        self._backoff = Backoff(
            base=settings.breaker_probe_min_s,
            cap=settings.breaker_probe_max_s,
            floor=settings.breaker_probe_min_s / 2,
            jitter=0.5,
        )
        self._listeners: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self.state = CLOSED
        self.opened_at: float | None = None
        self.last_error: str | None = None

    @property
    def admits(self) -> bool:
        """Whether new charges may start."""
        return self.state == CLOSED

    def on_close(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def record(self, failed: bool, error: str | None = None) -> None:
        """One finished gateway call: ``failed`` when it says the gateway is unusable."""
        if self._window == 0 or self.state != CLOSED:
            return
        if len(self._calls) == self._calls.maxlen and self._calls[0]:
            self._failures -= 1
        self._calls.append(failed)
        if failed:
            self._failures += 1
            self.last_error = error
            if len(self._calls) >= self._needed and self._failures >= self._needed:
                self._open()

    def _open(self) -> None:
        self.state, self.opened_at = OPEN, time.monotonic()
        log.warning(
            "gateway.breaker_opened",
            failures=self._failures,
            window=len(self._calls),
            error=self.last_error,
        )
        if self._metrics:
            self._metrics.breaker_open.set(1)
            self._metrics.breaker_opened.inc()
        self._task = asyncio.get_running_loop().create_task(self._probe_until_answered())

    def _close(self) -> None:
        held = time.monotonic() - (self.opened_at or time.monotonic())
        self.state, self.opened_at = CLOSED, None
        self._calls.clear()
        self._failures = 0
        self._backoff.reset()
        log.info("gateway.breaker_closed", open_s=round(held, 3))
        if self._metrics:
            self._metrics.breaker_open.set(0)
        for listener in self._listeners:
            listener()

    async def _probe_until_answered(self) -> None:
        while True:
            delay = self._backoff.next()
            await asyncio.sleep(delay)
            try:
                await self._probe()
            except GatewayRateLimited:
                pass  # it answered: a rate limit means it is up
            except (TransientError, GatewayMisconfigured) as exc:
                self.last_error = str(exc)
                log.warning("gateway.breaker_probe_failed", error=str(exc), retry_s=delay)
                if self._metrics:
                    self._metrics.breaker_probes.labels("failed").inc()
                continue
            except GatewayRejected:
                pass  # it answered: refusing a probe's query still means it is up
            if self._metrics:
                self._metrics.breaker_probes.labels("answered").inc()
            self._task = None
            self._close()
            return

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


class BreakerGateway(ForwardingGateway):
    """A ``PaymentGateway`` that reports each charge's fate to the breaker."""

    def __init__(self, inner: PaymentGateway, breaker: Breaker) -> None:
        super().__init__(inner)
        self.breaker = breaker

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        return await self._reported("charge", lambda: self._inner.charge(request))

    async def refund(self, request: RefundRequest) -> Refunded:
        return await self._reported("refund", lambda: self._inner.refund(request))

    async def _reported(self, what: str, call: Callable[[], Awaitable[_T]]) -> _T:
        if not self.breaker.admits:
            # Claimed before the breaker opened: do not add a doomed call to the outage.
            raise GatewayUnavailable(f"gateway circuit open; {what} not attempted")
        try:
            answer = await call()
        except GatewayMisconfigured as exc:
            self.breaker.record(True, str(exc))
            # Our key or URL, not the job: retry it once the gateway takes us again.
            raise GatewayUnavailable(str(exc)) from exc
        except GatewayRateLimited:
            self.breaker.record(False)  # it answered: too many of us, but up
            raise
        except TransientError as exc:
            self.breaker.record(True, str(exc))
            raise
        except GatewayRejected:
            self.breaker.record(False)
            raise
        self.breaker.record(False)
        return answer

    async def aclose(self) -> None:
        await self.breaker.aclose()
        await self._inner.aclose()


def guarded(settings: Settings, gateway: PaymentGateway, metrics: Metrics | None) -> BreakerGateway:
    """The gateway behind a breaker whose probe is a read-only search on the same gateway."""
    breaker = Breaker(settings, lambda: gateway.find_by_idempotency_key(PROBE_KEY), metrics=metrics)
    return BreakerGateway(gateway, breaker)
