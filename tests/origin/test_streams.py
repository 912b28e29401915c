"""origin.streams: the Redis Streams publisher against a real Redis and a real origin on loopback.

The origin is the real aiohttp application over a SQLite store seeded with the
tiny catalog; holds through its HTTP API make the changes. Redis is the
session's redis-server (each test its own source name, so its own keys), or a
private one where a test changes server settings. A Redis outage is a real TCP
proxy that stops forwarding. Waits are bounded polls; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as redis_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from ops.backoff import Backoff
from ops.settings import Seconds, SettingsError, load
from origin.changefeed import Position
from origin.hlc import HybridClock
from origin.http import Origin, create_app
from origin.ledger import Ledger
from origin.settings import OriginSettings
from origin.store.base import Store
from origin.store.sqlite import SQLiteStore
from origin.streams import (
    OP_RESET,
    ChangesAnswer,
    PublisherSettings,
    StreamPublisher,
    UpstreamFeedError,
    checkpoint_key,
    group_lag,
    main,
    parse_changes,
    plan_batch,
    status_app,
    stream_key,
)
from tests.origin.conftest import START, tiny_catalog
from tests.support.servers import RedisServer, free_loopback_port, start_redis

MakeServer = Callable[..., Awaitable[TestServer]]
Entry = tuple[str, dict[str, str]]

WAIT_BOUND = 15.0  # generous: a loaded CI machine, never a figure we measure
REPO = Path(__file__).resolve().parents[2]


async def until(condition: Callable[[], Awaitable[bool]], what: str, bound: float = WAIT_BOUND) -> None:
    deadline = time.monotonic() + bound
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {bound:.0f} s: {what}")
        await asyncio.sleep(0.02)


def fast_settings(upstream: str, redis_url: str, source: str, **overrides: Any) -> PublisherSettings:
    settings = PublisherSettings(upstream=upstream, redis=redis_url, source=source, long_poll_wait=Seconds(1.0),
                                 request_margin=Seconds(2.0), connect_timeout=Seconds(1.0),
                                 redis_timeout=Seconds(1.0), backoff_initial=Seconds(0.02),
                                 backoff_max=Seconds(0.2), port=0)  # fmt: skip
    return replace(settings, **overrides)


@contextlib.asynccontextmanager
async def running(publisher: StreamPublisher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(publisher.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def source() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Any]:
    client = redis_asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def open_store(path: Path) -> Store:
    store = SQLiteStore(path)
    await store.open()
    venues, events, items = tiny_catalog()
    await store.load_catalog(venues, events, items, START)
    return store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(tmp_path / "origin.db")
    try:
        yield opened
    finally:
        await opened.close()


async def start_origin(store: Store, aiohttp_server: MakeServer, port: int | None = None) -> TestServer:
    settings = OriginSettings(feed_max_wait=Seconds(5.0))
    ledger = Ledger(store, HybridClock("test", time.time), time.time, settings.ledger_limits())
    app = create_app(Origin(settings, store, ledger, time.time), background=False)
    # A short shutdown grace: stopping the server must not wait for the publisher's long-poll.
    return await aiohttp_server(app, port=port, shutdown_timeout=0.1)


def base_url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def hold(server: TestServer, item_id: str, qty: int = 1) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.make_url("/v1/holds"), json={"item_id": item_id, "qty": qty, "user_id": "u1"}) as resp,
    ):
        assert resp.status == 201, await resp.text()


async def entries(redis: Any, source: str) -> list[Entry]:
    return [(entry_id, fields) for entry_id, fields in await redis.xrange(stream_key(source))]


async def head_of(store: Store) -> str:
    return (await store.feed_bounds()).head_position.encode()


def at_checkpoint(redis: Any, source: str, position: Callable[[], Awaitable[str]]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(await redis.get(checkpoint_key(source)) == await position())

    return check


def records_of(stream: list[Entry]) -> list[tuple[str, str]]:
    return [(fields["item_id"], fields["version"]) for _, fields in stream if fields["op"] != OP_RESET]


def assert_gapless(stream: list[Entry]) -> None:
    """Each entry continues from the one before: records one sequence number on, markers anywhere."""
    previous: Position | None = None
    for _, fields in stream:
        position = Position.parse(fields["pos"])
        if fields["op"] != OP_RESET and previous is not None:
            assert position == Position(previous.epoch, previous.seq + 1), fields
        previous = position


# With the real origin ------------------------------------------------------


async def test_records_appear_in_order_with_the_contract_fields(
    store: Store, aiohttp_server: MakeServer, redis_server: RedisServer, redis: Any, source: str
) -> None:
    server = await start_origin(store, aiohttp_server)
    start_head = await head_of(store)
    publisher = StreamPublisher(fast_settings(base_url(server), redis_server.url, source))
    async with running(publisher):
        await until(at_checkpoint(redis, source, lambda: head_of(store)), "the start marker")
        await hold(server, "itm-1-ga", 2)
        await hold(server, "itm-1-s", 1)
        await hold(server, "itm-2-ga", 3)
        await until(at_checkpoint(redis, source, lambda: head_of(store)), "three changes published")
    stream = await entries(redis, source)
    assert [fields["op"] for _, fields in stream] == [OP_RESET, "upsert", "upsert", "upsert"]
    marker = stream[0][1]
    assert marker == {"pos": start_head, "item_id": "", "version": "0", "hlc": "", "op": "reset", "patch": "{}"}
    assert records_of(stream) == [("itm-1-ga", "2"), ("itm-1-s", "2"), ("itm-2-ga", "2")]
    assert_gapless(stream)
    first = stream[1][1]
    assert set(first) == {"pos", "item_id", "version", "hlc", "op", "patch"}
    assert json.loads(first["patch"])["available"] == 8 and first["hlc"]
    assert json.loads(stream[2][1]["patch"])["available_seats"] == ["2", "3", "4", "5", "6"]
    assert await redis.get(checkpoint_key(source)) == stream[-1][1]["pos"]
    rendered = publisher.metrics.registry.render()
    assert f'publisher_records_published_total{{source="{source}"}} 3' in rendered
    assert f'publisher_resets_total{{source="{source}",reason="start"}} 1' in rendered
    assert f'publisher_stream_length{{source="{source}"}} 4' in rendered


async def test_restart_resumes_from_the_checkpoint_without_duplicates(
    store: Store, aiohttp_server: MakeServer, redis_server: RedisServer, redis: Any, source: str
) -> None:
    server = await start_origin(store, aiohttp_server)
    settings = fast_settings(base_url(server), redis_server.url, source)
    observations: list[tuple[str | None, str | None]] = []

    async def observe() -> None:
        # The checkpoint and the newest entry, read in one transaction: they must always agree.
        while True:
            async with redis.pipeline(transaction=True) as pipe:
                checkpoint, newest = await pipe.get(checkpoint_key(source)).xrevrange(
                    stream_key(source), count=1).execute()  # fmt: skip
            observations.append((checkpoint, newest[0][1]["pos"] if newest else None))
            await asyncio.sleep(0.005)

    observer = asyncio.create_task(observe())
    try:
        async with running(StreamPublisher(settings)):
            await until(at_checkpoint(redis, source, lambda: head_of(store)), "the start marker")
            for _ in range(4):
                await hold(server, "itm-2-ga")
            await until(at_checkpoint(redis, source, lambda: head_of(store)), "four changes published")
        for item_id in ("itm-1-ga", "itm-1-s", "itm-2-ga"):  # while no publisher runs
            await hold(server, item_id)
        restarted = StreamPublisher(settings)
        async with running(restarted):
            await until(at_checkpoint(redis, source, lambda: head_of(store)), "the changes made while stopped")
            await hold(server, "itm-1-ga")
            await until(at_checkpoint(redis, source, lambda: head_of(store)), "a change after the restart")
    finally:
        observer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await observer
    stream = await entries(redis, source)
    assert [fields["op"] for _, fields in stream].count(OP_RESET) == 1  # the first start only
    assert records_of(stream) == [("itm-2-ga", str(v)) for v in (2, 3, 4, 5)] + [
        ("itm-1-ga", "2"), ("itm-1-s", "2"), ("itm-2-ga", "6"), ("itm-1-ga", "3")]  # fmt: skip
    assert_gapless(stream)
    seen = [pair for pair in observations if pair != (None, None)]
    assert seen and all(checkpoint == newest for checkpoint, newest in seen)


async def test_two_publishers_of_one_source_never_publish_twice(
    store: Store, aiohttp_server: MakeServer, redis_server: RedisServer, redis: Any, source: str
) -> None:
    server = await start_origin(store, aiohttp_server)
    settings = fast_settings(base_url(server), redis_server.url, source)
    first, second = StreamPublisher(settings), StreamPublisher(settings)
    async with running(first), running(second):
        await until(at_checkpoint(redis, source, lambda: head_of(store)), "the start marker")
        for round_ in range(6):
            await hold(server, "itm-2-ga" if round_ % 2 else "itm-1-ga")
        await until(at_checkpoint(redis, source, lambda: head_of(store)), "six changes published")
        await until(lambda: _both_at(first, second, redis, source), "both publishers at the checkpoint")
    stream = await entries(redis, source)
    assert [fields["op"] for _, fields in stream].count(OP_RESET) == 1
    assert records_of(stream) == [("itm-1-ga", "2"), ("itm-2-ga", "2"), ("itm-1-ga", "3"), ("itm-2-ga", "3"),
                                  ("itm-1-ga", "4"), ("itm-2-ga", "4")]  # fmt: skip
    assert_gapless(stream)


async def _both_at(first: StreamPublisher, second: StreamPublisher, redis: Any, source: str) -> bool:
    checkpoint = await redis.get(checkpoint_key(source))
    return bool(first.position == checkpoint and second.position == checkpoint)


async def test_maxlen_trims_the_stream(store: Store, aiohttp_server: MakeServer, tmp_path: Path, source: str) -> None:
    # `MAXLEN ~` trims whole radix-tree nodes (100 entries by default); a private
    # server with 5-entry nodes shows the trim with a few dozen changes.
    private = start_redis(tmp_path / "redis")
    client = redis_asyncio.Redis.from_url(private.url, decode_responses=True)
    try:
        await client.config_set("stream-node-max-entries", 5)
        server = await start_origin(store, aiohttp_server)
        publisher = StreamPublisher(fast_settings(base_url(server), private.url, source, maxlen=10))
        async with running(publisher):
            await until(at_checkpoint(client, source, lambda: head_of(store)), "the start marker")
            for _ in range(30):
                await hold(server, "itm-2-ga")
            await until(at_checkpoint(client, source, lambda: head_of(store)), "thirty changes published")
        length = await client.xlen(stream_key(source))
        stream = await entries(client, source)
        assert 10 <= length < 20 and len(stream) == length
        assert records_of(stream)[-1] == ("itm-2-ga", "31")  # the newest are kept
        assert_gapless(stream)
        assert f'publisher_records_published_total{{source="{source}"}} 30' in publisher.metrics.registry.render()
    finally:
        await client.aclose()
        private.stop()


async def test_a_pruned_position_publishes_a_reset(
    store: Store, aiohttp_server: MakeServer, redis_server: RedisServer, redis: Any, source: str
) -> None:
    server = await start_origin(store, aiohttp_server)
    settings = fast_settings(base_url(server), redis_server.url, source)
    async with running(StreamPublisher(settings)):
        await until(at_checkpoint(redis, source, lambda: head_of(store)), "the start marker")
        await hold(server, "itm-1-ga")
        await until(at_checkpoint(redis, source, lambda: head_of(store)), "the first change")
    await hold(server, "itm-1-s")
    await hold(server, "itm-2-ga")
    far_future = datetime.now(UTC) + timedelta(days=1)
    assert await store.prune(keep_changes=0, changes_before=far_future, idempotency_before=START) > 0
    head_after_prune = await head_of(store)
    publisher = StreamPublisher(settings)
    async with running(publisher):
        await until(lambda: _count_resets(redis, source, 2), "a reset marker on 410")
        await hold(server, "itm-1-ga")
        await until(at_checkpoint(redis, source, lambda: head_of(store)), "the change after the reset")
    stream = await entries(redis, source)
    marker = stream[-2][1]
    assert marker["op"] == OP_RESET and marker["pos"] == head_after_prune  # the snapshot position
    assert records_of(stream) == [("itm-1-ga", "2"), ("itm-1-ga", "3")]  # the pruned two are covered by the reset
    assert f'publisher_resets_total{{source="{source}",reason="gone"}} 1' in publisher.metrics.registry.render()


async def test_a_new_upstream_epoch_publishes_a_reset(
    store: Store, aiohttp_server: MakeServer, redis_server: RedisServer, redis: Any, source: str, tmp_path: Path
) -> None:
    server = await start_origin(store, aiohttp_server)
    port = server.port
    publisher = StreamPublisher(fast_settings(base_url(server), redis_server.url, source))
    async with running(publisher):
        await until(at_checkpoint(redis, source, lambda: head_of(store)), "the start marker")
        await hold(server, "itm-1-ga")
        await until(at_checkpoint(redis, source, lambda: head_of(store)), "the first change")
        await server.close()
        # The upstream comes back on the same address with another database: another history.
        restored = await open_store(tmp_path / "restored.db")
        try:
            assert restored.epoch != store.epoch
            fresh_head = await head_of(restored)
            again = await start_origin(restored, aiohttp_server, port=port)
            await until(at_checkpoint(redis, source, lambda: head_of(restored)), "a position in the new history")
            await hold(again, "itm-1-s")
            await until(at_checkpoint(redis, source, lambda: head_of(restored)), "a change of the new history")
        finally:
            await restored.close()
    stream = await entries(redis, source)
    assert [fields["op"] for _, fields in stream] == [OP_RESET, "upsert", OP_RESET, "upsert"]
    assert stream[2][1]["pos"] == fresh_head
    assert_gapless(stream)
    assert stream[3][1]["pos"].startswith(restored.epoch) and stream[3][1]["item_id"] == "itm-1-s"


async def _count_resets(redis: Any, source: str, count: int) -> bool:
    return [fields["op"] for _, fields in await entries(redis, source)].count(OP_RESET) >= count


async def test_every_consumer_group_gets_every_record_and_lag_is_reported(
    store: Store, aiohttp_server: MakeServer, redis_server: RedisServer, redis: Any, source: str
) -> None:
    key = stream_key(source)
    assert await group_lag(redis, source) == {}  # no stream yet
    for group in ("pop:a", "pop:b", "pop:idle"):
        await redis.xgroup_create(key, group, "$", mkstream=True)
    server = await start_origin(store, aiohttp_server)
    publisher = StreamPublisher(fast_settings(base_url(server), redis_server.url, source))
    async with running(publisher):
        await until(at_checkpoint(redis, source, lambda: head_of(store)), "the start marker")
        for item_id in ("itm-1-ga", "itm-1-s", "itm-2-ga", "itm-1-ga"):
            await hold(server, item_id)
        await until(at_checkpoint(redis, source, lambda: head_of(store)), "four changes published")
        read: dict[str, list[Entry]] = {}
        for group in ("pop:a", "pop:b"):
            answer = await redis.xreadgroup(group, f"{group}:{os.getpid()}", {key: ">"}, count=100, block=100)
            read[group] = answer[0][1]
            await redis.xack(key, group, *(entry_id for entry_id, _ in read[group]))
        assert read["pop:a"] == read["pop:b"] == await entries(redis, source)
        assert records_of(read["pop:a"]) == [("itm-1-ga", "2"), ("itm-1-s", "2"), ("itm-2-ga", "2"),
                                             ("itm-1-ga", "3")]  # fmt: skip
        await hold(server, "itm-2-ga")
        await until(at_checkpoint(redis, source, lambda: head_of(store)), "one more change")
        assert await group_lag(redis, source) == {"pop:a": 1, "pop:b": 1, "pop:idle": 6}
        assert await publisher.refresh_group_lag() == {"pop:a": 1, "pop:b": 1, "pop:idle": 6}
    rendered = publisher.metrics.registry.render()
    assert f'publisher_group_lag_entries{{source="{source}",group="pop:idle"}} 6' in rendered


async def test_status_endpoints_report_checkpoint_and_group_lag(
    store: Store, aiohttp_server: MakeServer, redis_server: RedisServer, redis: Any, source: str
) -> None:
    await redis.xgroup_create(stream_key(source), "pop:x", "$", mkstream=True)
    server = await start_origin(store, aiohttp_server)
    publisher = StreamPublisher(fast_settings(base_url(server), redis_server.url, source))
    status = await aiohttp_server(status_app(publisher))
    async with running(publisher), aiohttp.ClientSession() as session:
        await until(at_checkpoint(redis, source, lambda: head_of(store)), "the start marker")
        async with session.get(status.make_url("/v1/health")) as resp:
            doc = await resp.json()
            assert resp.status == 200
        assert doc["checkpoint"] == await head_of(store) and doc["groups"] == {"pop:x": 1}
        assert doc["stream"] == stream_key(source) and doc["consecutive_failures"] == 0
        async with session.get(status.make_url("/metrics")) as resp:
            text = await resp.text()
        assert f'publisher_group_lag_entries{{source="{source}",group="pop:x"}} 1' in text


# Outages -------------------------------------------------------------------


class TcpProxy:
    """Forwards loopback TCP to a target until cut: a Redis outage the client cannot tell from a real one."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_loopback_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers.difference_update((writer, up_writer))
            writer.close()
            up_writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        writer.close()


