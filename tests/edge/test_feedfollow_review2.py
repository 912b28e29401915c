"""Review regression for edge.feedfollow: an upstream's answer must never stop the HTTP follower.

The upstream is a real aiohttp server on loopback with scripted answers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from edge.feedfollow import FeedFollower, FollowOptions, parse_batch
from tests.support.edgepop import until

MakeServer = Callable[..., Awaitable[TestServer]]
FAST = FollowOptions(long_poll_wait=0.2, request_margin=1.0, connect_timeout=0.5, backoff_initial=0.02,
                     backoff_max=0.1, max_outage=None)  # fmt: skip
# Valid JSON nested past the parser's recursion limit (1,000 frames by default).
DEEP = '{"position":' + "[" * 5_000 + "]" * 5_000 + "}"


@dataclass
class Upstream:
    snapshots: list[tuple[int, str]]  # the next /v1/snapshot answers (status, body); then a good one
    changes_seen: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/snapshot", self.snapshot)
        app.router.add_get("/v1/changes", self.changes)
        return app

    async def snapshot(self, request: web.Request) -> web.Response:
        if self.snapshots:
            status, body = self.snapshots.pop(0)
            return web.Response(status=status, text=body, content_type="application/json")
        return web.json_response({"position": "ep1:0", "items": [], "next_after": None})

    async def changes(self, request: web.Request) -> web.Response:
        since = request.query["since"]
        self.changes_seen.append(since)
        if len(self.changes_seen) == 1:
            return web.Response(text=DEEP, content_type="application/json")
        await asyncio.sleep(0.05)
        return web.json_response({"changes": [], "next": since, "head": since})


async def test_review2_deeply_nested_answers_are_failures_not_a_dead_follower(aiohttp_server: MakeServer) -> None:
    upstream = Upstream([(503, DEEP), (200, DEEP)])  # an error whose message is read, then an answer
    server = await aiohttp_server(upstream.app(), shutdown_timeout=0.1)
    resets: list[str] = []

    def on_change(item_id: str, version: int, patch: dict[str, Any]) -> None:
        pass

    follower = FeedFollower(str(server.make_url("")).rstrip("/"), on_change, resets.append, options=FAST)
    task = asyncio.create_task(follower.run())
    try:
        # Two snapshots, then the first poll, answer JSON too deep to parse; each is retried.
        await until(lambda: task.done() or len(upstream.changes_seen) >= 2, "a poll after the deep answers")
        assert not task.done(), f"the follower died: {task.exception()!r}"
        assert follower.position == "ep1:0" and resets[0].startswith("start")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_review2_an_hlc_too_large_for_a_float_is_unknown_not_fatal() -> None:
    # Before the fix, OverflowError escaped parse_batch and ended FeedFollower.run (the POP with it).
    record = {"pos": "ep1:1", "item_id": "a", "version": 2, "hlc": "9" * 400 + "-00000-origin", "op": "upsert",
              "patch": {"available": 2}}  # fmt: skip
    batch = parse_batch({"changes": [record], "next": "ep1:1", "head": "ep1:1"})
    assert batch.records[0].hlc_wall is None
