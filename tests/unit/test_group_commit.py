"""Group commit: items that arrive together share one ``run``, and runs never overlap.

A fake ``run`` that the test releases by hand shows which items each commit carried, so
the rules read as orderings, not timings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from worker.group import GroupCommit

pytestmark = pytest.mark.unit

WINDOW_S = 0.001


class HeldCommits:
    """``run`` that records each group and waits until the test releases it."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.release = asyncio.Event()
        self.fail_next = False

    async def run(self, items: Sequence[int]) -> list[int]:
        self.groups.append(list(items))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.release.wait()
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("commit failed")
            return [i * 10 for i in items]
        finally:
            self.in_flight -= 1


async def _until(predicate: object, *, rounds: int = 1000) -> None:
    for _ in range(rounds):
        if callable(predicate) and predicate():
            return
        await asyncio.sleep(WINDOW_S)
    raise AssertionError("condition never held")


async def test_items_arriving_during_a_commit_wait_and_go_together_in_the_next() -> None:
    held = HeldCommits()
    group: GroupCommit[int, int] = GroupCommit(held.run, window_s=WINDOW_S, max_size=100)
    first = asyncio.create_task(group.submit(1))
    await _until(lambda: held.groups)
    # The first commit is in flight: these windows close without starting another.
    later = [asyncio.create_task(group.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(WINDOW_S * 20)
    assert held.groups == [[1]]
    held.release.set()
    assert await first == 10
    assert await asyncio.gather(*later) == [20, 30, 40]
    assert held.groups == [[1], [2, 3, 4]]
    assert held.most_in_flight == 1


async def test_a_full_group_waits_for_the_commit_in_flight_and_splits_at_max_size() -> None:
    held = HeldCommits()
    group: GroupCommit[int, int] = GroupCommit(held.run, window_s=WINDOW_S, max_size=2)
    submitted = [asyncio.create_task(group.submit(i)) for i in range(5)]
    await _until(lambda: held.groups)
    await asyncio.sleep(WINDOW_S * 20)
    assert held.groups == [[0, 1]]  # full, yet the other items wait for it
    held.release.set()
    assert await asyncio.gather(*submitted) == [0, 10, 20, 30, 40]
    assert held.groups == [[0, 1], [2, 3], [4]]
    assert held.most_in_flight == 1


async def test_a_failed_commit_fails_only_its_own_group() -> None:
    held = HeldCommits()
    group: GroupCommit[int, int] = GroupCommit(held.run, window_s=WINDOW_S, max_size=100)
    held.fail_next = True
    first = asyncio.create_task(group.submit(1))
    await _until(lambda: held.groups)
    second = asyncio.create_task(group.submit(2))
    await asyncio.sleep(WINDOW_S * 5)
    held.release.set()
    with pytest.raises(RuntimeError, match="commit failed"):
        await first
    assert await second == 20
    assert held.groups == [[1], [2]]


async def test_a_cancelled_caller_does_not_cancel_its_groups_commit() -> None:
    held = HeldCommits()
    group: GroupCommit[int, int] = GroupCommit(held.run, window_s=WINDOW_S, max_size=100)
    gone = asyncio.create_task(group.submit(1))
    stays = asyncio.create_task(group.submit(2))
    await _until(lambda: held.groups)
    gone.cancel()
    held.release.set()
    assert await stays == 20
    assert held.groups == [[1, 2]]
