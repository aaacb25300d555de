"""What the consumer does with one delivery: exactly one broker action per outcome."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

AckKind = Literal[
    "succeeded",
    "declined",
    "duplicate",
    "fenced",
    "already_paid",
    "double_charge",
    "refunded",
    "already_refunded",
]


@dataclass(frozen=True, slots=True)
class Ack:
    """Done (or nothing to do): ack the delivery."""

    kind: AckKind


@dataclass(frozen=True, slots=True)
class Retry:
    """Publish a delayed copy that carries the hand-off token, then ack.

    ``handoff`` is the job's attempts value the copy may claim from; ``None`` when
    unknown (the copy then waits for the lease to expire).
    """

    delay_s: float
    handoff: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Dead:
    """Publish to the dead-letter exchange with the reason, then ack."""

    error_class: str
    reason: str


Outcome = Ack | Retry | Dead
