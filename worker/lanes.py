"""Which waiting deliveries a worker starts next: the priority lane first, the bulk lane
never starved (pure, no I/O).

Both lanes' consumers have a full prefetch window (``BILLQ_PREFETCH``), so a priority
delivery reaches the worker even while tens of thousands of bulk messages are queued and
the bulk window is full. Deliveries then wait here, unclaimed, for one of the worker's
``BILLQ_CONCURRENCY`` charge slots. A freed slot goes to the priority lane while it holds
fewer than its share (``BILLQ_PRIORITY_SHARE`` of the slots) — or any free slot while no
bulk delivery waits — and to the bulk lane otherwise. So, when both lanes have work, the
priority lane holds at most its share and the bulk lane keeps the rest; when one lane is
idle, the other may use every slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def priority_slots(concurrency: int, share: float) -> int:
    """The priority lane's slots while both lanes have work: at least one, and at least one
    left to the bulk lane (with ``concurrency`` 1 the lane with priority takes the slot)."""
    return min(max(1, math.ceil(share * concurrency)), max(1, concurrency - 1))


@dataclass(frozen=True, slots=True)
class Admit:
    priority: int
    bulk: int


def admit(
    *,
    capacity: int,
    slots: int,
    busy_priority: int,
    busy_bulk: int,
    waiting_priority: int,
    waiting_bulk: int,
) -> Admit:
    """How many waiting deliveries of each lane start now."""
    free = capacity - busy_priority - busy_bulk
    if free <= 0:
        return Admit(0, 0)
    limit = free if waiting_bulk == 0 else max(0, slots - busy_priority)
    priority = min(waiting_priority, limit, free)
    bulk = min(waiting_bulk, free - priority)
    # Slots the bulk lane leaves unused go to priority deliveries still waiting.
    priority += min(waiting_priority - priority, free - priority - bulk)
    return Admit(priority, bulk)
