"""The worker's port to job storage: ``JobsRepo`` (its values: ``shared.billing.claims``).

The handler needs exactly these operations; ``shared.db.jobs_repo.PgJobsRepo`` implements
them on Postgres (one statement per phase), and the unit tests use an in-memory fake that
keeps the same rules (``tests/jobskit.py``, checked against the real one on shared scenarios).

Rules every implementation keeps: a claim bumps ``attempts``, the fencing token, and every
record is fenced by it (a holder whose job was taken over changes nothing, and is told so by
``False`` or a missing key); methods raise the billq error tree (``TransientError`` for a
retryable failure), never a driver's classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shared.billing.claims import ClaimedJob, ClaimRequest, JobSnapshot
from shared.billing.dunning import DeclineDecision


class JobsRepo(Protocol):
    """What the worker needs from job storage."""

    async def claim_many(self, requests: Sequence[ClaimRequest]) -> dict[int, ClaimedJob]:
        """Claim every claimable job; keyed by the request's position (two copies of one job
        in a batch: only one claims). A job is claimable when pending or published, when
        retrying and the request carries its hand-off token (its ``attempts``), or when
        processing and redelivered, handed off, or its lease or its holder has lapsed."""
        ...

    async def lookup_many(self, job_ids: Sequence[int]) -> dict[int, JobSnapshot]:
        """The jobs that exist among ``job_ids``."""
        ...

    async def record_successes(self, charged: Sequence[tuple[ClaimedJob, str]]) -> dict[int, bool]:
        """Commit (job, gateway charge id) pairs: {job id: True when recorded as its period's
        charge, False when the period was already paid (a double charge to refund)} for the
        jobs whose fence held."""
        ...

    async def record_decline(
        self, job: ClaimedJob, reason: str, decline_code: str | None, decision: DeclineDecision
    ) -> bool:
        """The job failed (declined); the account follows ``decision``. False: fenced out."""
        ...

    async def record_retry(self, job: ClaimedJob, reason: str) -> bool:
        """The job waits for its retry copy (state retrying). False: fenced out."""
        ...

    async def record_already_paid(self, job: ClaimedJob, reason: str) -> bool:
        """The gate found the period paid: the job ends without charging. False: fenced out."""
        ...

    async def record_refund(self, job: ClaimedJob, refund_id: str) -> bool:
        """Commit the gateway's refund for a claimed refund job: refund row, credit note, job
        succeeded. False: fenced out. Raises ``ActionRefused`` when the charge's refunds would
        pass the charge."""
        ...

    async def record_dead(self, job_id: int, attempts: int | None, reason: str) -> bool:
        """The job is dead (``attempts`` None: no fence, e.g. before any claim). False: it
        had already finished, or was fenced out."""
        ...
