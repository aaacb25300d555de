"""In-process counters the worker keeps: the one count behind its heartbeats, its final log
line and its Prometheus metrics (``worker.metrics`` reads them when scraped)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from worker.outcome import Ack, Outcome, Retry


@dataclass
class Stats:
    in_flight: int = 0
    handled: int = 0
    reconnects: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    def count(self, outcome: Outcome) -> None:
        """Count the outcome under its label (succeeded, declined, retried, dead, ...)."""
        if isinstance(outcome, Ack):
            label: str = outcome.kind
        elif isinstance(outcome, Retry):
            label = "retried"
        else:
            label = "dead"
        self.outcomes[label] += 1
