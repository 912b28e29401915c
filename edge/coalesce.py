"""Request coalescing: concurrent misses for one key make one upstream request.

The first request for a key becomes the leader and runs the fetch; later ones
wait on its future, bounded in number (`max_waiters`, beyond which they get
an error instead of queueing without limit) and in time (`timeout`). The
leader's task is owned here, shielded from any single waiter's cancellation:
one impatient client must not cancel the fetch that a thousand others wait
for. Errors are shared with every waiter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from edge.errors import EdgeError

T = TypeVar("T")


class TooManyWaiters(EdgeError):
    """More requests wait on one miss than allowed: shed this one (503)."""


class Coalescer(Generic[T]):
    def __init__(self, *, max_waiters: int, timeout: float) -> None:
        self._flights: dict[Hashable, tuple[asyncio.Task[T], list[int]]] = {}
        self._max_waiters = max_waiters
        self._timeout = timeout
        self.leaders = 0
        self.coalesced = 0

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: object) -> bool:
        return key in self._flights

    async def run(self, key: Hashable, fetch: Callable[[], Awaitable[T]]) -> T:
        """The result of `fetch()` for `key`, shared with every concurrent caller.

        Raises TooManyWaiters, TimeoutError (this caller waited `timeout`), or
        whatever the fetch raised.
        """
        flight = self._flights.get(key)
        if flight is None:
            task = asyncio.ensure_future(fetch())
            flight = (task, [0])
            self._flights[key] = flight
            task.add_done_callback(lambda _: self._flights.pop(key, None))
            self.leaders += 1
        else:
            if flight[1][0] >= self._max_waiters:
                raise TooManyWaiters(f"{flight[1][0]} requests already wait for this resource")
            self.coalesced += 1
        task, waiters = flight
        waiters[0] += 1
        try:
            async with asyncio.timeout(self._timeout):
                return await asyncio.shield(task)
        finally:
            waiters[0] -= 1

    async def drain(self) -> None:
        """Wait for every fetch in flight (graceful shutdown)."""
        tasks = [task for task, _ in self._flights.values()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