async def test_a_redis_outage_backs_off_and_resumes_without_loss(
    store: Store, aiohttp_server: MakeServer, redis_server: RedisServer, redis: Any, source: str
) -> None:
    proxy = TcpProxy(redis_server.port)
    await proxy.start()
    server = await start_origin(store, aiohttp_server)
    publisher = StreamPublisher(fast_settings(base_url(server), proxy.url, source))
    try:
        async with running(publisher):
            await until(at_checkpoint(redis, source, lambda: head_of(store)), "the start marker")
            await hold(server, "itm-1-ga")
            await until(at_checkpoint(redis, source, lambda: head_of(store)), "the first change")
            await proxy.cut()
            for item_id in ("itm-1-s", "itm-2-ga", "itm-1-ga"):
                await hold(server, item_id)
            await until(lambda: _failures_at_least(publisher, 3), "retries with backoff during the outage")
            assert publisher.last_error is not None and publisher.last_error.startswith("redis")
            await proxy.start()
            await until(at_checkpoint(redis, source, lambda: head_of(store)), "the changes made during the outage")
            await until(lambda: _failures_at_least(publisher, 0, exactly=True), "recovered")
    finally:
        with contextlib.suppress(AssertionError):
            await proxy.cut()
    stream = await entries(redis, source)
    assert [fields["op"] for _, fields in stream].count(OP_RESET) == 1  # resumed, not restarted
    assert records_of(stream) == [("itm-1-ga", "2"), ("itm-1-s", "2"), ("itm-2-ga", "2"), ("itm-1-ga", "3")]
    assert_gapless(stream)
    assert publisher.metrics.failures.value(source, "redis") >= 3


