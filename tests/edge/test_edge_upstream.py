"""The upstream pool against real scripted aiohttp servers on loopback.

Each scripted upstream counts the requests that reach it, so failover, the
POST rule and the breakers are checked by what the upstreams saw, not by
timing. Breaker periods run on an injected monotonic clock; real time only
bounds read timeouts and deadlines, and no test asserts on how long anything took.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edge.breaker import BreakerConfig
from edge.errors import InternalError
from edge.messages import Headers
from edge.upstream import (
    Outcome,
    UpstreamConfig,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTooLarge,
    UpstreamUnavailable,
    strip_hop_by_hop,
)

MakeServer = Callable[[web.Application], Awaitable[TestServer]]

# Generous bounds for waits that only a broken test would reach.
EVENT_WAIT = 10.0
# Short enough that timeout tests finish quickly, long enough that a loopback
# answer never trips it.
SHORT_TIMEOUT = 0.3
FAR = 3600.0  # a deadline no test reaches


@dataclass
class Received:
    method: str
    path_qs: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Scripted:
    """A loopback upstream whose answer the test sets; it records every request.

    mode: "normal" (status, body, extra headers), "slow" (waits for `release`
    first), "stream" (chunked, no Content-Length) or "echo" (the request as JSON).
    """

    status: int = 200
    body: bytes = b"hello"
    mode: str = "normal"
    extra_headers: list[tuple[str, str]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    @property
    def count(self) -> int:
        return len(self.received)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        raw = [(name.decode(), value.decode()) for name, value in request.raw_headers]
        self.received.append(Received(request.method, request.path_qs, raw, body))
        if self.mode == "slow":
            await asyncio.wait_for(self.release.wait(), EVENT_WAIT)
        if self.mode == "echo":
            return web.json_response({"headers": raw, "body": body.decode()})
        if self.mode == "stream":
            stream = web.StreamResponse(status=self.status)
            for name, value in self.extra_headers:
                stream.headers.add(name, value)
            stream.enable_chunked_encoding()
            await stream.prepare(request)
            for start in range(0, len(self.body), 100):
                await stream.write(self.body[start : start + 100])
            await stream.write_eof()
            return stream
        response = web.Response(status=self.status, body=self.body)
        for name, value in self.extra_headers:
            response.headers.add(name, value)
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


MakeUpstream = Callable[..., Awaitable[Scripted]]


@pytest.fixture
async def upstream(aiohttp_server: MakeServer) -> AsyncIterator[MakeUpstream]:
    """make(**fields) → a started Scripted upstream; slow handlers are released at teardown."""
    made: list[Scripted] = []

    async def make(**fields: object) -> Scripted:
        scripted = Scripted(**fields)  # type: ignore[arg-type]
        server = await aiohttp_server(scripted.app())
        scripted.url = str(server.make_url("")).rstrip("/")
        made.append(scripted)
        return scripted

    try:
        yield make
    finally:
        for scripted in made:
            scripted.release.set()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback URL that refuses connections: bound (so nobody else takes it) but not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


class FakeMonotonic:
    """A monotonic clock the test advances by hand (breaker periods, deadlines)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Observed:
    attempts: list[tuple[str, Outcome]] = field(default_factory=list)

    def __call__(self, target: str, seconds: float, outcome: Outcome) -> None:
        assert seconds >= 0
        self.attempts.append((target, outcome))


MakePool = Callable[..., Awaitable[UpstreamPool]]


def config(**overrides: object) -> UpstreamConfig:
    base = UpstreamConfig(connect_timeout=EVENT_WAIT, read_timeout=EVENT_WAIT, total_timeout=EVENT_WAIT)
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    pools: list[UpstreamPool] = []

    async def make(upstream_config: UpstreamConfig | None = None, **kwargs: object) -> UpstreamPool:
        pool = UpstreamPool(upstream_config or config(), **kwargs)  # type: ignore[arg-type]
        await pool.start()
        pools.append(pool)
        return pool

    try:
        yield make
    finally:
        for pool in pools:
            await pool.close()


async def get(
    pool: UpstreamPool,
    targets: list[str],
    *,
    method: str = "GET",
    body: bytes | None = None,
    deadline: float | None = None,
) -> UpstreamResponse:
    """Fetch /v1/items/7?x=1 with no header fields; the deadline defaults to an hour from now."""
    if deadline is None:
        deadline = time.monotonic() + FAR
    return await pool.fetch(targets, method, "/v1/items/7?x=1", Headers(), body, deadline=deadline)


