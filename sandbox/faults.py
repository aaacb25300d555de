"""The faults a sandbox injects: one value, validated once."""

from __future__ import annotations

import math
from dataclasses import dataclass

from shared.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Faults:
    """Rolled on every POST from a ``random.Random(seed)``, so a seed gives one sequence.

    Raises:
        ConfigError: a rate outside [0, 1], a negative or infinite latency or rate limit.
    """

    fail_rate: float = 0.0  # 500 api_error before anything runs; nothing stored
    timeout_rate: float = 0.0  # the charge is stored, then no answer
    latency_ms: float = 0.0  # added before every POST answer
    spike_rate: float = 0.0  # share of POSTs delayed by a further spike_ms
    spike_ms: float = 0.0
    seed: int | None = None
    # A wholesale outage: every /v1 request (searches too) gets this status; 0 = none.
    # 401 plays a rotated API key, 503 a gateway that is down.
    outage_status: int = 0
    # Charge and refund POSTs a second (a fixed one-second window, as Stripe counts); beyond
    # it a POST is answered 429 with Retry-After, nothing run. 0 = no limit.
    rate_limit: float = 0.0

    def __post_init__(self) -> None:
        for name in ("fail_rate", "timeout_rate", "spike_rate"):
            rate = getattr(self, name)
            if not 0 <= rate <= 1:  # also refuses nan
                raise ConfigError(f"{name} must be within [0, 1], got {rate}")
        if self.outage_status and not 400 <= self.outage_status <= 599:
            raise ConfigError(f"outage_status must be 0 or 400-599, got {self.outage_status}")
        if not (self.rate_limit >= 0 and math.isfinite(self.rate_limit)):
            raise ConfigError(f"rate_limit must be >= 0 requests a second, got {self.rate_limit}")
        for name in ("latency_ms", "spike_ms"):
            ms = getattr(self, name)
            if not (ms >= 0 and math.isfinite(ms)):
                raise ConfigError(f"{name} must be >= 0, got {ms}")