async def _failures_at_least(publisher: StreamPublisher, count: int, *, exactly: bool = False) -> bool:
    return publisher.failures == count if exactly else publisher.failures >= count


# A scripted upstream: broken feeds the real origin never produces -----------


def change(seq: int, item_id: str, version: int) -> dict[str, Any]:
    return {"pos": f"ep1:{seq}", "item_id": item_id, "version": version, "hlc": "0001764000000000-00000-o",
            "op": "upsert", "patch": {"available": version}}  # fmt: skip


async def test_garbage_and_gaps_from_the_upstream(
    aiohttp_server: MakeServer, redis_server: RedisServer, redis: Any, source: str
) -> None:
    answers: list[tuple[int, Any]] = [
        (500, {"error": {"status": 500, "code": "internal_error", "message": "boom"}}),
        (200, "{not json"),
        (200, {"changes": [{"pos": "ep1:1", "item_id": "a"}], "next": "ep1:1", "head": "ep1:1"}),
        (200, {"changes": [change(1, "a", 2), change(2, "b", 2)], "next": "ep1:2", "head": "ep1:3"}),
        # Record 3 is missing: a marker sits where it was, then 4 and 5.
        (200, {"changes": [change(4, "c", 2), change(5, "a", 3)], "next": "ep1:5", "head": "ep1:6"}),
        # A duplicate of 5 (at-least-once), then 6.
        (200, {"changes": [change(5, "a", 3), change(6, "b", 3)], "next": "ep1:6", "head": "ep1:6"}),
    ]
    requests: list[str] = []

    async def snapshot(request: web.Request) -> web.Response:
        return web.json_response({"position": "ep1:0", "items": [], "next_after": None})

    async def changes(request: web.Request) -> web.Response:
        requests.append(request.query["since"])
        if answers:
            status, body = answers.pop(0)
            if isinstance(body, str):
                return web.Response(status=status, text=body, content_type="application/json")
            return web.json_response(body, status=status)
        await asyncio.sleep(0.05)
        return web.json_response({"changes": [], "next": request.query["since"], "head": request.query["since"]})

    app = web.Application()
    app.router.add_get("/v1/snapshot", snapshot)
    app.router.add_get("/v1/changes", changes)
    upstream = await aiohttp_server(app, shutdown_timeout=0.1)
    publisher = StreamPublisher(fast_settings(base_url(upstream), redis_server.url, source))
    async with running(publisher):
        await until(lambda: _checkpoint_is(redis, source, "ep1:6"), "the head of the script")
    stream = await entries(redis, source)
    assert [(fields["op"], fields["pos"], fields["item_id"]) for _, fields in stream] == [
        ("reset", "ep1:0", ""), ("upsert", "ep1:1", "a"), ("upsert", "ep1:2", "b"), ("reset", "ep1:3", ""),
        ("upsert", "ep1:4", "c"), ("upsert", "ep1:5", "a"), ("upsert", "ep1:6", "b")]  # fmt: skip
    assert requests[:3] == ["ep1:0", "ep1:0", "ep1:0"]  # no progress past errors
    assert publisher.metrics.failures.value(source, "upstream") == 3
    assert publisher.metrics.resets.value(source, "gap") == 1