# ---------------------------------------------------------------- failover


async def test_failover_on_connection_refused(upstream: MakeUpstream, make_pool: MakePool, refused_url: str) -> None:
    good = await upstream()
    observed = Observed()
    pool = await make_pool(on_latency=observed)
    response = await get(pool, [refused_url, good.url])
    assert (response.status, response.body, response.target) == (200, b"hello", good.url)
    assert good.received[0].path_qs == "/v1/items/7?x=1"
    assert observed.attempts == [(refused_url, Outcome.CONNECT_ERROR), (good.url, Outcome.OK)]
    health = pool.snapshot()
    assert health[refused_url].consecutive_failures == 1
    assert health[refused_url].last_error is not None
    assert health[good.url].state == "closed"
    assert health[good.url].ewma_latency is not None


async def test_failover_on_read_timeout(upstream: MakeUpstream, make_pool: MakePool) -> None:
    slow, good = await upstream(mode="slow"), await upstream()
    observed = Observed()
    pool = await make_pool(config(read_timeout=SHORT_TIMEOUT), on_latency=observed)
    response = await get(pool, [slow.url, good.url])
    assert response.target == good.url
    assert (slow.count, good.count) == (1, 1)
    assert observed.attempts == [(slow.url, Outcome.TIMEOUT), (good.url, Outcome.OK)]


async def test_failover_on_5xx_and_the_last_5xx_is_kept(upstream: MakeUpstream, make_pool: MakePool) -> None:
    failing, good = await upstream(status=503, body=b"busy"), await upstream()
    pool = await make_pool()
    response = await get(pool, [failing.url, good.url])
    assert (response.status, response.target) == (200, good.url)
    assert (failing.count, good.count) == (1, 1)

    other = await upstream(status=500, body=b"broken")
    with pytest.raises(UpstreamUnavailable) as caught:
        await get(pool, [failing.url, other.url])
    relayed = caught.value.response
    assert relayed is not None
    assert (relayed.status, relayed.body, relayed.target) == (500, b"broken", other.url)
    assert caught.value.last_error.outcome is Outcome.SERVER_ERROR


async def test_head_fails_over_like_get(upstream: MakeUpstream, make_pool: MakePool) -> None:
    failing, good = await upstream(status=502), await upstream(body=b"12345")
    pool = await make_pool()
    response = await get(pool, [failing.url, good.url], method="HEAD")
    assert (response.status, response.body) == (200, b"")
    assert response.headers.first("Content-Length") == "5"
    assert [r.method for r in failing.received + good.received] == ["HEAD", "HEAD"]


# ---------------------------------------------------------------- POST is sent at most once


async def test_post_5xx_is_returned_not_resent(upstream: MakeUpstream, make_pool: MakePool) -> None:
    failing, second = await upstream(status=503), await upstream()
    pool = await make_pool()
    response = await get(pool, [failing.url, second.url], method="POST", body=b'{"qty":1}')
    assert (response.status, response.target) == (503, failing.url)
    assert (failing.count, second.count) == (1, 0)
    assert pool.snapshot()[failing.url].consecutive_failures == 1


async def test_post_that_timed_out_after_sending_is_not_resent(upstream: MakeUpstream, make_pool: MakePool) -> None:
    slow, second = await upstream(mode="slow"), await upstream()
    pool = await make_pool(config(read_timeout=SHORT_TIMEOUT))
    with pytest.raises(UpstreamUnavailable) as caught:
        await get(pool, [slow.url, second.url], method="POST", body=b'{"qty":1}')
    assert (slow.count, second.count) == (1, 0)
    assert caught.value.last_error.outcome is Outcome.TIMEOUT
    assert caught.value.last_error.may_have_reached_upstream
    assert caught.value.response is None


async def test_post_fails_over_when_the_connection_was_refused(
    upstream: MakeUpstream, make_pool: MakePool, refused_url: str
) -> None:
    second = await upstream(mode="echo")
    pool = await make_pool()
    response = await get(pool, [refused_url, second.url], method="POST", body=b'{"qty":1}')
    assert (response.status, response.target) == (200, second.url)
    assert second.received[0].body == b'{"qty":1}'
    assert ("Content-Length", "9") in second.received[0].headers


