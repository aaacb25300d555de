"""The gateway circuit breaker: what opens it, what it holds back, what closes it."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from structlog.testing import capture_logs

from shared.backoff import Backoff
from shared.config import load_settings
from shared.errors import (
    GatewayMisconfigured,
    GatewayRejected,
    GatewayUnavailable,
    OutcomeUnknown,
)
from shared.gateway.port import Charged, ChargeOutcome, ChargeRequest, Declined
from worker.breaker import CLOSED, OPEN, Breaker, BreakerGateway

pytestmark = pytest.mark.unit

REQUEST = ChargeRequest("billq_1_2026-03-01", 1, 1000, "USD", "pm_card_visa")


class ScriptedGateway:
    """Answers each charge with the next scripted result; probes with ``probe_error``."""

    def __init__(self) -> None:
        self.answer: ChargeOutcome | Exception = Charged("pi_1")
        self.probe_error: Exception | None = GatewayUnavailable("gateway answered 503")
        self.charges = 0
        self.probes = 0
        self.probed_thrice = asyncio.Event()

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        self.charges += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def find_by_idempotency_key(self, idempotency_key: str) -> ChargeOutcome | None:
        self.probes += 1
        if self.probes >= 3:
            self.probed_thrice.set()
        if self.probe_error is not None:
            raise self.probe_error
        return None

    async def aclose(self) -> None:
        return None


def guarded(gateway: ScriptedGateway, **settings: float) -> BreakerGateway:
    s = load_settings(
        **{"breaker_window": 10, "breaker_probe_min_s": 0.01, "breaker_probe_max_s": 0.02}
        | settings
    )
    return BreakerGateway(gateway, Breaker(s, lambda: gateway.find_by_idempotency_key("x")))  # type: ignore[arg-type]


async def fail(gw: BreakerGateway, n: int) -> None:
    for _ in range(n):
        with pytest.raises(GatewayUnavailable):
            await gw.charge(REQUEST)


@pytest.mark.parametrize(
    "error",
    [
        GatewayUnavailable("gateway answered 503"),
        OutcomeUnknown("no answer from the gateway (ReadTimeout)"),
        GatewayMisconfigured("gateway 401 authentication_error: Invalid API Key provided."),
    ],
)
async def test_most_recent_calls_failing_open_the_breaker_and_stop_new_charges(
    error: Exception,
) -> None:
    gateway = ScriptedGateway()
    gw = guarded(gateway)
    gateway.answer = error
    with capture_logs() as logs:
        for _ in range(8):  # 0.8 x a window of 10
            with pytest.raises((GatewayUnavailable, OutcomeUnknown)):
                await gw.charge(REQUEST)
    assert gw.breaker.state == OPEN and not gw.breaker.admits
    assert [e["event"] for e in logs] == ["gateway.breaker_opened"]
    # Claimed before it opened: failed fast, the gateway is not called again.
    await fail(gw, 1)
    assert gateway.charges == 8
    await gw.aclose()


async def test_a_rejected_key_is_retried_later_not_dead_lettered() -> None:
    gateway = ScriptedGateway()
    gateway.answer = GatewayMisconfigured("gateway 401 authentication_error: Invalid API Key")
    gw = guarded(gateway)
    with pytest.raises(GatewayUnavailable, match="401"):  # a TransientError: the job retries
        await gw.charge(REQUEST)
    await gw.aclose()


async def test_declines_and_invalid_requests_are_answers_and_keep_it_closed() -> None:
    gateway = ScriptedGateway()
    gw = guarded(gateway)
    for i in range(30):
        gateway.answer = (
            GatewayUnavailable("503") if i % 3 == 0 else Declined("card_declined", None, "no")
        )
        with pytest.raises(GatewayUnavailable) if i % 3 == 0 else contextlib.nullcontext():
            await gw.charge(REQUEST)
    gateway.answer = GatewayRejected("gateway 400 invalid_request_error: bad amount")
    for _ in range(10):
        with pytest.raises(GatewayRejected):
            await gw.charge(REQUEST)
    assert gw.breaker.state == CLOSED
    await gw.aclose()


async def test_an_open_breaker_probes_until_the_gateway_answers_then_resumes() -> None:
    gateway = ScriptedGateway()
    gw = guarded(gateway)
    resumed = asyncio.Event()
    gw.breaker.on_close(resumed.set)
    gateway.answer = GatewayUnavailable("gateway answered 503")
    await fail(gw, 8)
    # Still down: every probe fails, the breaker stays open.
    await asyncio.wait_for(gateway.probed_thrice.wait(), 5)
    assert gw.breaker.state == OPEN and not resumed.is_set()
    gateway.probe_error = None
    gateway.answer = Charged("pi_2")
    await asyncio.wait_for(resumed.wait(), 5)
    assert gw.breaker.state == CLOSED
    assert await gw.charge(REQUEST) == Charged("pi_2")
    await gw.aclose()


async def test_a_window_of_zero_disables_the_breaker() -> None:
    gateway = ScriptedGateway()
    gw = guarded(gateway, breaker_window=0)
    gateway.answer = GatewayUnavailable("503")
    await fail(gw, 50)
    assert gw.breaker.state == CLOSED
    await gw.aclose()


def test_backoff_grows_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff(base=1.0, cap=8.0, floor=0.1)
    delays = [backoff.next() for _ in range(20)]
    assert all(0.1 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 1, "jitter spreads the delays"
    steady = Backoff(base=1.0, cap=8.0, jitter=0.0)
    assert [steady.next() for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    steady.reset()
    assert steady.next() == 1.0
