"""The whole edge POP over real loopback sockets: bad input, limits, HTTP plumbing, operations, hints,
and push invalidation from a real origin.

Malformed and oversized requests go through raw sockets, so that nothing
between the test and the POP repairs them. Every one must get a precise 4xx,
reach no upstream and leave no cache entry. The push-invalidation test runs
the real origin application on SQLite as the POP's upstream and checks that a
hold placed at the origin (not through the POP) reaches the POP through the
change feed. Waits are bounded polls; nothing asserts on wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from edge.hints import format_rfc3339
from edge.settings import DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_URL
from edge.usertoken import sign
from ops.settings import Seconds
from origin.hlc import HybridClock
from origin.http import Origin, create_app
from origin.ledger import Ledger
from origin.settings import OriginSettings
from origin.store.base import Store
from origin.store.sqlite import SQLiteStore
from tests.origin.conftest import START, tiny_catalog
from tests.support.edgepop import WAIT_BOUND, MakePop, Reply, RunningPop, Scripted, cacheable, fetch, until

MakeServer = Callable[..., Awaitable[TestServer]]


# Raw HTTP/1.1 ---------------------------------------------------------------------


@dataclass
class Raw:
    status: int
    headers: CIMultiDict[str]
    body: bytes


async def read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> Raw:
    """One response with a Content-Length body (the POP always sends one)."""
    async with asyncio.timeout(WAIT_BOUND):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines:
            name, _, value = line.partition(":")
            headers.add(name, value.strip())
        length = 0 if head_only else int(headers.get("Content-Length", "0"))
        body = await reader.readexactly(length)
    return Raw(int(status_line.split(" ")[1]), headers, body)


async def at_eof(reader: asyncio.StreamReader) -> bool:
    """True when the POP closed the connection (bounded wait)."""
    try:
        async with asyncio.timeout(WAIT_BOUND):
            return await reader.read(1) == b""
    except ConnectionResetError:
        return True


@contextlib.asynccontextmanager
async def connection(running: RunningPop) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def get(path: str, *extra: str, version: str = "1.1", host: bool = True) -> bytes:
    lines = [f"GET {path} HTTP/{version}", *(["Host: www.boxoffice.test"] if host else []), *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# Bad input -------------------------------------------------------------------------

_HOST = b"Host: www.boxoffice.test\r\n"
POST_TOO_BIG = b"POST /upload HTTP/1.1\r\n" + _HOST + b"Content-Length: 70000\r\n\r\n" + b"x" * 70000


@pytest.mark.parametrize(
    ("request_bytes", "status", "closes"),
    [
        pytest.param(b"GET http://evil.test/x HTTP/1.1\r\nHost: evil.test\r\n\r\n", 400, False, id="absolute-form"),
        pytest.param(b"GET evil.test:80 HTTP/1.1\r\nHost: evil.test\r\n\r\n", 400, True, id="authority-form"),
        pytest.param(get("/a/../b"), 400, False, id="dot-dot"),
        pytest.param(get("/a/%2E%2e/b"), 400, False, id="escaped-dot-dot"),
        pytest.param(get("/a/%zz"), 400, False, id="bad-escape"),
        pytest.param(get("/" + "a" * DEFAULT_MAX_URL), 414, True, id="target-too-long"),
        pytest.param(get("/big", "X-Big: " + "b" * DEFAULT_MAX_HEADER_BYTES), 431, True, id="headers-too-big"),
        pytest.param(POST_TOO_BIG, 413, True, id="body-too-big"),
        pytest.param(b"HELLO WORLD\r\n\r\n", 400, True, id="garbage"),
        pytest.param(b"GET /x HTTP/1.1\r\n\r\n", 400, True, id="no-host"),
        pytest.param(b"GET /x HTTP/1.1\r\n" + _HOST + _HOST + b"\r\n", 400, True, id="two-hosts"),
        pytest.param(b"GET /x HTTP/1.1\r\n" + _HOST + b"X-A: a\rInjected: 1\r\n\r\n", 400, True, id="cr-in-value"),
        pytest.param(b"GET /x HTTP/1.1\r\n" + _HOST + b"X-A: a\x00b\r\n\r\n", 400, True, id="nul-in-value"),
        pytest.param(b"GET /x HTTP/1.1\r\n" + _HOST + b"Bad Name: 1\r\n\r\n", 400, True, id="space-in-name"),
        pytest.param(b"TRACE /x HTTP/1.1\r\n" + _HOST + b"\r\n", 405, False, id="trace"),
        pytest.param(b"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n", 405, True, id="connect"),
    ],
)
async def test_edge_pop_refuses_bad_requests_precisely(
    upstream: Scripted, make_pop: MakePop, request_bytes: bytes, status: int, closes: bool
) -> None:
    running = await make_pop([upstream.url])
    async with connection(running) as (reader, writer):
        writer.write(request_bytes)
        answer = await read_response(reader)
        assert answer.status == status, answer.body
        assert json.loads(answer.body)["error"]["status"] == status
        assert answer.headers["Cache-Control"] == "no-store"
        if status == 405:
            assert "GET" in answer.headers["Allow"]
        if closes:
            assert answer.headers["Connection"] == "close" and await at_eof(reader)
        else:  # a well-formed request refused: the connection stays usable
            writer.write(get("/after"))
            assert (await read_response(reader)).status == 200
    assert upstream.total == (0 if closes else 1)
    assert set(upstream.counts) <= {"/after"}  # never proxied anywhere else
    assert len(running.pop.cache) == (0 if closes else 1)


async def test_edge_pop_survives_a_burst_of_garbage(upstream: Scripted, make_pop: MakePop) -> None:
    running = await make_pop([upstream.url])
    junk = [b"\x00\xff" * 50, b"GET / HTTP/9.9\r\n\r\n", b"G" * 70000,
            b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            b"GET /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]  # fmt: skip
    for data in junk:
        async with connection(running) as (reader, writer):
            writer.write(data)
            answer = await read_response(reader)
            assert 400 <= answer.status < 500 and await at_eof(reader)
    async with connection(running) as (reader, writer):  # still serving
        writer.write(get("/ok"))
        assert (await read_response(reader)).status == 200
    assert upstream.total == 1


# HTTP plumbing ---------------------------------------------------------------------


async def test_edge_pop_keeps_connections_alive_and_answers_pipelined_requests_in_order(
    upstream: Scripted, make_pop: MakePop
) -> None:
    upstream.routes["/pipe/1"] = Reply(headers=cacheable(600), body=b"one", delay=0.2)
    upstream.routes["/pipe/2"] = Reply(headers=cacheable(600), body=b"two")
    running = await make_pop([upstream.url])
    async with connection(running) as (reader, writer):
        writer.write(get("/pipe/3"))
        first = await read_response(reader)
        writer.write(get("/pipe/3"))  # the same connection: a fast-path hit
        second = await read_response(reader)
        assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
        assert first.body == second.body == b"body of /pipe/3"
        assert "Connection" not in second.headers

        # Three requests in one write; the slowest first. A HEAD among them has no body.
        writer.write(get("/pipe/1") + get("/pipe/2") + get("/pipe/3").replace(b"GET", b"HEAD", 1) + get("/pipe/3"))
        answers = [await read_response(reader) for _ in range(2)]
        answers.append(await read_response(reader, head_only=True))
        answers.append(await read_response(reader))
        assert [a.body for a in answers] == [b"one", b"two", b"", b"body of /pipe/3"]
        assert answers[2].headers["Content-Length"] == str(len(b"body of /pipe/3"))

        writer.write(get("/pipe/2", "Connection: close"))
        last = await read_response(reader)
        assert (last.body, last.headers["Connection"]) == (b"two", "close")
        assert await at_eof(reader)
    assert upstream.counts == {"/pipe/1": 1, "/pipe/2": 1, "/pipe/3": 1}


async def test_edge_pop_speaks_http_1_0(upstream: Scripted, make_pop: MakePop) -> None:
    running = await make_pop([upstream.url])
    for expected in ("MISS", "HIT"):
        async with connection(running) as (reader, writer):
            writer.write(get("/old", version="1.0", host=False))  # Host is optional in HTTP/1.0
            answer = await read_response(reader)
            assert (answer.status, answer.body, answer.headers["X-Cache"]) == (200, b"body of /old", expected)
            assert answer.headers["Connection"] == "close" and await at_eof(reader)
    assert upstream.counts == {"/old": 1}


# Operations ------------------------------------------------------------------------


async def test_edge_pop_reports_health_and_metrics(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    running = await make_pop([upstream.url], capacity=1234.0)
    for path in ("/m/1", "/m/1", "/m/1", "/m/2"):
        await fetch(client, running, path)
    running.app.tick()
    health = await fetch(client, running, "/_edge/health")
    assert health.status == 200 and health.headers["Content-Type"] == "application/json"
    doc = json.loads(health.body)
    assert doc["status"] == "ok" and doc["pop"] == "local"
    assert doc["capacity"] == 1234.0 and isinstance(doc["load"], float) and doc["load"] >= 0
    assert doc["hit_ratio"] == 0.5  # two hits out of four
    assert doc["upstreams"][upstream.url]["state"] == "closed"
    assert doc["upstreams"][upstream.url]["consecutive_failures"] == 0
    assert doc["feed"] is None  # not following a feed
    assert doc["cache"]["entries"] == 2 and 0 < doc["cache"]["bytes"] <= doc["cache"]["capacity_bytes"]

    metrics = await fetch(client, running, "/metrics")
    assert metrics.status == 200 and metrics.headers["Content-Type"].startswith("text/plain")
    text = metrics.body.decode()
    for line in ("edge_cache_hits_total 2", "edge_cache_misses_total 2", "edge_cache_entries 2",
                 "edge_shed_total 0", "edge_coalesced_total 0"):  # fmt: skip
        assert f"\n{line}\n" in text, line
    assert f'edge_upstream_seconds_count{{upstream="{upstream.url}",outcome="ok"}} 2' in text
    assert (await fetch(client, running, "/_edge/nothing")).status == 404


# Hints -----------------------------------------------------------------------------

SECRET = "hint-secret"


@dataclass
class Predictor:
    asked: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/hints/{user}", self.hints)
        return app

    async def hints(self, request: web.Request) -> web.Response:
        user = request.match_info["user"]
        self.asked.append(user)
        if user != "u-42":
            return web.json_response({"error": "unknown"}, status=404)
        hints = [{"url": "/v1/items/itm-2", "score": 0.9}, {"url": "/v1/events/evt-1", "score": 0.5},
                 {"url": "http://evil.test/v1/items/x", "score": 1.0}]  # fmt: skip
        return web.json_response({"user_id": user, "hints": hints, "expires_at": format_rfc3339(time.time() + 600)})


def cookie(user: str, secret: str = SECRET, ttl: int = 600) -> dict[str, str]:
    return {"Cookie": f"theme=dark; bo_user={sign(user, secret.encode(), int(time.time()) + ttl)}"}


async def test_edge_pop_serves_per_user_hints(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession, aiohttp_server: MakeServer
) -> None:
    predictor = Predictor()
    predictor_server = await aiohttp_server(predictor.app())
    running = await make_pop([upstream.url], user_secret=SECRET,
                             predictor=str(predictor_server.make_url("")).rstrip("/"))  # fmt: skip
    mine = cookie("u-42")

    for headers in ({}, {"Cookie": "bo_user=garbage"}, cookie("u-42", secret="other"), cookie("u-42", ttl=-10)):
        refused = await fetch(client, running, "/v1/hints", headers=headers)
        assert refused.status == 401
    assert predictor.asked == []

    listed = await fetch(client, running, "/v1/hints", headers=mine)
    assert listed.status == 200 and listed.headers["Cache-Control"] == "private, no-store"
    doc = json.loads(listed.body)
    assert doc["user_id"] == "u-42"
    assert [h["url"] for h in doc["hints"]] == ["/v1/items/itm-2", "/v1/events/evt-1"]  # the foreign URL dropped
    bearer = await fetch(client, running, "/v1/hints", headers={"Authorization": mine["Cookie"].split("bo_user=")[1]
                                                                .join(["Bearer ", ""])})  # fmt: skip
    assert json.loads(bearer.body)["user_id"] == "u-42"
    other = json.loads((await fetch(client, running, "/v1/hints", headers=cookie("u-7"))).body)
    assert other == {"user_id": "u-7", "hints": [], "expires_at": other["expires_at"]}
    assert predictor.asked == ["u-42", "u-7"]  # cached briefly; never asked for anyone unverified

    page = await fetch(client, running, "/v1/items/itm-1", headers=mine)
    assert (page.status, page.body) == (200, b"body of /v1/items/itm-1")
    assert page.headers["Speculation-Rules"] == '"/v1/hints/rules.json"'
    assert page.headers["Link"] == "</v1/items/itm-2>; rel=prefetch, </v1/events/evt-1>; rel=prefetch"
    anonymous = await fetch(client, running, "/v1/items/itm-1")  # the cached entry carries no one's hints
    assert anonymous.headers["X-Cache"] == "HIT" and "Link" not in anonymous.headers
    assert "Speculation-Rules" not in anonymous.headers
    stranger = await fetch(client, running, "/v1/items/itm-1", headers=cookie("u-7"))
    assert "Link" not in stranger.headers and stranger.headers["X-Cache"] == "HIT"
    saving = await fetch(client, running, "/v1/items/itm-1", headers={**mine, "Save-Data": "on"})
    assert "Link" not in saving.headers and "Speculation-Rules" not in saving.headers
    assert upstream.counts["/v1/items/itm-1"] == 1

    rules = await fetch(client, running, "/v1/hints/rules.json", headers=mine)
    assert rules.headers["Content-Type"] == "application/speculationrules+json"
    assert json.loads(rules.body)["prefetch"][0]["urls"] == ["/v1/items/itm-2", "/v1/events/evt-1"]

    # A prefetch, then the page using it: hint precision counts one use.
    await fetch(client, running, "/v1/items/itm-2", headers={**mine, "Sec-Purpose": "prefetch"})
    await fetch(client, running, "/v1/items/itm-2", headers=mine)
    assert (running.app.prefetch.prefetched, running.app.prefetch.used) == (1, 1)

    worker = await fetch(client, running, "/sw.js")
    assert worker.status == 200 and worker.headers["Content-Type"].startswith("text/javascript")
    assert b"fetch" in worker.body and worker.headers["Service-Worker-Allowed"] == "/"


# Push invalidation from a real origin ----------------------------------------------


@pytest.fixture
async def origin_store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = SQLiteStore(tmp_path / "origin.db")
    await opened.open()
    venues, events, items = tiny_catalog()
    await opened.load_catalog(venues, events, items, START)
    try:
        yield opened
    finally:
        await opened.close()


async def start_origin(store: Store, aiohttp_server: MakeServer) -> TestServer:
    # Item documents fresh for a minute: within this test only the change feed can refresh the POP.
    settings = OriginSettings(feed_max_wait=Seconds(5.0), item_max_age=Seconds(60.0))
    ledger = Ledger(store, HybridClock("test", time.time), time.time, settings.ledger_limits())
    app = create_app(Origin(settings, store, ledger, time.time), background=False)
    return await aiohttp_server(app, shutdown_timeout=0.1)


async def test_edge_pop_follows_the_origin_change_feed(
    origin_store: Store, aiohttp_server: MakeServer, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    origin = await start_origin(origin_store, aiohttp_server)
    origin_url = str(origin.make_url("")).rstrip("/")
    running = await make_pop([origin_url], follow_feed=True, feed_wait=Seconds(1.0))
    follower = running.follower
    assert follower is not None
    await until(lambda: follower.connected and follower.lag_seconds == 0.0, "the POP's follower at the head")

    async def available() -> tuple[int, str | None]:
        got = await fetch(client, running, "/v1/items/itm-1-ga")
        assert got.status == 200
        return json.loads(got.body)["available"], got.headers.get("X-Cache")

    assert await available() == (10, "MISS")
    assert await available() == (10, "HIT")

    async def wait_for(count: int) -> None:
        deadline = time.monotonic() + WAIT_BOUND
        while (await available())[0] != count:
            assert time.monotonic() < deadline, f"the POP never served available={count}"
            await asyncio.sleep(0.01)

    # A hold through the POP: the POST passes through to the origin.
    hold = {"item_id": "itm-1-ga", "qty": 1, "user_id": "u1"}
    placed = await fetch(client, running, "/v1/holds", method="POST", json=hold)
    assert (placed.status, placed.headers["X-Cache"]) == (201, "PASS")
    await wait_for(9)
    assert await available() == (9, "HIT")

    # A hold placed at the origin directly: only the feed can tell the POP.
    purged = running.pop.stats.purged
    async with client.post(origin.make_url("/v1/holds"), json={**hold, "qty": 2}) as resp:
        assert resp.status == 201
    await wait_for(7)
    assert running.pop.stats.purged > purged
    health = json.loads((await fetch(client, running, "/_edge/health")).body)
    assert health["feed"]["connected"] is True and health["feed"]["applied"] >= 2
