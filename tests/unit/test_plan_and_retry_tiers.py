"""Pure decisions of the distributor and the consumer: the job each due account gets, the
shard flag, and which retry tier (queue) a retry delay lands in."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from distributor.plan import DueAccount, parse_shard, plan_job
from shared.amqp import names
from shared.amqp.topology import retry_tier_for, retry_tiers
from shared.config import load_settings

pytestmark = pytest.mark.unit


DUE = DueAccount(
    account_id=42,
    next_billing_at=dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
    billing_interval="month",
    billing_anchor_day=1,
    amount_cents=1999,
    currency="EUR",
)


def test_a_due_account_gets_its_oldest_unbilled_period_with_a_deterministic_key() -> None:
    end_of_january = replace(
        DUE, next_billing_at=dt.datetime(2026, 1, 31, 9, tzinfo=dt.UTC), billing_anchor_day=31
    )
    job = plan_job(end_of_january)

    assert (job.period_start, job.period_end) == (dt.date(2026, 1, 31), dt.date(2026, 2, 28))
    assert job.idempotency_key == "billq_42_2026-01-31"
    assert (job.account_id, job.amount_cents, job.currency) == (42, 1999, "EUR")
    assert plan_job(end_of_january) == job


def test_each_dunning_retry_gets_its_own_key() -> None:
    first, retry = plan_job(DUE), plan_job(replace(DUE, dunning_attempt=2))

    assert first.idempotency_key == "billq_42_2026-03-01"
    assert retry.idempotency_key == "billq_42_2026-03-01_d2"
    assert retry.dunning_attempt == 2


@pytest.mark.parametrize(("text", "shard"), [("0/1", (0, 1)), ("3/4", (3, 4))])
def test_a_shard_is_k_of_n(text: str, shard: tuple[int, int]) -> None:
    assert parse_shard(text) == shard


@pytest.mark.parametrize("text", ["4/4", "-1/2", "1/0", "1", "a/b", "1/2/3"])
def test_an_impossible_shard_is_refused_naming_the_flag(text: str) -> None:
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


def test_retry_tiers_are_whole_seconds_sorted_once_each_and_at_least_one() -> None:
    settings = load_settings(retry_delays=[30, 5, 0.2, 5.7, 30.0])

    assert retry_tiers(settings) == [1.0, 5.0, 30.0]
    assert [names.retry_queue("p", t) for t in retry_tiers(settings)] == [
        "p.charge.retry.1s",
        "p.charge.retry.5s",
        "p.charge.retry.30s",
    ]


@pytest.mark.parametrize(
    ("delay", "tier"), [(0.1, 1.0), (1.0, 1.0), (4.0, 5.0), (5.0, 5.0), (29.0, 30.0), (900.0, 30.0)]
)
def test_a_retry_waits_in_the_smallest_tier_at_or_above_its_delay(
    delay: float, tier: float
) -> None:
    settings = load_settings(retry_delays=[1, 5, 30])

    assert retry_tier_for(settings, delay) == tier


def test_the_retry_delay_follows_the_attempts_and_the_last_tier_repeats() -> None:
    settings = load_settings(retry_delays=[5, 30, 120])

    assert [settings.retry_delay(a) for a in (0, 1, 2, 3, 4, 50)] == [5, 5, 30, 120, 120, 120]
