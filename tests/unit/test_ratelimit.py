"""The worker's adaptive limit on a rate-limiting gateway: the arithmetic (worker/aimd.py) and
the wrapper that resends a 429 under the same key (worker/ratelimit.py), without services."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from shared.config import load_settings
from shared.errors import GatewayRateLimited, GatewayUnavailable
from shared.gateway.http_pool import MAX_RETRY_AFTER_S, retry_after_s
from shared.gateway.port import Charged, ChargeOutcome, ChargeRequest
from worker.aimd import AimdLimit, TokenBucket
from worker.breaker import CLOSED, Breaker, BreakerGateway
from worker.metrics import Metrics
from worker.ratelimit import RateLimitedGateway, RateLimiter

pytestmark = pytest.mark.unit


def request(i: int = 1) -> ChargeRequest:
    return ChargeRequest(f"billq_{i}_2026-03-01", i, 1000, "USD", "pm_card_visa")


# -- the arithmetic -------------------------------------------------------------------------


def test_the_limit_starts_at_the_ceiling_and_a_429_halves_it() -> None:
    aimd = AimdLimit(256)
    assert aimd.limit == 256 and aimd.at_ceiling
    assert aimd.on_rate_limited(now=10.0)
    assert aimd.limit == 128


def test_a_burst_of_429s_within_one_interval_cuts_once() -> None:
    aimd = AimdLimit(256, cut_interval_s=1.0)
    cuts = [aimd.on_rate_limited(now=10.0 + i * 0.01) for i in range(50)]
    assert cuts.count(True) == 1 and aimd.limit == 128
    assert aimd.on_rate_limited(now=11.0)  # the next interval is a new signal
    assert aimd.limit == 64


def test_the_limit_never_falls_below_one() -> None:
    aimd = AimdLimit(8)
    for second in range(20):
        aimd.on_rate_limited(now=float(second))
    assert aimd.limit == 1


def test_successes_grow_the_limit_by_about_one_per_limits_worth_back_to_the_ceiling() -> None:
    aimd = AimdLimit(64)
    for second in range(3):
        aimd.on_rate_limited(now=float(second))
    assert aimd.limit == 8
    for _ in range(9):  # about one limit's worth of successes: one more slot
        aimd.on_success()
    assert aimd.limit == 9
    reached = [aimd.on_success() for _ in range(10_000)]
    assert aimd.limit == 64 and aimd.at_ceiling
    assert reached.count(True) == 1  # told once, when it got there; never past the ceiling


def test_the_token_bucket_lets_a_burst_through_then_spaces_requests_evenly() -> None:
    bucket = TokenBucket(rate=10.0, burst=3.0)
    waits = [bucket.reserve(now=100.0) for _ in range(6)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.1, 0.2, 0.3])
    # After a long idle spell only the burst is available again, not the idle time's tokens.
    waits = [bucket.reserve(now=200.0) for _ in range(4)]
    assert waits == pytest.approx([0.0, 0.0, 0.0, 0.1])


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        (" 0.5 ", 0.5),
        ("-4", 0.0),
        ("1e9", MAX_RETRY_AFTER_S),
        ("nan", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_is_read_as_seconds_bounded(header: str | None, expected: float | None) -> None:
    assert retry_after_s(header) == expected


def test_retry_after_may_be_an_http_date() -> None:
    header = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert retry_after_s(header) == pytest.approx(30, abs=2)


# -- the gateway wrapper --------------------------------------------------------------------


class LimitingGateway:
    """Answers 429 (``GatewayRateLimited``) while ``limited`` says so; counts what it saw."""

    def __init__(self, limited: int = 0, retry_after_s: float | None = 0.01) -> None:
        self.limited = limited  # how many calls to refuse, from the first
        self.retry_after_s = retry_after_s
        self.keys: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = asyncio.Event()
        self.release.set()

    async def charge(self, request: ChargeRequest) -> ChargeOutcome:
        self.keys.append(request.idempotency_key)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)
            if self.limited > 0:
                self.limited -= 1
                raise GatewayRateLimited("gateway answered 429 (rate limited)", self.retry_after_s)
            await self.release.wait()
            return Charged(f"pi_{request.account_id}")
        finally:
            self.in_flight -= 1

    async def find_by_idempotency_key(self, idempotency_key: str) -> ChargeOutcome | None:
        return None

    async def aclose(self) -> None:
        return None


def limited(inner: Any, metrics: Metrics | None = None, **settings: Any) -> RateLimitedGateway:
    s = load_settings(**{"concurrency": 64, "rate_limit_wait_s": 5.0} | settings)
    return RateLimitedGateway(inner, RateLimiter(s, metrics))


async def test_without_429s_charges_pass_straight_through_and_the_limit_stays_put() -> None:
    inner = LimitingGateway()
    gw = limited(inner)
    outcomes = await asyncio.gather(*(gw.charge(request(i)) for i in range(64)))
    assert all(isinstance(o, Charged) for o in outcomes)
    assert gw.limiter.limit == 64 and gw.limiter.rate_limited == 0
    assert inner.max_in_flight == 64  # nothing queued: the fast path


async def test_a_429_is_resent_under_the_same_key_and_the_caller_sees_only_the_charge() -> None:
    inner = LimitingGateway(limited=2)
    metrics = Metrics()
    gw = limited(inner, metrics)
    with capture_logs() as logs:
        outcome = await gw.charge(request(7))
    assert outcome == Charged("pi_7")
    assert inner.keys == ["billq_7_2026-03-01"] * 3
    assert gw.limiter.rate_limited == 2
    assert metrics.registry.get_sample_value("billq_gateway_rate_limited_total") == 2
    # Two 429s inside one cut interval: one cut, one line.
    assert [e["event"] for e in logs].count("gateway.rate_limited") == 1
    assert metrics.registry.get_sample_value("billq_gateway_limit") == 32


async def test_a_burst_of_429s_cuts_once_and_then_at_most_the_limit_is_in_flight() -> None:
    inner = LimitingGateway(limited=40)
    gw = limited(inner)
    with capture_logs() as logs:
        outcomes = await asyncio.gather(*(gw.charge(request(i)) for i in range(60)))
    assert all(isinstance(o, Charged) for o in outcomes)
    assert [e["event"] for e in logs].count("gateway.rate_limited") == 1
    assert 32 <= gw.limiter.limit <= 34  # halved once; 60 successes grow it by 60/32
    # Every account charged under its own key, each resent under that key only.
    assert {k for k in inner.keys} == {request(i).idempotency_key for i in range(60)}


async def test_after_a_cut_no_more_than_the_limit_reach_the_gateway() -> None:
    inner = LimitingGateway(limited=1)
    gw = limited(inner, concurrency=8)
    await gw.charge(request(0))  # one 429: the limit is now 4
    assert gw.limiter.limit == 4
    inner.release.clear()
    inner.max_in_flight = 0
    calls = [asyncio.create_task(gw.charge(request(i))) for i in range(1, 9)]
    await asyncio.sleep(0.05)
    assert inner.max_in_flight == 4
    inner.release.set()
    assert all(isinstance(o, Charged) for o in await asyncio.gather(*calls))


async def test_a_429_holds_every_new_call_until_its_retry_after() -> None:
    inner = LimitingGateway(limited=1, retry_after_s=1.0)
    gw = limited(inner)
    first = asyncio.create_task(gw.charge(request(1)))
    await asyncio.sleep(0.05)  # the 429 came back; the gateway asked for 1 s
    second = asyncio.create_task(gw.charge(request(2)))
    await asyncio.sleep(0.2)
    assert inner.keys == [request(1).idempotency_key]  # nobody sent meanwhile
    await asyncio.gather(first, second)
    assert inner.keys[1:] == [request(1).idempotency_key, request(2).idempotency_key]


async def test_past_the_wait_budget_the_429_reaches_the_caller() -> None:
    inner = LimitingGateway(limited=10**6, retry_after_s=0.05)
    gw = limited(inner, rate_limit_wait_s=0.3)
    with pytest.raises(GatewayRateLimited):
        await gw.charge(request())
    assert 2 <= len(inner.keys) <= 8  # resent a few times, then given up
    assert gw.limiter._in_flight == 0 and not gw.limiter._waiters


async def test_a_budget_of_zero_sends_the_first_429_straight_back() -> None:
    inner = LimitingGateway(limited=1)
    gw = limited(inner, rate_limit_wait_s=0)
    with pytest.raises(GatewayRateLimited):
        await gw.charge(request())
    assert len(inner.keys) == 1 and gw.limiter.limit == 64


def test_the_wait_budget_is_capped_inside_the_jobs_lease() -> None:
    s = load_settings(rate_limit_wait_s=600, job_lease=30, gateway_timeout=5)
    assert s.rate_limit_budget_s == 12.5
    assert load_settings().rate_limit_budget_s == 45.0  # the default fits the default lease


async def test_a_call_cancelled_while_it_waits_for_a_slot_gives_nothing_away() -> None:
    inner = LimitingGateway(limited=1, retry_after_s=10)
    gw = limited(inner, rate_limit_wait_s=30)
    waiting = asyncio.create_task(gw.charge(request(1)))
    await asyncio.sleep(0.05)  # rate-limited, now held by the 10 s Retry-After
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert gw.limiter._in_flight == 0 and not gw.limiter._waiters
    await gw.aclose()


async def test_a_stopping_worker_hands_waiting_charges_on_as_rate_limited() -> None:
    inner = LimitingGateway(limited=1, retry_after_s=10)
    gw = limited(inner, rate_limit_wait_s=30)
    waiting = asyncio.create_task(gw.charge(request(1)))
    await asyncio.sleep(0.05)  # rate-limited, held by the 10 s Retry-After
    gw.limiter.give_up_waiting()
    with pytest.raises(GatewayRateLimited, match="stopping"):
        await waiting  # at once, not after 10 s: its job takes the retry tiers
    assert gw.limiter._in_flight == 0 and not gw.limiter._waiters
    with pytest.raises(GatewayRateLimited, match="stopping"):
        await gw.charge(request(2))  # still paused: nothing new waits either
    await gw.aclose()


async def test_the_pace_cap_spaces_calls_to_the_configured_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        waits.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    gw = limited(LimitingGateway(), gateway_max_rps=50)  # a burst of 5, then one every 20 ms
    await asyncio.gather(*(gw.charge(request(i)) for i in range(10)))
    paced = sorted(w for w in waits if w > 0)
    assert paced == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.10], abs=0.01)


async def test_429s_are_answers_to_the_breaker_not_failures() -> None:
    inner = LimitingGateway(limited=60)
    s = load_settings(breaker_window=10, concurrency=16, rate_limit_wait_s=5.0)
    breaker = Breaker(s, lambda: inner.find_by_idempotency_key("x"))
    gw = RateLimitedGateway(BreakerGateway(inner, breaker), RateLimiter(s))  # type: ignore[arg-type]
    outcomes = await asyncio.gather(*(gw.charge(request(i)) for i in range(16)))
    assert all(isinstance(o, Charged) for o in outcomes)
    assert breaker.state == CLOSED and gw.limiter.rate_limited == 60


async def test_other_failures_pass_through_untouched_and_free_their_slot() -> None:
    class Down(LimitingGateway):
        async def charge(self, request: ChargeRequest) -> ChargeOutcome:
            raise GatewayUnavailable("gateway answered 503")

    gw = limited(Down())
    for _ in range(3):
        with pytest.raises(GatewayUnavailable) as caught:
            await gw.charge(request())
        assert not isinstance(caught.value, GatewayRateLimited)
    assert gw.limiter._in_flight == 0 and gw.limiter.limit == 64
