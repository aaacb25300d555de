"""A billing job's states and the rules operators' actions follow (pure).

pending ─► published ─► processing ─► succeeded
               ▲            │  ├────► failed     (declined: dunning takes over)
               │            │  └────► dead       (fatal, or out of attempts)
               └─ retrying ◄┘
"""

from __future__ import annotations

JOB_STATES = (
    "pending",
    "published",
    "processing",
    "retrying",
    "succeeded",
    "failed",
    "dead",
    "already_paid",
)
OPEN_STATES = ("pending", "published", "processing", "retrying")
TERMINAL = frozenset({"succeeded", "failed", "dead", "already_paid"})
