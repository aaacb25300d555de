"""The priority lane's pure parts: names and routing, the setting, and which delivery starts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.amqp import names
from shared.config import load_settings
from shared.errors import ConfigError
from worker.lanes import admit, priority_slots

pytestmark = pytest.mark.unit


def test_the_priority_lane_is_named_from_the_prefix() -> None:
    assert names.priority_queue("billq") == "billq.charge.priority"
    assert names.priority_retry_queue("billq", 30) == "billq.charge.priority.retry.30s"
    assert names.lane_queue("p", "bulk") == names.work_queue("p") == "p.charge"
    assert names.lane_retry_queue("p", "bulk", 5) == names.retry_queue("p", 5)


def test_dunning_retries_are_routed_to_the_priority_lane_and_first_charges_to_the_bulk_one() -> (
    None
):
    assert names.routing_key_for_job(dunning_attempt=0) == names.ROUTING_KEY
    assert names.routing_key_for_job(dunning_attempt=1) == names.PRIORITY_ROUTING_KEY
    assert names.routing_key_for_job(dunning_attempt=3) == names.PRIORITY_ROUTING_KEY


def test_a_routing_key_names_its_lane_and_anything_unknown_is_bulk() -> None:
    for lane in names.LANES:
        assert names.lane_of_routing_key(names.lane_routing_key(lane)) == lane
    assert names.lane_of_routing_key(None) == "bulk"
    assert names.lane_of_routing_key("billq.charge") == "bulk"


@pytest.mark.parametrize("value", ["0", "1", "-0.1", "1.5", "nan"])
def test_a_priority_share_outside_zero_to_one_is_refused_naming_the_setting(value: str) -> None:
    with pytest.raises(ConfigError, match="BILLQ_PRIORITY_SHARE"):
        load_settings(priority_share=value)


def test_the_priority_lane_gets_its_share_of_slots_and_leaves_at_least_one_to_bulk() -> None:
    assert priority_slots(64, 0.25) == 16
    assert priority_slots(10, 0.01) == 1
    assert priority_slots(4, 0.99) == 3
    assert priority_slots(1, 0.5) == 1


def test_a_waiting_priority_delivery_takes_the_next_free_slot_before_bulk_ones() -> None:
    chosen = admit(
        capacity=8, slots=2, busy_priority=0, busy_bulk=7, waiting_priority=1, waiting_bulk=50
    )
    assert (chosen.priority, chosen.bulk) == (1, 0)


def test_with_both_lanes_waiting_the_priority_lane_stops_at_its_share() -> None:
    chosen = admit(
        capacity=8, slots=2, busy_priority=2, busy_bulk=4, waiting_priority=9, waiting_bulk=9
    )
    assert (chosen.priority, chosen.bulk) == (0, 2)


def test_either_lane_may_use_every_slot_while_the_other_is_idle() -> None:
    only_priority = admit(
        capacity=8, slots=2, busy_priority=0, busy_bulk=0, waiting_priority=20, waiting_bulk=0
    )
    only_bulk = admit(
        capacity=8, slots=2, busy_priority=0, busy_bulk=0, waiting_priority=0, waiting_bulk=20
    )
    assert (only_priority.priority, only_bulk.bulk) == (8, 8)


@given(
    capacity=st.integers(1, 64),
    share=st.floats(0.01, 0.99),
    busy_priority=st.integers(0, 64),
    busy_bulk=st.integers(0, 64),
    waiting_priority=st.integers(0, 100),
    waiting_bulk=st.integers(0, 100),
)
def test_admission_never_exceeds_the_free_slots_nor_what_waits_and_never_starves_bulk(
    capacity: int,
    share: float,
    busy_priority: int,
    busy_bulk: int,
    waiting_priority: int,
    waiting_bulk: int,
) -> None:
    slots = priority_slots(capacity, share)
    chosen = admit(
        capacity=capacity,
        slots=slots,
        busy_priority=busy_priority,
        busy_bulk=busy_bulk,
        waiting_priority=waiting_priority,
        waiting_bulk=waiting_bulk,
    )
    free = max(0, capacity - busy_priority - busy_bulk)
    assert 0 <= chosen.priority <= waiting_priority
    assert 0 <= chosen.bulk <= waiting_bulk
    assert chosen.priority + chosen.bulk <= free
    # Work-conserving: a free slot stays free only when nothing waits for it.
    assert chosen.priority + chosen.bulk == min(free, waiting_priority + waiting_bulk)
    # With bulk waiting, priority only grows while it holds less than its share.
    if waiting_bulk > 0 and chosen.priority > 0 and chosen.bulk < waiting_bulk:
        assert busy_priority + chosen.priority <= slots
