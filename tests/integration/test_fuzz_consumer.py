"""Fuzzed message bodies and headers through the real consumer: every message ends
dead-lettered with a reason (none is a valid job), the worker never crashes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import hypothesis
import pytest
import testkit
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from shared.amqp import names
from shared.config import Settings
from worker.run import run_worker

pytestmark = pytest.mark.integration

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)
shaped = st.fixed_dictionaries(
    {},
    optional={
        "schema_version": st.one_of(st.just(1), json_values),
        "job_id": st.one_of(st.integers(min_value=-5, max_value=10**20), json_values),
        "account_id": st.one_of(st.integers(), json_values),
        "period_start": st.one_of(st.dates().map(str), json_values),
        "idempotency_key": st.one_of(st.text(max_size=300), json_values),
        "run_id": json_values,
    },
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    shaped.map(lambda v: json.dumps(v).encode()),
    st.integers(20_000, 40_000).map(lambda n: b"{" + b" " * n + b"}"),
)
headers = st.dictionaries(
    st.sampled_from(["x-billq-handoff", "x-billq-signature", "x-death", "foo"]),
    st.one_of(st.integers(-(2**31), 2**31 - 1), st.text(max_size=20), st.booleans()),
    max_size=3,
)


async def _round(settings: Settings, messages: list[tuple[bytes, dict[str, Any]]]) -> None:
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop))
    dead_q = names.dead_letter_queue(settings.queue_prefix)
    work_q = names.work_queue(settings.queue_prefix)

    async def topology_ready() -> bool:
        return work_q in await testkit.queue_depths(settings)

    await testkit.wait_until(topology_ready, timeout=20)
    before = (await testkit.queue_depths(settings))[dead_q][0]
    for body, hdrs in messages:
        await testkit.publish_raw(settings, body, headers=hdrs)

    async def all_dead() -> bool:
        assert not worker.done(), "the worker stopped on fuzzed input"
        depths = await testkit.queue_depths(settings)
        return depths[dead_q][0] - before == len(messages) and depths[work_q][0] == 0

    try:
        await testkit.wait_until(all_dead, timeout=60)
    finally:
        stop.set()
        assert await worker == 0


@hypothesis.settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(st.lists(st.tuples(bodies, headers), min_size=10, max_size=25))
def test_fuzzed_messages_are_all_dead_lettered_and_the_worker_survives(
    settings: Settings, messages: list[tuple[bytes, dict[str, Any]]]
) -> None:
    asyncio.run(_round(settings.model_copy(update={"concurrency": 8}), messages))
