"""How many charges a rate-limited gateway gets at once, and how often: pure arithmetic.

A gateway that rate-limits (Stripe answers 429 past its per-account rate) says so one request
too late; the worker's answer is TCP's (and Netflix's concurrency-limits'): additive increase,
multiplicative decrease. ``AimdLimit`` is the number of charges allowed in flight: each
rate-limited answer multiplies it by ``decrease`` (never below 1) — at most once per
``cut_interval_s``, because one window of the gateway's answers 429 to everything in flight at
once, and that is one signal, not fifty — and each success grows it back by 1/limit, i.e. by
one per limit's worth of successes (about one per round trip), up to ``BILLQ_CONCURRENCY``.

``TokenBucket`` is the optional hard cap (``BILLQ_GATEWAY_MAX_RPS``) for a user who knows the
account's limit: a generic cell rate (GCRA) bucket that hands each request the moment it may go.

No I/O and no clock of its own: callers pass ``now`` (``time.monotonic()``), tests pass numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class AimdLimit:
    """The charges allowed in flight now: ``limit``, between 1 and ``ceiling``."""

    ceiling: int
    decrease: float = 0.5
    cut_interval_s: float = 1.0
    _value: float = field(init=False)
    _cut_at: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.ceiling = max(1, self.ceiling)
        self._value = float(self.ceiling)

    @property
    def limit(self) -> int:
        return int(self._value)

    @property
    def at_ceiling(self) -> bool:
        return self._value >= self.ceiling

    def on_success(self) -> bool:
        """One answer that was not a rate limit; True when this one reached the ceiling."""
        if self._value >= self.ceiling:
            return False
        self._value = min(float(self.ceiling), self._value + 1.0 / self._value)
        return self._value >= self.ceiling

    def on_rate_limited(self, now: float) -> bool:
        """One 429; True when it cut the limit (the first of its interval)."""
        if self._cut_at is not None and now - self._cut_at < self.cut_interval_s:
            return False
        self._cut_at = now
        self._value = max(1.0, self._value * self.decrease)
        return True


@dataclass(slots=True)
class TokenBucket:
    """At most ``rate`` requests a second on average, ``burst`` at once.

    ``reserve(now)`` books the next free moment and returns how long to wait for it (0 when a
    token is there): callers sleep that long and go, in the order they asked.
    """

    rate: float
    burst: float = 1.0
    _next: float = field(default=float("-inf"), init=False)

    def reserve(self, now: float) -> float:
        interval = 1.0 / self.rate
        # Up to `burst` requests may be ahead of the even schedule.
        earliest = max(self._next, now - (self.burst - 1.0) * interval)
        self._next = earliest + interval
        return max(0.0, earliest - now)
