"""Figures computed once per interval, whoever asks: pages answer from the last result.

A run page counts its jobs by state, sums what was billed and draws its throughput: work
that grows with the run (a 1,000,000-job run takes seconds on a busy database). Every
open run page polls every 1.5 s, and many people may watch. So each figure (keyed
``("run", 7)``, ``"overview"``, ``"metrics"``) is computed by one task at a time
(single flight); a request within ``fresh_s`` of the last result gets it as is, one
within ``stale_s`` gets it at once while a refresh runs behind it, and an older one waits
for the refresh. Actions clear the cache so their effect shows on the next page.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

MAX_ENTRIES = 256


class Cache:
    def __init__(self, fresh_s: float = 1.0, stale_s: float = 30.0) -> None:
        self._fresh_s = fresh_s
        self._stale_s = stale_s
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._inflight: dict[Hashable, asyncio.Task[Any]] = {}

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        hit = self._entries.get(key)
        age = time.monotonic() - hit[0] if hit else None
        if hit is not None and age is not None and age < self._fresh_s:
            return hit[1]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._refresh(key, compute))
            self._inflight[key] = task
        if hit is not None and age is not None and age < self._stale_s:
            return hit[1]
        # shield: a client that goes away does not cancel the refresh others wait for.
        return await asyncio.shield(task)

    async def _refresh(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        try:
            value = await compute()
            self._entries[key] = (time.monotonic(), value)
            self._entries.move_to_end(key)
            while len(self._entries) > MAX_ENTRIES:
                self._entries.popitem(last=False)
            return value
        finally:
            self._inflight.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()
