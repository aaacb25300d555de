"""The advisory lock ids billq takes: distinct where they must be, shared where that is the point."""

from __future__ import annotations

import pytest

from shared.db import runs_repo
from shared.db.migrations import MIGRATION_LOCK_ID

pytestmark = pytest.mark.unit


def test_run_creation_waits_for_migrations() -> None:
    # A run created mid-migration could see half a schema; previous releases use this id too.
    assert runs_repo.RUN_CREATE_LOCK_ID == MIGRATION_LOCK_ID


def test_distribute_and_shard_locks_do_not_collide_with_run_creation() -> None:
    shard_locks = {runs_repo.DISTRIBUTE_LOCK_ID + 1 + k for k in range(64)}
    assert runs_repo.DISTRIBUTE_LOCK_ID not in shard_locks
    assert runs_repo.RUN_CREATE_LOCK_ID not in shard_locks | {runs_repo.DISTRIBUTE_LOCK_ID}
