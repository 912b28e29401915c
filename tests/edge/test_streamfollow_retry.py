"""edge.streamfollow when the POP's callbacks fail: retries back off, and the follower recovers.

A callback that raises is retried like a Redis failure (at-least-once). The
backoff and the outage clock are reset only once a batch was applied: a read
that succeeds just before the callback fails again is no recovery. Before
that rule, each retry waited the first backoff step (about 0.1 s) for ever.

Every test runs a real redis-server (the session fixture). The backoff's
jitter is pinned (``rand`` returns 0), so each delay is exactly half its
ceiling; the tests count attempts and read the delays the follower chose,
never a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from edge.streamfollow import StreamFollower, StreamOptions, stream_key
from tests.support.edgepop import until
from tests.support.servers import RedisServer

# Backoff from 0.02 s doubling to 1 s: four failures wait 0.01 + 0.02 + 0.04 + 0.08 s.
RETRY = StreamOptions(block=0.2, socket_margin=1.0, connect_timeout=0.5, backoff_initial=0.02, backoff_max=1.0,
                      max_outage=None, lag_interval=0.05)  # fmt: skip
HLC = "0001764000000000-0000-test"
FAILURES = 4


def change(pos: str, item_id: str, version: int) -> dict[str, str]:
    return {"pos": pos, "item_id": item_id, "version": str(version), "hlc": HLC, "op": "upsert",
            "patch": json.dumps({"available": version})}  # fmt: skip


def reset_marker(pos: str) -> dict[str, str]:
    return {"pos": pos, "item_id": "", "version": "0", "hlc": HLC, "op": "reset", "patch": "{}"}


@dataclass
class FlakyPop:
    """A POP whose callbacks raise the first `failures` times they are called after `armed` is set.

    Every call records the follower's consecutive failures and its current
    retry delay at that moment, so the test can see the backoff between calls.
    """

    follower: StreamFollower | None = None
    fail_changes: int = 0
    fail_resets: int = 0
    changes: list[tuple[str, int]] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)
    change_calls: list[tuple[int, float | None]] = field(default_factory=list)
    reset_calls: list[tuple[int, float | None]] = field(default_factory=list)

    def _seen(self) -> tuple[int, float | None]:
        assert self.follower is not None
        return self.follower.status().consecutive_failures, self.follower.retry_delay

    def on_change(self, item_id: str, version: int, patch: dict[str, Any]) -> None:
        self.change_calls.append(self._seen())
        if self.fail_changes > 0:
            self.fail_changes -= 1
            raise RuntimeError("the POP's eviction broke")
        self.changes.append((item_id, version))

    def on_reset(self, reason: str) -> None:
        self.reset_calls.append(self._seen())
        if self.fail_resets > 0:
            self.fail_resets -= 1
            raise RuntimeError("the POP's purge broke")
        self.resets.append(reason)


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[redis_asyncio.Redis]:
    client = redis_asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def publish(client: redis_asyncio.Redis, source: str, *entries: dict[str, str]) -> None:
    """XADD the entries in one transaction, so that one read returns them all."""
    async with client.pipeline(transaction=True) as pipe:
        for fields in entries:
            pipe.xadd(stream_key(source), fields)  # type: ignore[arg-type]
        await pipe.execute()


@contextlib.asynccontextmanager
async def following(
    redis_server: RedisServer, options: StreamOptions = RETRY
) -> AsyncIterator[tuple[StreamFollower, FlakyPop, str, asyncio.Task[None]]]:
    source = f"retry-{uuid.uuid4().hex[:12]}"
    pop = FlakyPop()
    follower = StreamFollower(redis_server.url, source, "pop-r", pop.on_change, pop.on_reset, options=options,
                              consumer="pop-r:1", rand=lambda: 0.0)  # fmt: skip
    pop.follower = follower
    task = asyncio.create_task(follower.run())
    try:
        await until(lambda: task.done() or (follower.connected and len(pop.resets) == 1), "joined")
        assert not task.done(), f"the follower died: {task.exception()!r}"
        yield follower, pop, source, task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def assert_backoff_grew(calls: list[tuple[int, float | None]]) -> None:
    """One call per attempt: each after one more failure, and after a longer wait than the one before."""
    failures = [count for count, _ in calls]
    assert failures == list(range(len(calls))), calls
    delays = [delay for _, delay in calls[1:] if delay is not None]
    assert len(delays) == len(calls) - 1, calls  # a delay before every retry
    assert all(later > earlier for earlier, later in itertools.pairwise(delays)), calls


async def test_a_failing_on_change_backs_off_then_everything_applies(
    redis_server: RedisServer, redis: redis_asyncio.Redis
) -> None:
    async with following(redis_server) as (follower, pop, source, task):
        pop.fail_changes = FAILURES
        await publish(redis, source, change("e1:1", "a", 1), change("e1:2", "b", 1), change("e1:3", "c", 1))
        await until(lambda: task.done() or len(pop.changes) == 3, "every change applied after the failures")
        assert not task.done()
        # The first entry is attempted once per failure and once more; the others once each.
        assert len(pop.change_calls) == FAILURES + 3
        assert_backoff_grew(pop.change_calls[: FAILURES + 1])
        assert pop.changes == [("a", 1), ("b", 1), ("c", 1)]  # in order, nothing skipped, nothing twice
        await until(lambda: follower.status().consecutive_failures == 0, "recovered once the batch applied")
        assert follower.retry_delay is None and follower.position == "e1:3"
        assert len(pop.resets) == 1  # only the start purge: a failing callback is not an outage (max_outage None)
        pending = (await redis.xinfo_groups(stream_key(source)))[0]["pending"]
        assert pending == 0  # every entry acknowledged in the end


async def test_a_failing_on_reset_backs_off_then_purges_and_applies(
    redis_server: RedisServer, redis: redis_asyncio.Redis
) -> None:
    async with following(redis_server) as (follower, pop, source, task):
        pop.fail_resets = FAILURES
        await publish(redis, source, change("e1:1", "a", 1), reset_marker("e2:1"), change("e2:2", "b", 1))
        await until(lambda: task.done() or pop.changes == [("a", 1), ("b", 1)], "the changes around the marker")
        assert not task.done()
        # The start purge, then the marker's purge: failed FAILURES times, then done (perhaps once more when the
        # marker is read again from our pending entries: a purge is never skipped, repeating one is harmless).
        assert len(pop.resets) in (2, 3) and all("re-snapshotted" in reason for reason in pop.resets[1:])
        assert_backoff_grew(pop.reset_calls[1 : FAILURES + 2])
        await until(lambda: follower.status().consecutive_failures == 0, "recovered once the batch applied")
        assert follower.retry_delay is None and follower.position == "e2:2"


async def test_a_callback_that_never_succeeds_counts_as_an_outage(
    redis_server: RedisServer, redis: redis_asyncio.Redis
) -> None:
    # The outage clock is no longer restarted by each successful read: a POP that cannot apply anything is
    # as blind as one that cannot reach Redis, and is purged once max_outage has passed.
    options = StreamOptions(block=0.2, socket_margin=1.0, connect_timeout=0.5, backoff_initial=0.02,
                            backoff_max=0.1, max_outage=0.3, lag_interval=0.05)  # fmt: skip
    async with following(redis_server, options) as (follower, pop, source, task):
        pop.fail_changes = 1_000_000
        await publish(redis, source, change("e1:1", "stuck", 1))
        await until(lambda: task.done() or len(pop.resets) == 2, "the outage purge")
        assert not task.done()
        assert "unreachable" in pop.resets[1] and "on_change" in pop.resets[1]
        assert pop.changes == [] and follower.status().consecutive_failures >= 2
