"""Review tests of the Redis Streams publisher: what a broken upstream or a bad setting must not do.

A real Redis (the session's redis-server) and a scripted upstream on loopback;
waits are bounded polls, nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from ops.settings import Seconds, SettingsError
from origin.streams import PublisherSettings, StreamPublisher, checkpoint_key, stream_key
from tests.support.servers import RedisServer

MakeServer = Callable[..., Awaitable[TestServer]]
WAIT_BOUND = 15.0  # generous: a loaded CI machine, never a figure we measure
# Deeper than the interpreter's recursion limit: json.loads raises RecursionError, not ValueError.
TOO_DEEP = "[" * 100_000 + "]" * 100_000


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT_BOUND
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_BOUND:.0f} s: {what}")
        await asyncio.sleep(0.02)


def settings_for(upstream: str, redis_url: str, source: str) -> PublisherSettings:
    return PublisherSettings(upstream=upstream, redis=redis_url, source=source, long_poll_wait=Seconds(1.0),
                             request_margin=Seconds(2.0), connect_timeout=Seconds(1.0), redis_timeout=Seconds(1.0),
                             backoff_initial=Seconds(0.02), backoff_max=Seconds(0.2), port=0)  # fmt: skip


@pytest.fixture
def source() -> str:
    return f"review-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Any]:
    client = redis_asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


def change(seq: int, item_id: str, version: int) -> dict[str, Any]:
    return {"pos": f"ep1:{seq}", "item_id": item_id, "version": version, "hlc": f"h{seq}", "op": "upsert",
            "patch": {"available": seq}}  # fmt: skip


async def test_a_too_deeply_nested_answer_is_an_upstream_failure_not_the_end_of_the_publisher(
    aiohttp_server: MakeServer, redis_server: RedisServer, redis: Any, source: str
) -> None:
    answers: list[tuple[int, str | dict[str, Any]]] = [
        (200, TOO_DEEP),  # a 200 whose body nests too deep
        (503, TOO_DEEP),  # an error answer whose body nests too deep (its message is read too)
        (200, {"changes": [change(1, "a", 2)], "next": "ep1:1", "head": "ep1:1"}),
    ]

    async def snapshot(request: web.Request) -> web.Response:
        return web.json_response({"position": "ep1:0", "items": [], "next_after": None})

    async def changes(request: web.Request) -> web.Response:
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
    publisher = StreamPublisher(settings_for(str(upstream.make_url("")).rstrip("/"), redis_server.url, source))
    task = asyncio.create_task(publisher.run())
    try:

        async def published() -> bool:
            assert not task.done(), task  # the publisher must outlive any answer
            return bool(await redis.get(checkpoint_key(source)) == "ep1:1")

        await until(published, "the record after the garbage")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert publisher.metrics.failures.value(source, "upstream") == 2
    ops = [fields["op"] for _, fields in await redis.xrange(stream_key(source))]
    assert ops == ["reset", "upsert"]


def test_a_negative_long_poll_wait_is_refused_at_start() -> None:
    settings = settings_for("http://127.0.0.1:8100", "redis://127.0.0.1:6379/0", "origin")
    with pytest.raises(SettingsError, match="long_poll_wait"):
        PublisherSettings(**{**_fields(settings), "long_poll_wait": Seconds(-1.0)}).validate()


def _fields(settings: PublisherSettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in PublisherSettings.__dataclass_fields__}