async def test_an_upstream_that_is_always_gone_is_backed_off(
    aiohttp_server: MakeServer, redis_server: RedisServer, redis: Any, source: str
) -> None:
    async def snapshot(request: web.Request) -> web.Response:
        return web.json_response({"position": "ep1:0", "items": [], "next_after": None})

    async def changes(request: web.Request) -> web.Response:
        return web.json_response({"error": {"status": 410, "code": "position_gone", "message": "gone"}}, status=410)

    app = web.Application()
    app.router.add_get("/v1/snapshot", snapshot)
    app.router.add_get("/v1/changes", changes)
    upstream = await aiohttp_server(app, shutdown_timeout=0.1)
    publisher = StreamPublisher(fast_settings(base_url(upstream), redis_server.url, source))
    async with running(publisher):
        await until(lambda: _failures_at_least(publisher, 3), "a broken upstream counted as failing")
        failures = publisher.failures
        markers = [fields["op"] for _, fields in await entries(redis, source)].count(OP_RESET)
    # One marker at start, one for the first 410, then one per backed-off retry: never a flood.
    assert failures + 1 <= markers <= failures + 3
    assert publisher.last_error is not None and "gone" in publisher.last_error


async def _checkpoint_is(redis: Any, source: str, position: str) -> bool:
    return bool(await redis.get(checkpoint_key(source)) == position)