# ---------------------------------------------------------------- breakers


async def test_breaker_opens_skips_the_dead_target_then_tries_it_half_open(
    upstream: MakeUpstream, make_pool: MakePool
) -> None:
    flaky, good = await upstream(status=503), await upstream()
    clock = FakeMonotonic()
    breaker = BreakerConfig(failure_threshold=2, open_for=10.0, max_open_for=40.0)
    pool = await make_pool(config(breaker=breaker), monotonic=clock)
    targets = [flaky.url, good.url]

    for _ in range(2):
        assert (await get(pool, targets, deadline=clock.now + FAR)).target == good.url
    assert flaky.count == 2
    assert pool.snapshot()[flaky.url].state == "open"
    assert pool.snapshot()[flaky.url].retry_in == 10.0

    # Open: skipped without a request, however many come.
    for _ in range(5):
        assert (await get(pool, targets, deadline=clock.now + FAR)).target == good.url
    assert (flaky.count, good.count) == (2, 7)

    # After open_for, one trial; it fails, so the period doubles.
    clock.now += 10.0
    assert (await get(pool, targets, deadline=clock.now + FAR)).target == good.url
    assert flaky.count == 3
    assert pool.snapshot()[flaky.url].retry_in == 20.0
    clock.now += 19.0
    await get(pool, targets, deadline=clock.now + FAR)
    assert flaky.count == 3

    # The upstream recovers; the next trial succeeds and closes the breaker.
    flaky.status = 200
    clock.now += 1.0
    assert (await get(pool, targets, deadline=clock.now + FAR)).target == flaky.url
    assert flaky.count == 4
    health = pool.snapshot()[flaky.url]
    assert (health.state, health.consecutive_failures, health.retry_in) == ("closed", 0, None)
    assert health.last_error == "status 503"


async def test_every_breaker_open_still_tries_the_primary(upstream: MakeUpstream, make_pool: MakePool) -> None:
    shard, primary = await upstream(status=503), await upstream(status=503)
    clock = FakeMonotonic()
    pool = await make_pool(config(breaker=BreakerConfig(failure_threshold=1, open_for=10.0)), monotonic=clock)
    targets = [shard.url, primary.url]
    with pytest.raises(UpstreamUnavailable):
        await get(pool, targets, deadline=clock.now + FAR)
    assert {health.state for health in pool.snapshot().values()} == {"open"}

    primary.status = 200
    response = await get(pool, targets, deadline=clock.now + FAR)
    assert (response.status, response.target) == (200, primary.url)
    assert (shard.count, primary.count) == (1, 2)


# ---------------------------------------------------------------- limits


async def test_body_cap(upstream: MakeUpstream, make_pool: MakePool) -> None:
    cap = 1000
    exact = await upstream(body=b"x" * cap)
    declared = await upstream(body=b"x" * (cap + 1))
    streamed = await upstream(body=b"x" * (cap + 1), mode="stream")
    spare = await upstream()
    observed = Observed()
    pool = await make_pool(config(max_body=cap), on_latency=observed)

    assert (await get(pool, [exact.url])).body == b"x" * cap
    for too_big in (declared, streamed):
        with pytest.raises(UpstreamTooLarge):
            await get(pool, [too_big.url, spare.url])
        # No failover, and a healthy upstream's breaker is not charged for it.
        assert spare.count == 0
        assert pool.snapshot()[too_big.url].consecutive_failures == 0
    assert [outcome for _, outcome in observed.attempts] == [Outcome.OK, Outcome.TOO_LARGE, Outcome.TOO_LARGE]


async def test_deadline_cuts_the_chain(upstream: MakeUpstream, make_pool: MakePool) -> None:
    slow, second = await upstream(mode="slow"), await upstream()
    pool = await make_pool()  # read timeout EVENT_WAIT: only the deadline can end the wait
    with pytest.raises(UpstreamUnavailable) as caught:
        await get(pool, [slow.url, second.url], deadline=time.monotonic() + SHORT_TIMEOUT)
    assert caught.value.last_error.outcome is Outcome.TIMEOUT
    assert "deadline" in caught.value.last_error.message
    assert (slow.count, second.count) == (1, 0)

    with pytest.raises(UpstreamUnavailable) as caught:
        await get(pool, [second.url], deadline=time.monotonic() - 1.0)
    assert caught.value.last_error.target is None
    assert second.count == 0


