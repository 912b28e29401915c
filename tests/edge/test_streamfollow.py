"""edge.streamfollow against a real redis-server, with entries XADDed in the publisher's format.

Each test follows its own stream (a fresh source name) on the session's Redis.
Waits are bounded polls of a condition; nothing asserts on wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import redis.asyncio as redis_asyncio

from edge.errors import PeerError
from edge.service import feed_reader_id
from edge.streamfollow import (
    GroupLag,
    StreamFollower,
    StreamOptions,
    group_name,
    judge,
    lag_problem,
    parse_entry,
    parse_stream_id,
    stream_key,
)
from origin.changefeed import Position
from tests.support.edgepop import MakePop, Reply, Scripted, fetch, until
from tests.support.servers import RedisServer

# Short blocks and backoff so that the tests move quickly.
FAST = StreamOptions(block=0.2, socket_margin=1.0, connect_timeout=0.5, backoff_initial=0.02, backoff_max=0.1,
                     max_outage=None, lag_interval=0.05)  # fmt: skip
HLC = "0001764000000000-0000-test"


def change(
    pos: str, item_id: str, version: int, patch: dict[str, Any] | None = None, op: str = "upsert"
) -> dict[str, str]:
    return {"pos": pos, "item_id": item_id, "version": str(version), "hlc": HLC, "op": op,
            "patch": json.dumps(patch if patch is not None else {"available": version})}  # fmt: skip


def reset_marker(pos: str) -> dict[str, str]:
    return {"pos": pos, "item_id": "", "version": "0", "hlc": HLC, "op": "reset", "patch": "{}"}


@dataclass
class Recorder:
    changes: list[tuple[str, int]] = field(default_factory=list)
    patches: list[dict[str, Any]] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)
    fail_next_change: bool = False

    def on_change(self, item_id: str, version: int, patch: dict[str, Any]) -> None:
        if self.fail_next_change:
            self.fail_next_change = False
            raise RuntimeError("the POP's eviction broke")
        self.changes.append((item_id, version))
        self.patches.append(patch)

    def on_reset(self, reason: str) -> None:
        self.resets.append(reason)


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[redis_asyncio.Redis]:
    client = redis_asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def source() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


async def publish(client: redis_asyncio.Redis, source: str, *entries: dict[str, str]) -> None:
    """XADD the entries as the publisher does: MAXLEN ~ N, one transaction with the checkpoint."""
    async with client.pipeline(transaction=True) as pipe:
        for fields in entries:
            pipe.xadd(stream_key(source), fields, maxlen=100_000, approximate=True)  # type: ignore[arg-type]
        pipe.set(f"{stream_key(source)}:checkpoint", entries[-1]["pos"])
        await pipe.execute()


@contextlib.asynccontextmanager
async def running(follower: StreamFollower) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(follower.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# The pure core ------------------------------------------------------------------------


def test_entries_parse_and_bad_ones_are_refused() -> None:
    entry = parse_entry("1-0", change("e1:7", "itm-000001-01", 3, {"available": 2}))
    assert entry.pos == Position("e1", 7) and entry.item_id == "itm-000001-01" and entry.version == 3
    assert entry.patch == {"available": 2} and entry.hlc_wall == 1764000000.0 and not entry.is_reset
    marker = parse_entry("2-0", reset_marker("e2:1"))
    assert marker.is_reset and marker.pos == Position("e2", 1)
    for fields, complaint in (
        ({}, "no fields"),
        ({**change("e1:1", "i", 1), "pos": "nope"}, "pos"),
        ({**change("e1:1", "i", 1), "item_id": ""}, "item_id"),
        ({**change("e1:1", "i", 1), "version": "-1"}, "version"),
        ({**change("e1:1", "i", 1), "patch": "[1]"}, "not an object"),
        ({**change("e1:1", "i", 1), "patch": "{"}, "not JSON"),
        ({k: v for k, v in change("e1:1", "i", 1).items() if k != "op"}, "no op"),
    ):
        with pytest.raises(PeerError) as caught:
            parse_entry("3-0", fields)
        assert complaint in caught.value.message


def test_verdicts_follow_the_rules() -> None:
    def entry(pos: str) -> Any:
        return parse_entry("1-0", change(pos, "i", 1))

    assert judge(None, entry("e:5")).apply and judge(None, entry("e:5")).reset is None
    assert judge(Position("e", 4), entry("e:5")) == judge(None, entry("e:5"))
    duplicate = judge(Position("e", 5), entry("e:5"))
    assert not duplicate.apply and duplicate.reset is None
    gap = judge(Position("e", 3), entry("e:5"))
    assert gap.apply and gap.reset is not None and "gap" in gap.reset
    other = judge(Position("e", 9), entry("f:1"))
    assert other.apply and other.reset is not None and "history" in other.reset
    marker = judge(Position("e", 9), parse_entry("1-0", reset_marker("f:1")))
    assert not marker.apply and marker.reset is not None and "re-snapshotted" in marker.reset


def lag(**fields: Any) -> GroupLag:
    base = {"lag": 0, "entries_read": 5, "pending": 0, "last_delivered": (5, 0), "length": 5, "entries_added": 5,
            "first_entry": (1, 0), "last_generated": (5, 0)}  # fmt: skip
    return GroupLag(**{**base, **fields})


def test_lag_problems() -> None:
    assert lag_problem(lag()) is None
    assert lag_problem(lag(lag=3, entries_read=2, last_delivered=(2, 0))) is None
    unknown = lag_problem(lag(lag=None))
    assert unknown is not None and "unknown" in unknown
    # Five added, three trimmed, the group had read none of them.
    trimmed = lag_problem(lag(lag=5, entries_read=0, last_delivered=(0, 0), length=2, first_entry=(4, 0)))
    assert trimmed is not None and "3 entries were trimmed" in trimmed
    # The same trim after the group read the first three: nothing it needed is gone.
    assert lag_problem(lag(lag=2, entries_read=3, last_delivered=(3, 0), length=2, first_entry=(4, 0))) is None
    # A group that never read: Redis estimates its lag from the first entry, which hides the trim.
    hidden = lag(lag=2, entries_read=None, last_delivered=(0, 0), length=2, first_entry=(4, 0))
    assert lag_problem(hidden) is not None
    assert lag_problem(lag(lag=2, entries_read=None, last_delivered=(0, 0), length=2, entries_added=2)) is None
    emptied = lag(lag=0, entries_read=None, last_delivered=(0, 0), length=0, first_entry=None)
    assert lag_problem(emptied) is not None
    assert parse_stream_id("1795650793844-12") == (1795650793844, 12)
    with pytest.raises(PeerError):
        parse_stream_id("12")


# Against Redis --------------------------------------------------------------------------


def make_follower(url: str, source: str, pop: Recorder, options: StreamOptions = FAST) -> StreamFollower:
    return StreamFollower(url, source, "pop-a", pop.on_change, pop.on_reset, options=options, consumer="pop-a:1")


async def test_changes_are_applied_in_order_acknowledged_and_lag_reported(
    redis_server: RedisServer, redis: redis_asyncio.Redis, source: str
) -> None:
    pop = Recorder()
    follower = make_follower(redis_server.url, source, pop)
    async with running(follower):
        await until(lambda: follower.connected and pop.resets == ["start: joined the consumer group"], "joined")
        await publish(redis, source, change("e1:1", "itm-000001-01", 2), change("e1:2", "itm-000001-02", 2),
                      change("e1:3", "itm-000001-01", 3, op="delete"))  # fmt: skip
        await until(lambda: len(pop.changes) == 3, "three changes")
        assert pop.changes == [("itm-000001-01", 2), ("itm-000001-02", 2), ("itm-000001-01", 3)]
        assert pop.patches[0] == {"available": 2}
        await until(lambda: follower.status().entries_read == 3 and follower.lag_entries == 0, "lag read after them")
        assert follower.lag_seconds == 0.0
        groups = await redis.xinfo_groups(stream_key(source))
        assert [(g["name"], g["pending"], g["lag"]) for g in groups] == [(group_name("pop-a"), 0, 0)]  # all acked
        status = follower.status().to_document()
        assert status["position"] == "e1:3" and status["applied"] == 3 and status["resets"] == 1
        assert status["entries_read"] == 3 and status["connected"] is True and status["last_error"] is None


async def test_duplicates_are_skipped_and_gaps_and_new_histories_purge(
    redis_server: RedisServer, redis: redis_asyncio.Redis, source: str
) -> None:
    pop = Recorder()
    follower = make_follower(redis_server.url, source, pop, dataclasses.replace(FAST, start_reset=False))
    async with running(follower):
        await until(lambda: follower.connected, "joined")
        await publish(redis, source, change("e1:1", "a", 1), change("e1:2", "b", 1), change("e1:2", "b", 1),
                      change("e1:5", "c", 1), change("f9:1", "d", 1), change("f9:2", "e", 1))  # fmt: skip
        await until(lambda: len(pop.changes) == 5, "five changes")
        assert pop.changes == [("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1)]  # the duplicate once
        assert len(pop.resets) == 2
        assert "gap in the stream: e1:2 then e1:5" in pop.resets[0]
        assert "history" in pop.resets[1]


async def test_reset_markers_and_unusable_entries_purge(
    redis_server: RedisServer, redis: redis_asyncio.Redis, source: str
) -> None:
    pop = Recorder()
    follower = make_follower(redis_server.url, source, pop, dataclasses.replace(FAST, start_reset=False))
    async with running(follower):
        await until(lambda: follower.connected, "joined")
        await publish(redis, source, change("e1:1", "a", 1), reset_marker("e2:10"), change("e2:11", "b", 1))
        await until(lambda: len(pop.changes) == 2, "two changes")
        assert pop.changes == [("a", 1), ("b", 1)] and len(pop.resets) == 1
        assert "re-snapshotted" in pop.resets[0]  # and no gap reported for e2:11 after the marker at e2:10
        await publish(redis, source, {**change("e2:12", "c", 1), "patch": "{broken"}, change("e2:13", "d", 1))
        await until(lambda: len(pop.changes) == 3, "the change after the broken one")
        assert pop.changes[-1] == ("d", 1) and len(pop.resets) == 2 and "unusable entry" in pop.resets[1]
        await until(lambda: follower.lag_entries == 0, "lag 0")
        assert (await redis.xinfo_groups(stream_key(source)))[0]["pending"] == 0


async def test_a_vanished_stream_purges_and_following_continues(
    redis_server: RedisServer, redis: redis_asyncio.Redis, source: str
) -> None:
    pop = Recorder()
    follower = make_follower(redis_server.url, source, pop, dataclasses.replace(FAST, start_reset=False))
    async with running(follower):
        await until(lambda: follower.connected, "joined")
        await publish(redis, source, change("e1:1", "a", 1))
        await until(lambda: pop.changes == [("a", 1)], "the first change")
        await redis.delete(stream_key(source))  # NOGROUP for the next read
        await until(lambda: len(pop.resets) == 1, "a reset for the vanished group")
        assert "NOGROUP" in pop.resets[0]
        await until(lambda: follower.connected, "joined again")
        # The publisher starts over (a new history): no second reset, as the group restarted at the head.
        await publish(redis, source, change("n1:1", "b", 1))
        await until(lambda: pop.changes == [("a", 1), ("b", 1)], "the change after the reset")
        assert len(pop.resets) == 1


@pytest.mark.parametrize("read_before", [True, False])
async def test_entries_trimmed_before_the_group_read_them_purge_and_reading_resumes_at_the_head(
    redis_server: RedisServer, redis: redis_asyncio.Redis, source: str, read_before: bool
) -> None:
    first = Recorder()
    options = dataclasses.replace(FAST, start_reset=False)
    follower = make_follower(redis_server.url, source, first, options)
    async with running(follower):
        await until(lambda: follower.connected, "joined")
        if read_before:  # the group has read once, so Redis knows exactly how far (entries-read)
            await publish(redis, source, change("e1:0", "item-0", 1))
            await until(lambda: first.changes == [("item-0", 1)], "the first change")
    # While the POP is down: five entries, then a trim that keeps two.
    await publish(redis, source, *(change(f"e1:{n}", f"item-{n}", 1) for n in range(1, 6)))
    await redis.xtrim(stream_key(source), maxlen=2, approximate=False)

    pop = Recorder()
    restarted = make_follower(redis_server.url, source, pop, options)
    async with running(restarted):
        await until(lambda: len(pop.resets) == 1, "a reset for the trimmed entries")
        assert ("3 entries were trimmed" if read_before else "trimmed past the group's position") in pop.resets[0]
        await publish(redis, source, change("e1:6", "item-6", 1))
        await until(lambda: pop.changes == [("item-6", 1)], "the next change, from the head")
        await until(lambda: restarted.lag_entries == 0, "lag 0")
        assert len(pop.resets) == 1  # e1:6 after a restart at the head is no gap


async def test_a_failing_callback_is_retried_from_the_pending_entries(
    redis_server: RedisServer, redis: redis_asyncio.Redis, source: str
) -> None:
    pop = Recorder()
    follower = make_follower(redis_server.url, source, pop, dataclasses.replace(FAST, start_reset=False))
    async with running(follower):
        await until(lambda: follower.connected, "joined")
        pop.fail_next_change = True
        await publish(redis, source, change("e1:1", "a", 1), change("e1:2", "b", 1))
        await until(lambda: len(pop.changes) == 2, "both changes, after a retry")
        assert pop.changes == [("a", 1), ("b", 1)] and pop.resets == []
        assert follower.status().last_error is not None and "on_change failed" in follower.status().last_error
        await until(lambda: follower.lag_entries == 0, "lag 0")
        assert (await redis.xinfo_groups(stream_key(source)))[0]["pending"] == 0


async def test_an_unreachable_redis_backs_off_and_purges_once_per_outage(source: str) -> None:
    with socket.socket() as probe:  # a loopback port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pop = Recorder()
    options = dataclasses.replace(FAST, start_reset=False, max_outage=0.2)
    follower = make_follower(f"redis://127.0.0.1:{port}/0", source, pop, options)
    async with running(follower):
        await until(lambda: follower.status().consecutive_failures >= 5, "retries with backoff")
        await until(lambda: len(pop.resets) == 1, "the outage purge")
        failures = follower.status().consecutive_failures
        await until(lambda: follower.status().consecutive_failures >= failures + 3, "more retries")
        assert len(pop.resets) == 1 and "unreachable" in pop.resets[0]
        assert not follower.connected and follower.lag_seconds is None and follower.last_error is not None


# The POP following Redis --------------------------------------------------------------


async def test_a_pop_following_redis_evicts_changed_items_and_reports_lag(
    redis_server: RedisServer,
    redis: redis_asyncio.Redis,
    source: str,
    upstream: Scripted,
    make_pop: MakePop,
    client: aiohttp.ClientSession,
) -> None:
    doc = {"id": "itm-000001-01", "event_id": "evt-000001", "version": 1}
    upstream.routes["/v1/items/itm-000001-01"] = Reply(headers=[("Cache-Control", "max-age=600")],
                                                       body=json.dumps(doc).encode())  # fmt: skip
    running_pop = await make_pop([upstream.url], follow_feed=True, feed="redis", feed_redis=redis_server.url,
                                 feed_source=source, pop="pop-r")  # fmt: skip
    follower = running_pop.follower
    assert isinstance(follower, StreamFollower)
    await until(lambda: follower.connected and follower.resets == 1, "joined, with the start purge")
    assert (await fetch(client, running_pop, "/v1/items/itm-000001-01")).x_cache == "MISS"
    assert (await fetch(client, running_pop, "/v1/items/itm-000001-01")).x_cache == "HIT"
    assert (await fetch(client, running_pop, "/v1/events/evt-000001")).status == 200
    assert upstream.counts["/v1/events/evt-000001"] == 1

    await publish(redis, source, change("e1:1", "itm-000001-01", 2))
    await until(lambda: follower.applied == 1, "the change applied")
    assert (await fetch(client, running_pop, "/v1/items/itm-000001-01")).x_cache == "MISS"
    assert (await fetch(client, running_pop, "/v1/events/evt-000001")).x_cache == "MISS"  # its event page too
    assert upstream.counts["/v1/items/itm-000001-01"] == 2 and upstream.counts["/v1/events/evt-000001"] == 2

    await publish(redis, source, reset_marker("e2:1"))
    await until(lambda: follower.resets == 2, "the reset marker")
    assert (await fetch(client, running_pop, "/v1/events/evt-000001")).x_cache == "MISS"  # purged
    assert upstream.counts["/v1/events/evt-000001"] == 3

    await until(lambda: follower.lag_entries == 0, "lag 0")
    health = json.loads((await fetch(client, running_pop, "/_edge/health")).body)
    assert health["feed"]["kind"] == "redis" and health["feed"]["lag_entries"] == 0
    assert health["feed"]["group"] == f"pop:{feed_reader_id('pop-r', 1, 0)}" and health["feed"]["resets"] == 2
    metrics = (await fetch(client, running_pop, "/metrics")).body.decode()
    assert "edge_feed_lag_entries 0" in metrics and "edge_feed_resets_total 2" in metrics