# The pure part ---------------------------------------------------------------


def test_plan_drops_duplicates_and_marks_gaps() -> None:
    since = Position("ep1", 2)
    answer = parse_changes({"changes": [change(1, "a", 2), change(3, "b", 2), change(6, "c", 2)], "next": "ep1:8",
                            "head": "ep1:9"})  # fmt: skip
    plan = plan_batch(since, answer)
    assert [(fields["op"], fields["pos"]) for fields in plan.entries] == [
        ("upsert", "ep1:3"), ("reset", "ep1:5"), ("upsert", "ep1:6"), ("reset", "ep1:8")]  # fmt: skip
    assert plan.position == Position("ep1", 8) and plan.records == 2 and plan.gaps == 2
    assert plan_batch(since, ChangesAnswer([], since, since)).entries == []


def test_plan_refuses_other_histories_and_contradictions() -> None:
    from origin.errors import PositionGone

    with pytest.raises(PositionGone):
        plan_batch(Position("ep1", 0), parse_changes({"changes": [], "next": "ep2:0", "head": "ep2:4"}))
    with pytest.raises(UpstreamFeedError):
        plan_batch(Position("ep1", 0), parse_changes({"changes": [change(1, "a", 2)], "next": "ep1:0",
                                                      "head": "ep1:1"}))  # fmt: skip


