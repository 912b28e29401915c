"""edge.feedfollow when the POP's callbacks fail, and when a stamp comes from the future.

A callback that raises is retried like an upstream failure (at-least-once).
The backoff and the outage clock are reset only once a batch was applied: an
answer that arrives just before the callback fails again is no recovery.
Before that rule, each retry waited the first backoff step for ever.

The upstream is a real aiohttp server on loopback that serves a scripted,
gapless feed. The backoff's jitter is pinned (``rand`` returns 0) and the lag
figure reads a clock the test moves by hand: the tests count attempts and read
the delays the follower chose, never a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from edge.feedfollow import FeedFollower, FollowOptions
from tests.support.edgepop import until

MakeServer = Callable[..., Awaitable[TestServer]]
# Backoff from 0.02 s doubling to 1 s: four failures wait 0.01 + 0.02 + 0.04 + 0.08 s.
RETRY = FollowOptions(long_poll_wait=0.2, request_margin=1.0, connect_timeout=0.5, backoff_initial=0.02,
                      backoff_max=1.0, max_outage=None)  # fmt: skip
FAILURES = 4
NOW = 1_800_000_000.0  # the POP's clock at the start (2027)
STAMP_NOW = f"{int(NOW * 1000):013d}-00000-origin"
STAMP_2100 = "4102444800000-00000-origin"  # a publisher whose clock is 73 years ahead


def record(seq: int, item_id: str, version: int, stamp: str = STAMP_NOW) -> dict[str, Any]:
    return {"pos": f"ep1:{seq}", "item_id": item_id, "version": version, "hlc": stamp, "op": "upsert",
            "patch": {"available": version}}  # fmt: skip


@dataclass
class Feed:
    """A feed at epoch ``ep1`` whose head is its last record: answers every record after `since`.

    With `fail_after` set, the upstream goes down (503) after that many answers to `/v1/changes`, and
    `visible` (when set) hides the records past the first `visible` while the head still names the last.
    """

    records: list[dict[str, Any]]
    visible: int | None = None
    fail_after: int | None = None
    polls: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/snapshot", self.snapshot)
        app.router.add_get("/v1/changes", self.changes)
        return app

    async def snapshot(self, request: web.Request) -> web.Response:
        return web.json_response({"position": "ep1:0", "items": [], "next_after": None})

    async def changes(self, request: web.Request) -> web.Response:
        self.polls.append(request.query["since"])
        if self.fail_after is not None and len(self.polls) > self.fail_after:
            return web.json_response({"error": {"status": 503, "code": "unavailable", "message": "down"}}, status=503)
        since = int(request.query["since"].partition(":")[2])
        after = [one for one in self.records[: self.visible] if int(one["pos"].partition(":")[2]) > since]
        if not after:
            await asyncio.sleep(0.05)  # a short long-poll that runs out
            return web.json_response({"changes": [], "next": f"ep1:{since}", "head": f"ep1:{since}"})
        return web.json_response({"changes": after, "next": after[-1]["pos"], "head": self.records[-1]["pos"]})


@dataclass
class FlakyPop:
    """A POP whose callbacks raise while `fail_changes` / `fail_resets` are above zero, counting down.

    Every call records the follower's consecutive failures and its current
    retry delay at that moment, so the test can see the backoff between calls.
    """

    follower: FeedFollower | None = None
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


@contextlib.asynccontextmanager
async def following(
    feed: Feed, aiohttp_server: MakeServer, pop: FlakyPop, options: FollowOptions = RETRY,
    clock: list[float] | None = None, position: str | None = None,
) -> AsyncIterator[tuple[FeedFollower, asyncio.Task[None]]]:  # fmt: skip
    server = await aiohttp_server(feed.app(), shutdown_timeout=0.1)
    now = clock if clock is not None else [NOW]
    follower = FeedFollower(str(server.make_url("")).rstrip("/"), pop.on_change, pop.on_reset, options=options,
                            position=position, physical_time=lambda: now[0], rand=lambda: 0.0)  # fmt: skip
    pop.follower = follower
    task = asyncio.create_task(follower.run())
    try:
        yield follower, task
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


async def test_a_failing_on_change_backs_off_then_everything_applies(aiohttp_server: MakeServer) -> None:
    feed = Feed([record(1, "a", 2), record(2, "b", 2), record(3, "c", 2)])
    pop = FlakyPop(fail_changes=FAILURES)
    async with following(feed, aiohttp_server, pop) as (follower, task):
        await until(lambda: task.done() or len(pop.changes) == 3, "every change applied after the failures")
        assert not task.done()
        # The first record is attempted once per failure and once more; the others once each.
        assert len(pop.change_calls) == FAILURES + 3
        assert_backoff_grew(pop.change_calls[: FAILURES + 1])
        assert pop.changes == [("a", 2), ("b", 2), ("c", 2)]  # in order, nothing skipped, nothing twice
        assert feed.polls[: FAILURES + 1] == ["ep1:0"] * (FAILURES + 1)  # no progress until the callback works
        await until(lambda: follower.position == "ep1:3" and follower.lag_seconds == 0.0, "at the head")
        assert follower.status().consecutive_failures == 0 and follower.retry_delay is None
        assert len(pop.resets) == 1  # only the start purge: a failing callback is not an outage (max_outage None)


async def test_a_failing_on_reset_backs_off_then_purges_and_applies(aiohttp_server: MakeServer) -> None:
    # Record 2 is missing: the POP must purge before record 3, and that purge fails FAILURES times. Resuming
    # from a position (no start purge) makes the gap's purge the first call of on_reset.
    pop = FlakyPop(fail_resets=FAILURES)
    feed = Feed([record(1, "a", 2), record(3, "c", 2)])
    async with following(feed, aiohttp_server, pop, position="ep1:0") as (follower, task):
        await until(lambda: task.done() or len(pop.changes) == 2, "both changes, the purge done between them")
        assert not task.done()
        assert pop.changes == [("a", 2), ("c", 2)]
        # Purged once the failures were over, and once more when record 3 came again: never skipped.
        assert len(pop.resets) == 2 and all("gap" in reason for reason in pop.resets)
        assert len(pop.reset_calls) == FAILURES + 2
        assert_backoff_grew(pop.reset_calls[: FAILURES + 1])
        await until(lambda: follower.position == "ep1:3" and follower.lag_seconds == 0.0, "at the head")
        assert follower.status().consecutive_failures == 0 and follower.retry_delay is None


async def test_a_callback_that_never_succeeds_counts_as_an_outage(aiohttp_server: MakeServer) -> None:
    # The outage clock is no longer restarted by each answer: a POP that cannot apply anything is as blind
    # as one that cannot reach its upstream, and is purged once max_outage has passed.
    options = FollowOptions(long_poll_wait=0.2, request_margin=1.0, connect_timeout=0.5, backoff_initial=0.02,
                            backoff_max=0.1, max_outage=0.3)  # fmt: skip
    pop = FlakyPop(fail_changes=1_000_000)
    async with following(Feed([record(1, "stuck", 2)]), aiohttp_server, pop, options) as (follower, task):
        await until(lambda: task.done() or len(pop.resets) == 2, "the outage purge")
        assert not task.done()
        assert "unreachable" in pop.resets[1] and "on_change" in pop.resets[1]
        assert pop.changes == [] and follower.status().consecutive_failures >= 2


async def test_a_stamp_from_the_future_does_not_hold_the_lag_at_zero_through_an_outage(
    aiohttp_server: MakeServer,
) -> None:
    # The upstream answers one record, stamped in 2100, with its head further on; then it goes down. Before
    # the fix the stamp became the time up to which every change was applied, so the lag read 0 till 2100.
    clock = [NOW]
    feed = Feed([record(1, "a", 2, STAMP_2100), record(2, "b", 2)], visible=1, fail_after=1)
    pop = FlakyPop()
    async with following(feed, aiohttp_server, pop, clock=clock) as (follower, task):
        await until(lambda: task.done() or pop.changes == [("a", 2)], "the future-stamped change")
        await until(lambda: task.done() or not follower.connected, "the outage noticed")
        assert not task.done()
        clock[0] += 600  # ten minutes with nothing applied
        lag = follower.lag_seconds
        assert lag is not None and lag >= 600, lag
