"""The whole edge POP over real loopback sockets: caching, revalidation, stale serving, invalidation.

Each test builds a POP in-process with `edge.service.build` (tests/support/edgepop.py),
listens on an ephemeral loopback port and talks to it with aiohttp. Its
upstream is a scripted aiohttp server (`Scripted`) whose answers the test
sets per path and which counts every request that reaches it, so "served from
the cache" is checked by what the upstream saw. The POP's wall clock is a
`Clock` the test may move forward; the upstream client keeps the real one.
Waits are bounded polls of a condition; nothing asserts on wall-clock time.

Malformed input, limits, plumbing, operations, hints and push invalidation
from a real origin are in test_edge_limits.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from edge.httpdate import format_http_date
from tests.support.edgepop import (
    SITE,
    TOKEN,
    Handler,
    MakePop,
    Reply,
    Scripted,
    cacheable,
    date_ago,
    fetch,
    until,
)

# Freshness and age ---------------------------------------------------------------


async def test_edge_pop_fresh_hit_has_an_age_that_grows(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    upstream.routes["/aged"] = Reply(headers=[*cacheable(600), ("Age", "100")], body=b"aged")
    upstream.routes["/dated"] = Reply(headers=[*cacheable(600), date_ago(50)], body=b"dated")
    running = await make_pop([upstream.url])

    first = await fetch(client, running, "/aged")
    assert (first.status, first.x_cache, first.body) == (200, "MISS", b"aged")
    assert 100 <= first.age < 110  # the upstream's Age plus the response delay
    hit = await fetch(client, running, "/aged")
    assert (hit.status, hit.x_cache, hit.body) == (200, "HIT", b"aged")
    assert 100 <= hit.age < 110 and hit.headers["Content-Length"] == "4"

    dated = await fetch(client, running, "/dated")
    assert dated.x_cache == "MISS" and 49 <= dated.age < 60  # apparent age from a Date in the past
    running.clock.skew = 30.0  # resident time: Age grows one for one with the clock
    assert 130 <= (await fetch(client, running, "/aged")).age < 140
    later = await fetch(client, running, "/dated")
    assert later.x_cache == "HIT" and 79 <= later.age < 90
    assert upstream.counts == {"/aged": 1, "/dated": 1}

    running.clock.skew = 600.0  # now past max-age: refetched, never served stale
    stale = await fetch(client, running, "/aged")
    assert stale.x_cache != "HIT" and upstream.counts["/aged"] == 2


async def test_edge_pop_freshness_from_s_maxage_max_age_and_expires(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    now = time.time()
    upstream.routes["/smax"] = Reply(headers=[("Cache-Control", "max-age=0, s-maxage=600")], body=b"s")
    upstream.routes["/smax0"] = Reply(headers=[("Cache-Control", "max-age=600, s-maxage=0")], body=b"s0")
    upstream.routes["/expires"] = Reply(
        headers=[("Date", format_http_date(now)), ("Expires", format_http_date(now + 600))], body=b"e"
    )
    upstream.routes["/expired"] = Reply(
        headers=[("Date", format_http_date(now)), ("Expires", format_http_date(now - 600))], body=b"x"
    )
    upstream.routes["/bad-expires"] = Reply(headers=[("Expires", "0")], body=b"b")
    running = await make_pop([upstream.url])
    for path in ("/smax", "/smax0", "/expires", "/expired", "/bad-expires"):
        for _ in range(2):
            got = await fetch(client, running, path)
            assert got.status == 200
    # s-maxage wins over max-age in a shared cache, both ways; Expires counts from Date.
    assert upstream.counts == {"/smax": 1, "/smax0": 2, "/expires": 1, "/expired": 2, "/bad-expires": 2}
    assert (await fetch(client, running, "/expires")).x_cache == "HIT"


async def test_edge_pop_head_is_answered_from_a_stored_get(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    running = await make_pop([upstream.url])
    assert (await fetch(client, running, "/h1")).x_cache == "MISS"
    head = await fetch(client, running, "/h1", method="HEAD")
    assert (head.status, head.x_cache, head.body) == (200, "HIT", b"")
    assert head.headers["Content-Length"] == str(len(b"body of /h1"))
    # A cold HEAD fetches the GET (stored), so the following GET is a hit.
    cold = await fetch(client, running, "/h2", method="HEAD")
    assert (cold.status, cold.body) == (200, b"")
    got = await fetch(client, running, "/h2")
    assert (got.x_cache, got.body) == ("HIT", b"body of /h2")
    assert [s.method for s in upstream.seen] == ["GET", "GET"]
    assert upstream.counts == {"/h1": 1, "/h2": 1}


@pytest.mark.parametrize(
    ("response_headers", "request_headers"),
    [
        pytest.param([("Cache-Control", "no-store, max-age=600")], {}, id="no-store"),
        pytest.param([("Cache-Control", "private, max-age=600")], {}, id="private"),
        pytest.param(cacheable(600, ("Set-Cookie", "sid=1; Path=/")), {}, id="set-cookie"),
        pytest.param(cacheable(600), {"Authorization": "Bearer abc"}, id="authorization"),
        pytest.param([("Cache-Control", "no-store")], {"Cookie": "bo_user=x"}, id="no-store-with-cookie"),
    ],
)
async def test_edge_pop_does_not_store_what_it_may_not(
    upstream: Scripted,
    make_pop: MakePop,
    client: aiohttp.ClientSession,
    response_headers: list[tuple[str, str]],
    request_headers: dict[str, str],
) -> None:
    upstream.routes["/personal"] = Reply(headers=response_headers, body=b"for you")
    running = await make_pop([upstream.url])
    for _ in range(3):
        got = await fetch(client, running, "/personal", headers=request_headers)
        assert (got.status, got.body, got.x_cache) == (200, b"for you", "MISS")
    assert len(running.pop.cache) == 0
    # Not even a later plain request is answered from the cache.
    plain = await fetch(client, running, "/personal")
    assert plain.x_cache == "MISS" and upstream.counts["/personal"] == 4


async def test_edge_pop_authorization_with_public_is_stored(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    upstream.routes["/shared"] = Reply(headers=[("Cache-Control", "public, max-age=600")], body=b"same for all")
    running = await make_pop([upstream.url])
    await fetch(client, running, "/shared", headers={"Authorization": "Bearer abc"})
    assert (await fetch(client, running, "/shared")).x_cache == "HIT"
    assert upstream.counts["/shared"] == 1
    assert "Authorization" in upstream.seen[0].headers  # a personal request is forwarded as is


async def _by_language(request: web.Request) -> web.Response:
    language = request.headers.get("Accept-Language", "none")
    await asyncio.sleep(0.05)
    return web.Response(body=f"in {language}".encode(), headers={"Cache-Control": "max-age=600",
                                                                "Vary": "Accept-Language"})  # fmt: skip


async def test_edge_pop_vary_selects_the_stored_variant(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    upstream.routes["/vary"] = _by_language
    upstream.routes["/star"] = Reply(headers=cacheable(600, ("Vary", "*")), body=b"star")
    running = await make_pop([upstream.url])
    en = {"Accept-Language": "en"}
    fr = {"Accept-Language": "fr"}
    assert (await fetch(client, running, "/vary", headers=en)).body == b"in en"
    hit = await fetch(client, running, "/vary", headers={"Accept-Language": "EN"})  # case-insensitive by definition
    assert (hit.x_cache, hit.body) == ("HIT", b"in en")
    other = await fetch(client, running, "/vary", headers=fr)
    assert (other.x_cache, other.body) == ("MISS", b"in fr")
    assert (await fetch(client, running, "/vary", headers=fr)).body == b"in fr"
    assert (await fetch(client, running, "/vary")).body == b"in none"
    assert upstream.counts["/vary"] == 3

    for _ in range(3):  # Vary: * is never served from the cache
        got = await fetch(client, running, "/star")
        assert (got.body, got.x_cache) == (b"star", "MISS")
    assert upstream.counts["/star"] == 3


async def test_edge_pop_concurrent_misses_of_two_variants_get_their_own(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    upstream.routes["/vary"] = _by_language
    running = await make_pop([upstream.url])
    languages = ["en", "fr", "de", "en", "fr", "de"]
    answers = await asyncio.gather(
        *(fetch(client, running, "/vary", headers={"Accept-Language": lang}) for lang in languages)
    )
    assert [got.body for got in answers] == [f"in {lang}".encode() for lang in languages]
    # Whatever was stored answers its own language only.
    for lang in ("en", "fr", "de"):
        assert (await fetch(client, running, "/vary", headers={"Accept-Language": lang})).body == f"in {lang}".encode()


# Revalidation --------------------------------------------------------------------


def etag_script(first_max_age: int, max_age_after_304: int) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        if request.headers.get("If-None-Match") == '"v1"':
            headers = {"ETag": '"v1"', "Cache-Control": f"max-age={max_age_after_304}", "X-Meta": "from-304"}
            return web.Response(status=304, headers=headers)
        headers = {"ETag": '"v1"', "Cache-Control": f"max-age={first_max_age}", "X-Meta": "from-200"}
        return web.Response(body=b"document v1", headers=headers)

    return handle


async def test_edge_pop_revalidates_a_stale_entry_with_a_304(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    upstream.routes["/doc"] = etag_script(0, 600)
    running = await make_pop([upstream.url])
    first = await fetch(client, running, "/doc")
    assert (first.x_cache, first.headers["X-Meta"]) == ("MISS", "from-200")
    second = await fetch(client, running, "/doc")
    assert (second.status, second.x_cache, second.body) == (200, "REVALIDATED", b"document v1")
    assert second.headers["X-Meta"] == "from-304" and second.headers["Cache-Control"] == "max-age=600"
    assert upstream.seen[1].headers.get("If-None-Match") == '"v1"'
    third = await fetch(client, running, "/doc")  # the 304 made it fresh again, with its headers
    assert (third.x_cache, third.headers["X-Meta"], third.body) == ("HIT", "from-304", b"document v1")
    assert upstream.counts["/doc"] == 2
    assert running.pop.stats.revalidated == 1


async def test_edge_pop_answers_client_conditionals_from_the_cache(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    upstream.routes["/doc"] = etag_script(600, 600)
    running = await make_pop([upstream.url])
    await fetch(client, running, "/doc")
    not_modified = await fetch(client, running, "/doc", headers={"If-None-Match": 'W/"x", "v1"'})
    assert (not_modified.status, not_modified.body, not_modified.x_cache) == (304, b"", "HIT")
    assert not_modified.headers["ETag"] == '"v1"'
    changed = await fetch(client, running, "/doc", headers={"If-None-Match": '"v0"'})
    assert (changed.status, changed.body) == (200, b"document v1")
    assert upstream.counts["/doc"] == 1  # neither reached the upstream

    # The client's no-cache makes the POP validate with the upstream first.
    forced = await fetch(client, running, "/doc", headers={"Cache-Control": "no-cache"})
    assert (forced.status, forced.x_cache, forced.body) == (200, "REVALIDATED", b"document v1")
    assert upstream.counts["/doc"] == 2 and upstream.seen[-1].headers.get("If-None-Match") == '"v1"'
    pragma = await fetch(client, running, "/doc", headers={"Pragma": "no-cache"})
    assert pragma.x_cache == "REVALIDATED" and upstream.counts["/doc"] == 3


# Stale serving -------------------------------------------------------------------


async def test_edge_pop_serves_stale_while_revalidating_in_the_background(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    upstream.routes["/swr"] = Reply(headers=[("Cache-Control", "max-age=0, stale-while-revalidate=600")], body=b"v1")
    running = await make_pop([upstream.url])
    assert (await fetch(client, running, "/swr")).body == b"v1"
    gate = asyncio.Event()
    upstream.routes["/swr"] = Reply(headers=cacheable(600), body=b"v2", gate=gate)
    stale = await fetch(client, running, "/swr")  # answered while the refresh waits at the gate
    assert (stale.status, stale.x_cache, stale.body) == (200, "STALE", b"v1")
    await until(lambda: upstream.counts["/swr"] == 2, "the background refresh reached the upstream")
    again = await fetch(client, running, "/swr")  # one refresh at a time
    assert again.x_cache == "STALE" and again.body == b"v1"
    gate.set()
    await running.pop.drain()
    fresh = await fetch(client, running, "/swr")
    assert (fresh.x_cache, fresh.body) == ("HIT", b"v2")
    assert upstream.counts["/swr"] == 2


@pytest.mark.parametrize(
    ("cache_control", "failure", "status", "x_cache"),
    [
        pytest.param("max-age=10, stale-if-error=1000", "500", 200, "STALE", id="inside-500"),
        pytest.param("max-age=10, stale-if-error=1000", "down", 200, "STALE", id="inside-down"),
        pytest.param("max-age=10, stale-if-error=30", "500", 500, "MISS", id="outside-500"),
        pytest.param("max-age=10, stale-if-error=30", "down", 502, None, id="outside-down"),
        pytest.param("max-age=10, must-revalidate, stale-if-error=1000", "500", 500, "MISS", id="must-revalidate"),
        pytest.param("max-age=10, must-revalidate, stale-if-error=1000", "down", 502, None, id="must-revalidate-down"),
        pytest.param("max-age=10, s-maxage=10, stale-if-error=1000", "down", 502, None, id="s-maxage"),
    ],
)
async def test_edge_pop_stale_if_error_only_inside_the_window(
    make_upstream: Callable[[], Awaitable[Scripted]],
    make_pop: MakePop,
    client: aiohttp.ClientSession,
    cache_control: str,
    failure: str,
    status: int,
    x_cache: str | None,
) -> None:
    upstream = await make_upstream()
    # Date 100 s ago: stored already stale by 90 s.
    upstream.routes["/sie"] = Reply(headers=[("Cache-Control", cache_control), date_ago(100)], body=b"old")
    running = await make_pop([upstream.url])
    assert (await fetch(client, running, "/sie")).body == b"old"
    if failure == "500":
        upstream.routes["/sie"] = Reply(status=500, body=b"upstream broke")
    else:
        assert upstream.server is not None
        await upstream.server.close()
    got = await fetch(client, running, "/sie")
    assert (got.status, got.x_cache) == (status, x_cache)
    if status == 200:
        assert got.body == b"old" and running.pop.stats.stale_served == 1
    elif status == 500:
        assert got.body == b"upstream broke"  # relayed, never the stale document
    else:
        assert json.loads(got.body)["error"]["status"] == 502


# Invalidation --------------------------------------------------------------------


async def test_edge_pop_unsafe_request_evicts_its_target_and_location(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    upstream.routes["/things/1"] = Reply(status=201, headers=[("Location", "/things/2"), *cacheable(600)],
                                         body=b"created")  # fmt: skip
    running = await make_pop([upstream.url])
    for path in ("/things/2", "/things/3", "/things/4", "/things/5"):
        await fetch(client, running, path)
    upstream.routes["/things/1"] = _only_post(Reply(status=201, headers=[("Location", "/things/2")], body=b"ok"))
    await fetch(client, running, "/things/1")  # cached: the POST must evict it
    assert (await fetch(client, running, "/things/1")).x_cache == "HIT"
    posted = await fetch(client, running, "/things/1", method="POST", data=b"{}")
    assert (posted.status, posted.x_cache) == (201, "PASS")
    assert (await fetch(client, running, "/things/1")).x_cache == "MISS"
    assert (await fetch(client, running, "/things/2")).x_cache == "MISS"
    assert (await fetch(client, running, "/things/3")).x_cache == "HIT"

    # Location on another host never evicts anything; a failed write evicts nothing.
    upstream.routes["/things/6"] = _only_post(Reply(status=201, headers=[("Location", "http://evil.test/things/3")]))
    await fetch(client, running, "/things/6", method="PUT")
    assert (await fetch(client, running, "/things/3")).x_cache == "HIT"
    upstream.routes["/things/4"] = _only_post(Reply(status=409, body=b"conflict"))
    assert (await fetch(client, running, "/things/4", method="DELETE")).status == 409
    assert (await fetch(client, running, "/things/4")).x_cache == "HIT"
    # An absolute Location on our own site counts.
    upstream.routes["/things/7"] = _only_post(Reply(status=200, headers=[("Location", f"http://{SITE}/things/5")]))
    await fetch(client, running, "/things/7", method="PATCH")
    assert (await fetch(client, running, "/things/5")).x_cache == "MISS"


def _only_post(reply: Reply) -> Handler:
    """`reply` to unsafe methods; GETs still get the default cacheable body."""

    async def handle(request: web.Request) -> web.Response:
        if request.method in ("GET", "HEAD"):
            return web.Response(body=f"body of {request.path}".encode(), headers={"Cache-Control": "max-age=600"})
        return web.Response(status=reply.status, headers=CIMultiDict(reply.headers), body=reply.body)

    return handle


async def test_edge_pop_purge_needs_the_token(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    running = await make_pop([upstream.url])
    await fetch(client, running, "/p/1")
    await fetch(client, running, "/p/2")
    body = json.dumps({"urls": ["/p/1", "/p/unknown"]}).encode()
    refused = await fetch(client, running, "/_edge/purge", method="POST", data=body)
    assert refused.status == 401 and "Bearer" in refused.headers["WWW-Authenticate"]
    wrong = await fetch(client, running, "/_edge/purge", method="POST", data=body,
                        headers={"Authorization": "Bearer nope"})  # fmt: skip
    assert wrong.status == 401
    assert (await fetch(client, running, "/p/1")).x_cache == "HIT"

    auth = {"Authorization": f"Bearer {TOKEN}"}
    purged = await fetch(client, running, "/_edge/purge", method="POST", data=body, headers=auth)
    assert purged.status == 200 and json.loads(purged.body) == {"purged": 1}
    assert (await fetch(client, running, "/p/1")).x_cache == "MISS"
    assert (await fetch(client, running, "/p/2")).x_cache == "HIT"
    bad = await fetch(client, running, "/_edge/purge", method="POST", data=b"[1]", headers=auth)
    assert bad.status == 400
    assert (await fetch(client, running, "/_edge/purge")).status == 405


async def test_edge_pop_warm_fills_the_cache(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    upstream.routes["/w/private"] = Reply(headers=[("Cache-Control", "private, max-age=60")], body=b"mine")
    running = await make_pop([upstream.url])
    await fetch(client, running, "/w/already")
    urls = [{"url": "/w/1", "priority": 0.9}, {"url": "/w/2", "priority": 0.5}, {"url": "/w/already"},
            {"url": "/w/private", "priority": 0.1}, {"url": "/w/../x", "priority": 1}]  # fmt: skip
    body = json.dumps({"urls": urls}).encode()
    assert (await fetch(client, running, "/_edge/warm", method="POST", data=body)).status == 401
    assert upstream.total == 1
    warmed = await fetch(client, running, "/_edge/warm", method="POST", data=body,
                         headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert warmed.status == 200
    assert json.loads(warmed.body) == {"warmed": 2, "already_cached": 1, "skipped": 1, "failed": 1}
    before = dict(upstream.counts)
    for path in ("/w/1", "/w/2"):
        got = await fetch(client, running, path)
        assert (got.x_cache, got.body) == ("HIT", f"body of {path}".encode())
    assert upstream.counts == before
    assert (await fetch(client, running, "/w/private")).x_cache == "MISS"


# Coalescing, shedding, failover --------------------------------------------------


async def test_edge_pop_coalesces_a_flash_crowd_into_one_upstream_request(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    upstream.routes["/hot"] = Reply(headers=cacheable(600), body=b"hot item", delay=0.2)
    running = await make_pop([upstream.url])
    answers = await asyncio.gather(*(fetch(client, running, "/hot") for _ in range(500)))
    assert [got.status for got in answers] == [200] * 500
    assert {got.body for got in answers} == {b"hot item"}
    assert upstream.counts["/hot"] == 1
    assert running.pop.stats.coalesced + running.pop.stats.hits == 499


async def test_edge_pop_sheds_misses_past_the_upstream_limit(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    gate = asyncio.Event()
    upstream.routes["/slow/1"] = upstream.routes["/slow/2"] = Reply(headers=cacheable(600), body=b"slow", gate=gate)
    running = await make_pop([upstream.url], max_upstream_requests=2)
    held = [asyncio.ensure_future(fetch(client, running, path)) for path in ("/slow/1", "/slow/2")]
    await until(lambda: upstream.total == 2, "two slow fetches in flight")
    shed = [await fetch(client, running, f"/other/{n}") for n in range(3)]
    assert [got.status for got in shed] == [503] * 3
    assert all(got.headers["Retry-After"] == "1" for got in shed)
    gate.set()
    assert [(await task).status for task in held] == [200, 200]
    assert (await fetch(client, running, "/other/0")).status == 200  # capacity is back
    assert upstream.total == 3
    metrics = (await fetch(client, running, "/metrics")).body.decode()
    assert "\nedge_shed_total 3\n" in metrics


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_edge_pop_fails_over_and_opens_the_breaker(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    dead = f"http://127.0.0.1:{dead_port()}"
    running = await make_pop([dead, upstream.url])
    for n in range(5):
        got = await fetch(client, running, f"/f/{n}")
        assert (got.status, got.body) == (200, f"body of /f/{n}".encode())
    health = json.loads((await fetch(client, running, "/_edge/health")).body)
    assert health["upstreams"][dead]["state"] == "open"
    assert health["upstreams"][dead]["consecutive_failures"] == 5
    assert "cannot connect" in health["upstreams"][dead]["last_error"]
    assert health["upstreams"][upstream.url]["state"] == "closed"
    assert health["status"] == "ok"
    # Open: the dead upstream is skipped without an attempt.
    assert (await fetch(client, running, "/f/after")).status == 200
    health = json.loads((await fetch(client, running, "/_edge/health")).body)
    assert health["upstreams"][dead]["consecutive_failures"] == 5
    assert upstream.total == 6