# ---------------------------------------------------------------- header fields


async def test_request_hop_by_hop_fields_are_stripped_and_host_set(upstream: MakeUpstream, make_pool: MakePool) -> None:
    echo = await upstream(mode="echo")
    pool = await make_pool()
    sent = Headers(
        [
            ("Host", "evil.example"),
            ("Connection", "keep-alive, X-Private"),
            ("X-Private", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Trailer", "X-Checksum"),
            ("Upgrade", "websocket"),
            ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("Proxy-Connection", "keep-alive"),
            ("Content-Length", "999"),
            ("X-Forwarded-For", "198.51.100.7"),
            ("Accept", "application/json"),
            ("X-Request-Id", "abc"),
            ("X-Request-Id", "def"),
        ]
    )
    response = await pool.fetch([echo.url], "GET", "/v1/items/7", sent, None, deadline=time.monotonic() + FAR)
    seen = Headers((name, value) for name, value in json.loads(response.body)["headers"])
    assert seen.first("Host") == echo.url.removeprefix("http://")
    for name in ("Connection", "X-Private", "Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Authorization"):
        assert name not in seen, name
    assert "Proxy-Connection" not in seen
    assert seen.first("Content-Length") in (None, "0")
    # The caller's end-to-end fields pass, duplicates kept; nothing invented.
    assert seen.first("X-Forwarded-For") == "198.51.100.7"
    assert seen.get_all("X-Request-Id") == ("abc", "def")
    assert seen.first("Accept") == "application/json"
    assert "User-Agent" not in seen
    assert "Accept-Encoding" not in seen


async def test_response_hop_by_hop_fields_are_stripped(upstream: MakeUpstream, make_pool: MakePool) -> None:
    lines = [
        ("Connection", "X-Hop"),
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authenticate", "Basic"),
        ("Trailer", "X-Checksum"),
        ("Cache-Control", "max-age=5"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]
    streamed = await upstream(mode="stream", body=b"y" * 250, extra_headers=lines)
    pool = await make_pool()
    response = await get(pool, [streamed.url])
    assert response.body == b"y" * 250
    for name in ("Connection", "X-Hop", "Keep-Alive", "Proxy-Authenticate", "Trailer", "Transfer-Encoding"):
        assert name not in response.headers, name
    assert response.headers.first("Cache-Control") == "max-age=5"
    assert response.headers.get_all("Set-Cookie") == ("a=1", "b=2")


def test_strip_hop_by_hop_core() -> None:
    headers = Headers([("connection", "close, X-A ,"), ("x-a", "1"), ("X-B", "2"), ("proxy-foo", "3")])
    assert strip_hop_by_hop(headers) == Headers([("X-B", "2")])


# ---------------------------------------------------------------- odds and ends


async def test_times_redirects_and_no_cookie_jar(upstream: MakeUpstream, make_pool: MakePool) -> None:
    redirect = await upstream(status=302, extra_headers=[("Location", "/elsewhere"), ("Set-Cookie", "sid=1")])
    wall = iter([100.0, 101.0, 102.0, 103.0])
    pool = await make_pool(clock=lambda: next(wall))
    response = await get(pool, [redirect.url])
    # Redirects are relayed, never followed.
    assert (response.status, response.headers.first("Location"), redirect.count) == (302, "/elsewhere", 1)
    assert (response.request_time, response.response_time) == (100.0, 101.0)
    # A cookie one client received is never sent upstream for another.
    await get(pool, [redirect.url])
    assert all(name.lower() != "cookie" for name, _ in redirect.received[1].headers)


async def test_misuse_is_an_internal_error(make_pool: MakePool) -> None:
    unstarted = UpstreamPool()
    with pytest.raises(InternalError):
        await get(unstarted, ["http://127.0.0.1:1"])
    pool = await make_pool()
    with pytest.raises(InternalError):
        await get(pool, [])
    with pytest.raises(InternalError):
        await get(pool, ["ftp://127.0.0.1:1"])
    with pytest.raises(InternalError):
        await pool.fetch(["http://127.0.0.1:1"], "GET", "v1/items", Headers(), None, deadline=time.monotonic() + FAR)