@pytest.mark.parametrize(
    "doc",
    [
        None,
        {"changes": {}},
        {"changes": [], "next": 5, "head": "e:1"},
        {"changes": [{**change(1, "a", 2), "op": "reset"}], "next": "ep1:1", "head": "ep1:1"},
        {"changes": [{**change(1, "a", 2), "version": True}], "next": "ep1:1", "head": "ep1:1"},
        {"changes": [{**change(1, "a", 2), "patch": []}], "next": "ep1:1", "head": "ep1:1"},
        {"changes": [{**change(1, "a", 2), "hlc": None}], "next": "ep1:1", "head": "ep1:1"},
        {"changes": [{**change(1, "a", 2), "pos": "ep1:-1"}], "next": "ep1:1", "head": "ep1:1"},
    ],
)
def test_answers_out_of_contract_are_upstream_errors(doc: Any) -> None:
    with pytest.raises(UpstreamFeedError):
        parse_changes(doc)


def test_keys_and_settings_name_what_is_wrong() -> None:
    assert stream_key("shard-eu_1") == "boxoffice:changes:shard-eu_1"
    assert checkpoint_key("origin") == "boxoffice:changes:origin:checkpoint"
    for bad in ("", "a:b", "a*", "é", "x" * 65):
        with pytest.raises(ValueError, match="letters"):
            stream_key(bad)
    with pytest.raises(SettingsError, match=r"publisher\.upstream"):
        load(PublisherSettings, "publisher", environ={})
    env = {"BOXOFFICE_PUBLISHER_UPSTREAM": "http://127.0.0.1:8100", "BOXOFFICE_PUBLISHER_SOURCE": "a:b"}
    with pytest.raises(SettingsError, match=r"publisher\.source"):
        load(PublisherSettings, "publisher", environ=env)
    with pytest.raises(SettingsError, match=r"publisher\.maxlen"):
        load(
            PublisherSettings,
            "publisher",
            environ={**env, "BOXOFFICE_PUBLISHER_SOURCE": "o", "BOXOFFICE_PUBLISHER_MAXLEN": "0"},
        )
    settings = load(PublisherSettings, "publisher", environ={**env, "BOXOFFICE_PUBLISHER_SOURCE": "shard-1"})
    assert settings.maxlen == 100_000 and settings.source == "shard-1"


