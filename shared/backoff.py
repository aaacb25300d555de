"""Capped exponential backoff with full jitter: the one delay policy of every retry loop.

A fleet that lost its broker (or its gateway) at the same instant must not come back at the
same instant: with "full jitter" each delay is drawn from [0, cap], so reconnects spread out
instead of arriving as a storm (the AWS Architecture Blog's "Exponential Backoff And Jitter").
A floor keeps a tight loop from spinning when the draw lands near zero.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    """``next()`` → the delay before the next try; ``reset()`` after a success.

    Args:
        base: the cap of the first delay (seconds).
        cap: no delay exceeds this.
        floor: no delay is shorter than this (keeps a failing loop from spinning).
        jitter: share of each cap drawn at random (1.0 full jitter, 0.0 none).
    """

    base: float = 0.25
    cap: float = 5.0
    floor: float = 0.05
    jitter: float = 1.0
    attempt: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def next(self) -> float:
        ceiling = min(self.cap, self.base * 2.0 ** min(self.attempt, 30))
        self.attempt += 1
        delay = ceiling * (1.0 - self.jitter * self._rng.random())
        return max(min(self.floor, self.cap), delay)

    def reset(self) -> None:
        self.attempt = 0
