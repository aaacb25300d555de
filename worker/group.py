"""Group commit by a short time window: callers submit one item each and await their own
result, while the items that arrive together share one database round trip.

Each delivery moves on its own (no batch waits for its slowest charge), yet a busy worker
still commits many charges per transaction: whatever is ready when the window closes goes
in one statement. A window that fills up (``max_size``) leaves at once.

At most one commit is in flight. Items that arrive while it runs wait for it and go in the
next, bigger commit as soon as it returns: under load a worker sends fewer, larger
transactions instead of a new one every window, and its commits never contend with each
other for the same rows' locks (the invoice counter, hot accounts) or for connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """``await submit(item)`` → this item's result from one ``run(items)`` call.

    ``run`` returns one result per item, in order; if it raises, every submitter of that
    group gets the exception (the group is one transaction: none of it landed). Calls of
    ``run`` never overlap.
    """

    def __init__(
        self,
        run: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        window_s: float,
        max_size: int,
    ) -> None:
        self._run = run
        self._window_s = window_s
        self._max_size = max_size
        self._items: list[T] = []
        self._waiters: list[asyncio.Future[R]] = []
        self._timer: asyncio.TimerHandle | None = None
        # The one commit in flight; our own task, so a caller cancelled meanwhile does not
        # cancel its group's commit.
        self._committing: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[R] = loop.create_future()
        self._items.append(item)
        self._waiters.append(waiter)
        if self._committing is None:
            if len(self._items) >= self._max_size:
                self._flush()
            elif self._timer is None:
                self._timer = loop.call_later(self._window_s, self._flush)
        # else: the commit in flight starts the next group when it returns.
        return await waiter

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._committing is not None or not self._items:
            return
        size = self._max_size
        items, waiters = self._items[:size], self._waiters[:size]
        self._items, self._waiters = self._items[size:], self._waiters[size:]
        self._committing = asyncio.get_running_loop().create_task(self._commit(items, waiters))

    async def _commit(self, items: list[T], waiters: list[asyncio.Future[R]]) -> None:
        try:
            results = await self._run(items)
        except Exception as exc:
            for w in waiters:
                if not w.done():
                    w.set_exception(exc)
        else:
            for w, result in zip(waiters, results, strict=True):
                if not w.done():
                    w.set_result(result)
        finally:
            for w in waiters:  # cancelled mid-commit (shutdown): nobody waits forever
                if not w.done():
                    w.cancel()
            self._committing = None
            # Whatever waited meanwhile has waited at least one window: it goes now.
            self._flush()
