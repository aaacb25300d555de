"""Exchange and queue names, derived from the prefix by tiny pure functions.

Two lanes share the work exchange: ``bulk`` (the monthly sweep, routing key ``charge``) and
``priority`` (dunning retries now; one-off charges and refunds join it through
``routing_key_for_job``), each with its own queue and its own retry tiers, so a message keeps
its lane through retries and dead letters.
"""

from __future__ import annotations

from typing import Literal

Lane = Literal["bulk", "priority"]
LANES: tuple[Lane, ...] = ("bulk", "priority")

ROUTING_KEY = "charge"
PRIORITY_ROUTING_KEY = "charge.priority"

# Job kinds whose messages travel the priority lane (besides dunning retries): what an
# application asked for over the API is waited on, the monthly sweep is not.
PRIORITY_KINDS: frozenset[str] = frozenset({"oneoff", "refund"})


def work_exchange(prefix: str) -> str:
    return prefix


def dead_letter_exchange(prefix: str) -> str:
    return f"{prefix}.dlx"


def work_queue(prefix: str) -> str:
    return f"{prefix}.charge"


def priority_queue(prefix: str) -> str:
    return f"{prefix}.charge.priority"


def retry_queue(prefix: str, delay_s: float) -> str:
    return f"{prefix}.charge.retry.{int(delay_s)}s"


def priority_retry_queue(prefix: str, delay_s: float) -> str:
    return f"{prefix}.charge.priority.retry.{int(delay_s)}s"


def dead_letter_queue(prefix: str) -> str:
    return f"{prefix}.charge.dead"


def control_exchange(prefix: str) -> str:
    """Fanout to every worker of this prefix (``billq workers restart``)."""
    return f"{prefix}.control"


def lane_queue(prefix: str, lane: Lane) -> str:
    return priority_queue(prefix) if lane == "priority" else work_queue(prefix)


def lane_retry_queue(prefix: str, lane: Lane, delay_s: float) -> str:
    if lane == "priority":
        return priority_retry_queue(prefix, delay_s)
    return retry_queue(prefix, delay_s)


def lane_routing_key(lane: Lane) -> str:
    return PRIORITY_ROUTING_KEY if lane == "priority" else ROUTING_KEY


def lane_of_routing_key(routing_key: str | None) -> Lane:
    """The lane a routing key names; anything else (a letter from before the lanes) is bulk."""
    return "priority" if routing_key == PRIORITY_ROUTING_KEY else "bulk"


def routing_key_for_job(*, dunning_attempt: int, kind: str | None = None) -> str:
    """The one place that decides a job's lane: dunning retries (and the kinds in
    ``PRIORITY_KINDS``) go to the priority lane, the monthly sweep to the bulk one."""
    priority = dunning_attempt > 0 or (kind is not None and kind in PRIORITY_KINDS)
    return lane_routing_key("priority" if priority else "bulk")