def test_main_refuses_a_bad_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--upstream", "ftp://x", "--source", "origin"], prog="boxoffice origin publish") == 2
    assert "publisher.upstream" in capsys.readouterr().err


def test_backoff_stays_within_its_bounds() -> None:
    lowest = Backoff(0.1, 5.0, lambda: 0.0)
    assert [lowest.next_delay() for _ in range(8)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.5, 2.5])
    highest = Backoff(0.1, 5.0, lambda: 0.999999)
    assert max(highest.next_delay() for _ in range(200)) <= 5.0


# The command -----------------------------------------------------------------


async def test_publish_command_runs_and_stops_on_sigterm(
    store: Store, aiohttp_server: MakeServer, redis_server: RedisServer, redis: Any, source: str
) -> None:
    server = await start_origin(store, aiohttp_server)
    await hold(server, "itm-1-ga")
    code = "import sys; from origin.streams import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "--upstream", base_url(server), "--redis", redis_server.url,
            "--source", source, "--maxlen", "1000", "--port", "0", "--long-poll-wait", "1s"]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        await until(at_checkpoint(redis, source, lambda: head_of(store)), "the command's start marker")
        await hold(server, "itm-1-s")
        await until(at_checkpoint(redis, source, lambda: head_of(store)), "a change published by the command")
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), WAIT_BOUND)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    assert b"boxoffice:changes:" + source.encode() in out
    assert records_of(await entries(redis, source)) == [("itm-1-s", "2")]
