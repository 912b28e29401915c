"""Review regressions for edge.streamfollow: entries a peer wrote must not stop the follower.

Every test runs a real redis-server (the session fixture) and writes entries
with a separate binary-safe client, as any writer of the stream could.
Waits are bounded polls of a condition; nothing asserts on wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from edge.errors import PeerError
from edge.streamfollow import StreamFollower, StreamOptions, parse_entry, stream_key
from tests.support.edgepop import until
from tests.support.servers import RedisServer

FAST = StreamOptions(block=0.2, socket_margin=1.0, connect_timeout=0.5, backoff_initial=0.02, backoff_max=0.1,
                     max_outage=None, lag_interval=0.05)  # fmt: skip
HLC = "0001764000000000-0000-test"
# Deep enough that json.loads gives up with RecursionError (the default limit is 1,000 frames).
DEEP_PATCH = '{"a":' * 5_000 + "1" + "}" * 5_000


@dataclass
class Recorder:
    changes: list[tuple[str, int]] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)

    def on_change(self, item_id: str, version: int, patch: dict[str, Any]) -> None:
        self.changes.append((item_id, version))

    def on_reset(self, reason: str) -> None:
        self.resets.append(reason)


def change(pos: str, item_id: str, version: int, patch: str | bytes = '{"available":1}') -> dict[str, str | bytes]:
    return {"pos": pos, "item_id": item_id, "version": str(version), "hlc": HLC, "op": "upsert", "patch": patch}


@pytest.fixture
async def raw_redis(redis_server: RedisServer) -> AsyncIterator[redis_asyncio.Redis]:
    client = redis_asyncio.Redis.from_url(redis_server.url)  # bytes in, bytes out
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def running(follower: StreamFollower) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(follower.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def follow_through_poison(
    redis_server: RedisServer, raw_redis: redis_asyncio.Redis, poison: dict[str, str | bytes]
) -> Recorder:
    """Publish a good entry, the poison, then a good one; return what the POP was told once the follower got
    past the poison (the follower must still be running then)."""
    source = f"review2-{uuid.uuid4().hex[:12]}"
    pop = Recorder()
    follower = StreamFollower(redis_server.url, source, "pop-r", pop.on_change, pop.on_reset, options=FAST,
                              consumer="pop-r:1")  # fmt: skip
    async with running(follower) as task:
        await until(lambda: follower.connected and len(pop.resets) == 1, "joined")
        for fields in (change("e1:1", "itm-000001-01", 1), poison, change("e1:3", "itm-000001-03", 3)):
            await raw_redis.xadd(stream_key(source), fields)  # type: ignore[arg-type]
        await until(lambda: task.done() or ("itm-000001-03", 3) in pop.changes, "past the poisoned entry")
        assert not task.done(), f"the follower died: {task.exception()!r}"
        return pop


async def test_review2_a_deeply_nested_patch_purges_instead_of_killing_the_follower(
    redis_server: RedisServer, raw_redis: redis_asyncio.Redis
) -> None:
    pop = await follow_through_poison(redis_server, raw_redis, change("e1:2", "itm-000001-02", 2, DEEP_PATCH))
    assert pop.changes == [("itm-000001-01", 1), ("itm-000001-03", 3)]
    assert any("unusable entry" in reason for reason in pop.resets)  # we cannot tell what it changed: purge


async def test_review2_an_entry_that_is_not_utf8_purges_instead_of_killing_the_follower(
    redis_server: RedisServer, raw_redis: redis_asyncio.Redis
) -> None:
    pop = await follow_through_poison(
        redis_server, raw_redis, change("e1:2", "itm-000001-02", 2, b'{"name":"caf\xe9"}')
    )
    assert pop.changes == [("itm-000001-01", 1), ("itm-000001-03", 3)]
    assert any("unusable entry" in reason and "UTF-8" in reason for reason in pop.resets)


def test_review2_parse_entry_refuses_deep_json_and_undecodable_text_with_peer_error() -> None:
    with pytest.raises(PeerError, match="not JSON"):
        parse_entry("1-0", {**change("e1:1", "i", 1), "patch": DEEP_PATCH})  # type: ignore[dict-item]
    # What a binary-unsafe byte becomes when the client decodes with surrogateescape.
    garbled = b'{"name":"caf\xe9"}'.decode("utf-8", "surrogateescape")
    with pytest.raises(PeerError, match="UTF-8"):
        parse_entry("1-0", {**change("e1:1", "i", 1), "patch": garbled})  # type: ignore[dict-item]
    assert parse_entry("2-0", {**change("e1:1", "i", 1), "patch": json.dumps({"n": "café"})}).patch == {"n": "café"}  # type: ignore[dict-item]


async def test_review2_an_hlc_too_large_for_a_float_is_unknown_not_fatal(
    redis_server: RedisServer, raw_redis: redis_asyncio.Redis
) -> None:
    huge = {**change("e1:2", "itm-000001-02", 2), "hlc": "9" * 400 + "-0000-origin"}
    pop = await follow_through_poison(redis_server, raw_redis, huge)
    # The stamp only feeds the lag figure: the change itself applies, in order, with no purge.
    assert pop.changes == [("itm-000001-01", 1), ("itm-000001-02", 2), ("itm-000001-03", 3)]
    assert len(pop.resets) == 1
    assert parse_entry("1-0", huge).hlc_wall is None  # type: ignore[arg-type]


async def test_review2_a_stamp_from_the_future_does_not_freeze_the_lag_at_zero(
    redis_server: RedisServer, raw_redis: redis_asyncio.Redis
) -> None:
    now = [1_800_000_000.0]  # the POP's clock, moved by hand
    changes: list[str] = []

    def on_change(item_id: str, version: int, patch: dict[str, Any]) -> None:
        if item_id == "stuck":
            raise RuntimeError("the POP cannot apply this one")  # the follower retries it for ever
        changes.append(item_id)

    source = f"review2-{uuid.uuid4().hex[:12]}"
    resets: list[str] = []
    follower = StreamFollower(redis_server.url, source, "pop-r", on_change, resets.append, options=FAST,
                              consumer="pop-r:1", physical_time=lambda: now[0])  # fmt: skip
    async with running(follower):
        await until(lambda: follower.connected and len(resets) == 1, "joined")
        # Stamped in 2100 by a publisher whose clock is wrong, then a change the POP keeps failing to apply.
        future = {**change("e1:1", "itm-000001-01", 1), "hlc": "4102444800000-0000-origin"}
        await raw_redis.xadd(stream_key(source), future)  # type: ignore[arg-type]
        await until(lambda: changes == ["itm-000001-01"], "the future-stamped change")
        await raw_redis.xadd(stream_key(source), change("e1:2", "stuck", 2))  # type: ignore[arg-type]
        await until(lambda: follower.last_error is not None, "the stuck change failing")
        now[0] += 600  # ten minutes without applying anything
        lag = follower.status().lag_seconds
        assert lag is not None and lag >= 600, lag
