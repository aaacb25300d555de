"""Exchange and queue names, derived from the prefix by tiny pure functions."""

from __future__ import annotations

ROUTING_KEY = "charge"


def routing_key_for(kind: str) -> str:
    """The routing key a job of this kind is published with (``shared.billing.kinds``).

    The one place that decides a job's lane: the distributor, the outbox repair, the
    reconciler, operators' replays and the API all publish through it."""
    return ROUTING_KEY


def work_exchange(prefix: str) -> str:
    return prefix


def dead_letter_exchange(prefix: str) -> str:
    return f"{prefix}.dlx"


def work_queue(prefix: str) -> str:
    return f"{prefix}.charge"


def retry_queue(prefix: str, delay_s: float) -> str:
    return f"{prefix}.charge.retry.{int(delay_s)}s"


def dead_letter_queue(prefix: str) -> str:
    return f"{prefix}.charge.dead"


def control_exchange(prefix: str) -> str:
    """Fanout to every worker of this prefix (``billq workers restart``)."""
    return f"{prefix}.control"
