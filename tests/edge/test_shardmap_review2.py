"""Review regressions for edge.shardmap: a metadata service's answer must never stop the poller.

The metadata service is a real aiohttp server on loopback serving scripted bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edge.settings import EdgeSettings
from edge.shardmap import ShardMapPoller
from ops.settings import Seconds, SettingsError
from tests.support.edgepop import until

MakeServer = Callable[..., Awaitable[TestServer]]

GOOD: dict[str, Any] = {
    "version": 3,
    "origin": {"url": "http://127.0.0.1:8100"},
    "shards": {"eu-west-1": {"region": "eu-west", "url": "http://127.0.0.1:8110", "events": ["evt-000001"]}},
    "events": {"evt-000001": {"eu-west": ["eu-west-1", "origin"]}},
}
# Valid JSON nested past the parser's recursion limit (1,000 frames by default), 30 KB in all.
DEEP = b'{"version":' + b"[" * 5_000 + b"]" * 5_000 + b"}"


async def serve_bodies(aiohttp_server: MakeServer, bodies: list[bytes]) -> str:
    """A metadata service answering the next body of `bodies` (the last one for ever)."""

    async def handle(request: web.Request) -> web.Response:
        body = bodies.pop(0) if len(bodies) > 1 else bodies[0]
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/shardmap", handle)
    server = await aiohttp_server(app, shutdown_timeout=0.1)
    return str(server.make_url("/v1/shardmap"))


async def test_review2_a_deeply_nested_document_is_rejected_and_the_last_good_map_kept(
    aiohttp_server: MakeServer,
) -> None:
    url = await serve_bodies(aiohttp_server, [json.dumps(GOOD).encode(), DEEP])
    poller = ShardMapPoller(url, interval=0.01)
    async with aiohttp.ClientSession() as session:
        assert await poller.refresh(session) is True
        assert await poller.refresh(session) is False  # raised RecursionError before the fix
    assert poller.rejected == 1 and poller.current is not None and poller.current.version == 3
    assert poller.last_error is not None and "not JSON" in poller.last_error


async def test_review2_the_polling_task_survives_a_deeply_nested_document(aiohttp_server: MakeServer) -> None:
    url = await serve_bodies(aiohttp_server, [DEEP, DEEP, json.dumps(GOOD).encode()])
    poller = ShardMapPoller(url, interval=0.01)
    task = asyncio.create_task(poller.run())
    try:
        await until(lambda: task.done() or poller.current is not None, "a map after two bad documents")
        assert not task.done(), f"the poller died: {task.exception()!r}"
        assert poller.rejected == 2 and poller.current is not None and poller.current.version == 3
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("name", ["shardmap_interval", "feed_max_outage", "feed_wait"])
def test_review2_an_infinite_interval_is_a_settings_error_naming_the_key(name: str) -> None:
    # A TOML file can say `inf`; before the fix it passed validate() and build() died with a bare ValueError.
    settings = dataclasses.replace(EdgeSettings(), **{name: Seconds(math.inf)})  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match=rf"edge\.{name}"):
        settings.validate()
