"""The storefront pages, the demo session, the status history and page, and hints under Save-Data/consent."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Awaitable, Callable, Iterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edge.errors import PeerError
from edge.hints import format_rfc3339
from edge.storefront import (
    ASSET_MAX_AGE,
    SHELL_MAX_AGE,
    Counters,
    StatusHistory,
    Storefront,
    UpstreamSample,
    consent_choice,
    consent_refused,
    demo_login_allowed,
    parse_login,
)
from edge.usertoken import COOKIE_NAME, sign
from tests.support.edgepop import MakePop, RunningPop, Scripted, cacheable, fetch, until
from tests.support.edgepop import Reply as UpstreamReply

MakeServer = Callable[..., Awaitable[TestServer]]
SECRET = "storefront-secret"


# -- Cores --------------------------------------------------------------------------------------


def test_status_history_samples_differences_and_keeps_one_window() -> None:
    history = StatusHistory(100.0, interval=5, window=20)
    assert not history.due(104.9)
    assert history.due(105.0)
    closed = {"http://a": UpstreamSample("closed", 0.01), "http://b": UpstreamSample("open", None)}
    first = history.record(
        wall_now=1_000.0, monotonic_now=105.0, counters=Counters(requests=10, hits=6, misses=3, stale_served=1),
        upstreams=closed,
    )  # fmt: skip
    assert (first.requests, first.hits, first.served, first.seconds) == (10, 6, 10, 5.0)
    assert first.hit_ratio == pytest.approx(0.6)
    assert first.requests_per_second == pytest.approx(2.0)
    document = first.to_document()
    assert document["upstreams"] == {
        "http://a": {"state": "closed", "healthy": True, "ewma_latency": 0.01},
        "http://b": {"state": "open", "healthy": False, "ewma_latency": None},
    }
    # Nothing served in the next interval: no ratio rather than 0.
    idle = history.record(wall_now=1_005.0, monotonic_now=110.0, counters=Counters(10, 6, 3, 1), upstreams={})
    assert idle.hit_ratio is None
    assert idle.to_document()["hit_ratio"] is None
    # Counters that went backwards count as zero, never negative.
    reset = history.record(wall_now=1_010.0, monotonic_now=115.0, counters=Counters(2, 1, 1, 0), upstreams={})
    assert (reset.requests, reset.hits, reset.served) == (0, 0, 0)
    for n in range(5):
        history.record(wall_now=1_015.0 + 5 * n, monotonic_now=120.0 + 5 * n, counters=Counters(), upstreams={})
    samples = history.to_document()["samples"]
    assert len(samples) == 4  # a 20 s window of 5 s samples
    assert [sample["at"] for sample in samples] == [1_020.0, 1_025.0, 1_030.0, 1_035.0]
    with pytest.raises(ValueError, match="window"):
        StatusHistory(0.0, interval=5, window=4)


def test_storefront_paths() -> None:
    files = {
        "storefront.html": b"<html>shell</html>",
        "status.html": b"<html>status</html>",
        "storefront.js": b"js",
        "storefront.css": b"css",
        "status.js": b"status js",
    }
    storefront = Storefront(files)
    assert storefront.lookup("/") is storefront.shell
    assert storefront.lookup("/events/evt-000123") is storefront.shell
    assert storefront.lookup("/static/storefront.css") is storefront.assets["storefront.css"]
    for missing in ("/events/", "/events/a/b", "/events/..", "/events/%2e", "/static/", "/static/../sw.js",
                    "/static/other.js", "/elsewhere"):  # fmt: skip
        assert storefront.lookup(missing) is None, missing
    shell = storefront.shell
    assert shell.not_modified_by(shell.etag)
    assert shell.not_modified_by(f'"nope", W/{shell.etag}')
    assert shell.not_modified_by("*")
    assert not shell.not_modified_by('"nope"')
    assert not shell.not_modified_by(None)
    assert Storefront.is_page_path("/") and Storefront.is_page_path("/static/x")
    assert not Storefront.is_page_path("/v1/events") and not Storefront.is_page_path("/sw.js")


def test_login_consent_and_demo_sites() -> None:
    assert parse_login(b'{"user_id": "u-1"}', "application/json; charset=utf-8") == "u-1"
    for body, content_type, message in [
        (b'{"user_id": "u-1"}', "application/x-www-form-urlencoded", "application/json"),
        (b'{"user_id": "u-1"}', None, "application/json"),
        (b"{", "application/json", "not valid JSON"),
        (b'["u-1"]', "application/json", "user_id"),
        (b'{"user_id": 7}', "application/json", "user_id"),
        (b'{"user_id": "' + b"x" * 2000 + b'"}', "application/json", "larger"),
    ]:
        with pytest.raises(PeerError, match=message):
            parse_login(body, content_type)
    assert consent_choice("a=1; bo_consent=on") == "on"
    assert consent_choice('bo_consent="OFF"') == "off"
    assert consent_choice("bo_consent=maybe") is None
    assert consent_choice(None) is None
    assert consent_refused("x=1; bo_consent=off") and not consent_refused("bo_consent=on")
    assert demo_login_allowed("www.boxoffice.test") and demo_login_allowed("shop.localhost.")
    assert not demo_login_allowed("www.boxoffice.com") and not demo_login_allowed("test.example.org")


# -- Pages through a POP ------------------------------------------------------------------------


async def test_pages_are_served_by_the_pop_with_caching_headers(
    make_pop: MakePop, upstream: Scripted, client: aiohttp.ClientSession
) -> None:
    running = await make_pop([upstream.url])
    home = await fetch(client, running, "/")
    assert home.status == 200
    assert home.headers["Content-Type"] == "text/html; charset=utf-8"
    assert home.headers["Cache-Control"] == f"public, max-age={SHELL_MAX_AGE}"
    assert "default-src 'self'" in home.headers["Content-Security-Policy"]
    assert b'src="/static/storefront.js"' in home.body
    etag = home.headers["ETag"]

    event_page = await fetch(client, running, "/events/evt-000001?from=list")
    assert (event_page.status, event_page.body, event_page.headers["ETag"]) == (200, home.body, etag)

    revalidated = await fetch(client, running, "/", headers={"If-None-Match": etag})
    assert revalidated.status == 304
    assert revalidated.body == b""
    assert revalidated.headers["ETag"] == etag

    head = await fetch(client, running, "/static/storefront.js", method="HEAD")
    assert head.status == 200
    assert head.body == b""
    assert head.headers["Content-Type"].startswith("text/javascript")
    assert head.headers["Cache-Control"] == f"public, max-age={ASSET_MAX_AGE}"
    script = await fetch(client, running, "/static/storefront.js")
    assert int(head.headers["Content-Length"]) == len(script.body) > 0
    assert b"bo-refresh-hints" in script.body

    status_page = await fetch(client, running, "/_edge/status")
    assert status_page.status == 200
    assert b'src="/static/status.js"' in status_page.body

    for path, status in [("/static/nope.js", 404), ("/events/a/b", 404), ("/events/-x", 404)]:
        assert (await fetch(client, running, path)).status == status, path
    posted = await fetch(client, running, "/", method="POST", data=b"x")
    assert posted.status == 405
    assert posted.headers["Allow"] == "GET, HEAD"
    # None of it reached the upstream: the pages are the POP's own.
    assert upstream.total == 0


async def test_status_samples_count_hits_misses_and_upstream_health(
    make_pop: MakePop, upstream: Scripted, client: aiohttp.ClientSession
) -> None:
    running = await make_pop([upstream.url])
    upstream.routes["/v1/items/a"] = UpstreamReply(headers=cacheable(600), body=b'{"id": "a"}')
    upstream.routes["/v1/items/b"] = UpstreamReply(headers=cacheable(600), body=b'{"id": "b"}')
    for path in ("/v1/items/a", "/v1/items/a", "/v1/items/b", "/v1/items/a"):
        assert (await fetch(client, running, path)).status == 200
    sample = running.app.sample_status(wall_now=time.time(), monotonic_now=time.monotonic())
    assert (sample.requests, sample.hits, sample.served) == (4, 2, 4)

    got = await fetch(client, running, "/_edge/status.json")
    assert got.status == 200
    assert got.headers["Cache-Control"] == "no-store"
    doc = json.loads(got.body)
    assert doc["pop"] == running.pop.settings.pop
    assert (doc["interval_seconds"], doc["window_seconds"]) == (5.0, 3600.0)
    assert doc["totals"]["hit_ratio"] == 0.5
    [only] = doc["samples"]
    assert (only["requests"], only["hits"], only["served"], only["hit_ratio"]) == (4, 2, 4, 0.5)
    assert only["upstreams"][upstream.url]["state"] == "closed"
    assert only["upstreams"][upstream.url]["healthy"] is True
    assert set(only) == {"at", "seconds", "requests", "requests_per_second", "hits", "served", "hit_ratio",
                         "prefetched", "upstreams"}  # fmt: skip

    # The next interval: the status request itself, then all hits.
    for _ in range(3):
        assert (await fetch(client, running, "/v1/items/b")).status == 200
    second = running.app.sample_status(wall_now=time.time(), monotonic_now=time.monotonic())
    assert (second.requests, second.hits, second.served, second.hit_ratio) == (4, 3, 3, 1.0)


async def test_status_shows_a_failing_upstream(make_pop: MakePop, client: aiohttp.ClientSession) -> None:
    # A port nobody listens on: every request fails, and the breaker opens.
    with refused_port() as dead:
        running = await make_pop([dead])
        for n in range(50):
            await fetch(client, running, f"/v1/items/x{n}")
            if running.pop.upstream.snapshot()[dead].state == "open":
                break
        sample = running.app.sample_status(wall_now=time.time(), monotonic_now=time.monotonic())
    assert sample.upstreams[dead].state == "open"
    assert not sample.upstreams[dead].healthy
    assert sample.hit_ratio == 0.0  # every request needed the (dead) upstream


@contextlib.contextmanager
def refused_port() -> Iterator[str]:
    """A loopback URL whose port is reserved (bound, not listening): connections are refused."""
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{reserved.getsockname()[1]}"


# -- The demo session and hints -----------------------------------------------------------------


@pytest.fixture
async def predictor(aiohttp_server: MakeServer) -> tuple[list[str], str]:
    """A predictor that hints two items to everyone; returns (users asked about, base URL)."""
    asked: list[str] = []

    async def hints(request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        asked.append(user_id)
        body = {
            "user_id": user_id,
            "hints": [{"url": "/v1/items/a", "score": 0.9}, {"url": "/v1/items/b", "score": 0.5}],
            "expires_at": format_rfc3339(time.time() + 300),
        }
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/v1/hints/{user_id}", hints)
    server = await aiohttp_server(app, shutdown_timeout=0.1)
    return asked, str(server.make_url("")).rstrip("/")


async def hinting_pop(make_pop: MakePop, upstream: Scripted, predictor_url: str, **overrides: object) -> RunningPop:
    return await make_pop([upstream.url], user_secret=SECRET, predictor=predictor_url, **overrides)


async def test_demo_login_issues_the_user_cookie_and_session_reports_it(
    make_pop: MakePop, upstream: Scripted, predictor: tuple[list[str], str], client: aiohttp.ClientSession
) -> None:
    running = await hinting_pop(make_pop, upstream, predictor[1], region="eu-west")
    anonymous = json.loads((await fetch(client, running, "/_edge/session")).body)
    assert anonymous == {"user_id": None, "consent": None, "save_data": False, "region": "eu-west",
                         "pop": running.pop.settings.pop, "hints": True, "demo_login": True}  # fmt: skip

    login = await fetch(client, running, "/_edge/demo/login", method="POST", json={"user_id": "u-7"})
    assert login.status == 200
    set_cookie = login.headers["Set-Cookie"]
    assert set_cookie.startswith(f"{COOKIE_NAME}=")
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie
    cookie = set_cookie.split(";", 1)[0]
    session = await fetch(client, running, "/_edge/session",
                          headers={"Cookie": f"{cookie}; bo_consent=on", "Save-Data": "on"})  # fmt: skip
    assert session.headers["Cache-Control"] == "private, no-store"
    assert json.loads(session.body)["user_id"] == "u-7"
    assert json.loads(session.body)["consent"] == "on"
    assert json.loads(session.body)["save_data"] is True

    for body, headers in [
        (b'{"user_id": "../admin"}', {"Content-Type": "application/json"}),
        (b"user_id=u-7", {"Content-Type": "application/x-www-form-urlencoded"}),
    ]:
        refused = await fetch(client, running, "/_edge/demo/login", method="POST", data=body, headers=headers)
        assert refused.status == 400
        assert "Set-Cookie" not in refused.headers
    logout = await fetch(client, running, "/_edge/demo/logout", method="POST")
    assert logout.headers["Set-Cookie"].startswith(f"{COOKIE_NAME}=; Max-Age=0")


async def test_demo_login_only_on_test_sites_and_with_a_secret(
    make_pop: MakePop, upstream: Scripted, predictor: tuple[list[str], str], client: aiohttp.ClientSession
) -> None:
    real_site = await hinting_pop(make_pop, upstream, predictor[1], site="www.boxoffice.com")
    refused = await fetch(client, real_site, "/_edge/demo/login", method="POST", json={"user_id": "u-1"})
    assert refused.status == 404
    assert json.loads((await fetch(client, real_site, "/_edge/session")).body)["demo_login"] is False
    no_secret = await make_pop([upstream.url])
    unavailable = await fetch(client, no_secret, "/_edge/demo/login", method="POST", json={"user_id": "u-1"})
    assert unavailable.status == 503


async def test_hints_are_empty_under_save_data_or_without_consent(
    make_pop: MakePop, upstream: Scripted, predictor: tuple[list[str], str], client: aiohttp.ClientSession
) -> None:
    asked, predictor_url = predictor
    running = await hinting_pop(make_pop, upstream, predictor_url)
    cookie = f"{COOKIE_NAME}={sign('u-1', SECRET.encode(), int(time.time()) + 600)}"

    async def hint_urls(path: str, extra: dict[str, str]) -> list[str]:
        got = await fetch(client, running, path, headers={"Cookie": cookie, **extra})
        assert got.status == 200
        assert "Save-Data" in got.headers["Vary"]
        doc = json.loads(got.body)
        return [hint["url"] for hint in doc["hints"]] if "hints" in doc else doc["prefetch"]

    assert await hint_urls("/v1/hints", {}) == ["/v1/items/a", "/v1/items/b"]
    assert await hint_urls("/v1/hints", {"Save-Data": "on"}) == []
    assert await hint_urls("/v1/hints", {"Cookie": f"{cookie}; bo_consent=off"}) == []
    assert await hint_urls("/v1/hints/rules.json", {"Save-Data": "on"}) == []
    assert await hint_urls("/v1/hints", {"Cookie": f"{cookie}; bo_consent=on"}) == ["/v1/items/a", "/v1/items/b"]
    assert asked  # the predictor was asked for the consenting requests

    # Pages through the POP: Link prefetch headers only with consent and without Save-Data.
    upstream.routes["/v1/events/e"] = UpstreamReply(headers=cacheable(600), body=b"{}")
    plain = await fetch(client, running, "/v1/events/e", headers={"Cookie": cookie})
    assert "rel=prefetch" in plain.headers.get("Link", "")
    refused = await fetch(client, running, "/v1/events/e", headers={"Cookie": f"{cookie}; bo_consent=off"})
    assert "Link" not in refused.headers
    await until(lambda: running.app.prefetch.prefetched == 0, "no prefetch was counted")
