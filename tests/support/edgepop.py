"""Helpers and fixtures of the edge POP integration tests: a scripted upstream, POPs on loopback.

The scripted upstream (`Scripted`) answers per path as a test sets it and
counts every request that reaches it. `make_pop` builds a POP in-process with
`edge.service.build`, listens on an ephemeral loopback port, and stops it
gracefully at teardown, the way `edge.service.serve` does. tests/edge/conftest.py
makes the fixtures available to the edge tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict, CIMultiDictProxy

from edge.feedfollow import FeedFollower
from edge.hints import HintService
from edge.httpdate import format_http_date
from edge.pop import Pop
from edge.routes import EdgeApp
from edge.server import ServerState
from edge.service import build
from edge.settings import EdgeSettings
from edge.streamfollow import StreamFollower
from edge.upstream import UpstreamPool

MakeServer = Callable[..., Awaitable[TestServer]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

WAIT_BOUND = 10.0  # generous: only a broken POP waits this long
SITE = "www.boxoffice.test"
TOKEN = "purge-secret"


# Scripted upstream ---------------------------------------------------------------


@dataclass
class Reply:
    """One canned upstream answer; `gate`, when set, is awaited (bounded) before answering."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    delay: float = 0.0
    gate: asyncio.Event | None = None


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: CIMultiDictProxy[str]


@dataclass
class Scripted:
    """A loopback upstream answering per path; paths without a script get a cacheable 200."""

    routes: dict[str, Reply | Handler] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    seen: list[Seen] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.counts[request.path_qs] += 1
        self.seen.append(Seen(request.method, request.path_qs, CIMultiDictProxy(CIMultiDict(request.headers))))
        route = self.routes.get(request.path)
        if route is None:
            route = Reply(headers=[("Cache-Control", "max-age=600")], body=f"body of {request.path_qs}".encode())
        if not isinstance(route, Reply):
            return await route(request)
        if route.gate is not None:
            await asyncio.wait_for(route.gate.wait(), WAIT_BOUND)
        if route.delay:
            await asyncio.sleep(route.delay)
        return web.Response(status=route.status, headers=CIMultiDict(route.headers), body=route.body)


@pytest.fixture
async def make_upstream(aiohttp_server: MakeServer) -> Callable[[], Awaitable[Scripted]]:
    async def make() -> Scripted:
        scripted = Scripted()
        scripted.server = await aiohttp_server(scripted.app(), shutdown_timeout=0.1)
        return scripted

    return make


@pytest.fixture
async def upstream(make_upstream: Callable[[], Awaitable[Scripted]]) -> Scripted:
    return await make_upstream()


# The POP -------------------------------------------------------------------------


@dataclass
class Clock:
    """The POP's wall clock: real time plus a skew the test may grow (never shrink)."""

    skew: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.skew


@dataclass
class RunningPop:
    app: EdgeApp
    state: ServerState
    pool: UpstreamPool
    follower: FeedFollower | StreamFollower | None
    server: asyncio.Server
    port: int
    clock: Clock

    @property
    def pop(self) -> Pop:
        return self.app.pop

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


MakePop = Callable[..., Awaitable[RunningPop]]


@pytest.fixture
async def make_pop(aiohttp_server: MakeServer) -> AsyncIterator[MakePop]:
    """POPs on ephemeral loopback ports, all stopped (gracefully) at teardown."""
    stack = contextlib.AsyncExitStack()

    async def make(upstreams: list[str], **overrides: Any) -> RunningPop:
        options: dict[str, Any] = {"site": SITE, "follow_feed": False, "purge_token": TOKEN, "port": 1}
        options.update(overrides)
        settings = dataclasses.replace(EdgeSettings(), upstreams=tuple(upstreams), **options)
        settings.validate()
        app, state, pool, follower = build(settings)
        clock = Clock()
        app.pop.clock = clock
        await pool.start()
        stack.push_async_callback(pool.close)
        if app.pop.l2 is not None:
            await app.pop.l2.start()
            stack.push_async_callback(app.pop.l2.close)
        if settings.user_secret and settings.predictor:
            session = aiohttp.ClientSession()
            stack.push_async_callback(session.close)
            app.hints = HintService(session, settings.predictor)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(state.protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        if follower is not None:
            task = asyncio.create_task(follower.run())
            stack.push_async_callback(_cancel, task)
        if app.shardmap is not None:
            stack.push_async_callback(_cancel, asyncio.create_task(app.shardmap.run()))

        async def stop() -> None:
            server.close()
            state.close_idle()
            await state.wait_closed(1)
            await app.pop.drain()
            await server.wait_closed()

        stack.push_async_callback(stop)
        return RunningPop(app, state, pool, follower, server, port, clock)

    async with stack:
        yield make


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # No cookie jar (cookies are set per request), no connection cap (the flash-crowd test).
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=WAIT_BOUND),
    ) as session:
        yield session


@dataclass
class Got:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def x_cache(self) -> str | None:
        return self.headers.get("X-Cache")

    @property
    def age(self) -> int:
        return int(self.headers["Age"])


async def fetch(
    client: aiohttp.ClientSession, running: RunningPop, path: str, method: str = "GET", **kwargs: Any
) -> Got:
    async with client.request(method, running.url(path), **kwargs) as resp:
        return Got(resp.status, resp.headers, await resp.read())


async def until(condition: Callable[[], bool], what: str, bound: float = WAIT_BOUND) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {bound:.0f} s: {what}")
        await asyncio.sleep(0.01)


def cacheable(max_age: int = 600, *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("Cache-Control", f"max-age={max_age}"), *extra]


def date_ago(seconds: float) -> tuple[str, str]:
    return ("Date", format_http_date(time.time() - seconds))
