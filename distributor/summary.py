"""What one distribute invocation did: the line for people, the dict for ``--json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Summary:
    run_id: int | None
    as_of: str
    due: int = 0
    new_jobs: int = 0
    republished: int = 0
    published: int = 0
    duration_s: float = 0.0
    dry_run: bool = False
    locked: bool = False
    reconciled: int = 0
    scheduled_runs: list[int] = field(default_factory=list)
    state: str = "published"
    # Due accounts that got no job, with the reason (an ended job holds their period).
    blocked: list[dict[str, Any]] = field(default_factory=list)
    paced: int = 0  # due, but billed a new period less than BILLQ_CATCHUP_MIN_GAP ago
    future_periods: int = 0  # jobs for periods that start after the wall clock
    settled_runs: list[int] = field(default_factory=list)  # runs left by dead distributors

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        if self.locked:
            return "distribute: another distributor run holds the lock; nothing to do"
        if self.state == "scheduled":
            return f"distribute: scheduled run {self.run_id} at {self.as_of}"
        if self.dry_run:
            return f"distribute (dry run): as_of={self.as_of} due={self.due}"
        line = (
            f"distribute: run={self.run_id} as_of={self.as_of} due={self.due} "
            f"new_jobs={self.new_jobs} republished={self.republished} "
            f"published={self.published} in {self.duration_s:.2f}s"
        )
        if self.blocked:
            line += f"; blocked={len(self.blocked)} (see `billq report {self.run_id}`)"
        if self.paced:
            line += f"; paced={self.paced} (catch-up: one new period per account per gap)"
        if self.future_periods:
            line += f"; {self.future_periods} period(s) start after now (billing ahead)"
        return line
