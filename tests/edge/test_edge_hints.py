"""Prefetch hints: the predictor contract, headers for browsers, hint precision, the HintService adapter.

Cores with scripted inputs and fuzzing; HintService against a real scripted
predictor on loopback. The service worker's browser behaviour is tested end to
end with Chromium elsewhere; here only its file, its constants, and its URL and
connection checks run under Node (skipped when Node is missing).
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from edge import hints as hints_module
from edge.errors import PeerError
from edge.hints import (
    EMPTY_LIST_LIFETIME,
    FAILURE_CACHE_TTL,
    HINTS_RESPONSE_HEADERS,
    MAX_HINT_LIFETIME,
    MAX_HINTS,
    MAX_PREDICTOR_BODY_BYTES,
    MAX_PREDICTOR_ENTRIES,
    SERVICE_WORKER_CONTENT_TYPE,
    SPECULATION_RULES_HEADER_VALUE,
    SPECULATION_RULES_PATH,
    Hint,
    HintList,
    HintService,
    MalformedHints,
    PrefetchStats,
    format_rfc3339,
    hints_document,
    is_hintable_url,
    is_prefetch_request,
    link_header,
    parse_predictor_hints,
    parse_rfc3339,
    save_data_requested,
    service_worker_source,
    speculation_rules_json,
)
from edge.usertoken import COOKIE_NAME, InvalidToken, sign, user_from_headers

FUZZ = settings(max_examples=300, deadline=None)
NOW = 1_700_000_000.0
IN_A_MINUTE = format_rfc3339(NOW + 60)
SECRET = b"hint-tests-secret-0123456789abcdef"

MakeServer = Callable[..., Awaitable[TestServer]]


def predictor_body(user_id: str, hints: list[dict[str, Any]] | Any, expires_at: str = IN_A_MINUTE) -> bytes:
    return json.dumps({"user_id": user_id, "hints": hints, "expires_at": expires_at}).encode()


def item(n: int, score: float) -> dict[str, Any]:
    return {"url": f"/v1/items/itm-{n:06d}-01", "score": score}


# -- Which URLs may be hinted ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["/v1/items/itm-000123-01", "/v1/events/evt-000123", "/v1/events?region=eu-west", "/v1/events?region=eu&limit=20"],
)
def test_hintable_urls(url: str) -> None:
    assert is_hintable_url(url)


HOSTILE_URLS = [
    "//evil.com/x",
    "http://evil/x",
    "https://www.boxoffice.test/v1/items/itm-1",  # absolute, even our own host
    "/v1/../admin",
    "/v1/items/../../_edge/purge",
    "/v1/items/..",
    "/v1/items/.",
    "/v1/items/%2e%2e",
    "/v1/items/itm-1%2fx",
    "javascript:alert(1)",
    "JAVASCRIPT:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "/v1/items/itm-1#frag",
    "/v1/items/itm-1\r\nSet-Cookie: x=1",
    "/v1/items/itm-1>; rel=preload, </evil",
    "/v1/items/itm 1",
    "/v1/items/itm-1\\..\\admin",
    "\\\\evil.com\\x",
    "/\\evil.com",
    "/v1/items/",
    "/v1/items/itm-1/",
    "/v1/items/itm-1?x=1",
    "/v1/holds/h-1",  # not a read everybody may prefetch
    "/v1/orders/o-1",
    "/v1/changes?since=0&wait=30",  # a long-poll
    "/v1/snapshot?filter=all",  # large
    "/v1/hints",
    "/_edge/purge",
    "/sw.js",
    "v1/items/itm-1",
    " /v1/items/itm-1",
    "/v1/items/itm-ü",
    "/v1/events?region=<script>",
    "/v1/items/" + "a" * 600,
    "",
]


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_hostile_urls_are_not_hintable(url: str) -> None:
    assert not is_hintable_url(url)


@given(url=st.text(max_size=200))
@FUZZ
def test_anything_hintable_is_a_plain_same_origin_read_path(url: str) -> None:
    if is_hintable_url(url):
        assert url.startswith(("/v1/items/", "/v1/events/", "/v1/events?"))
        assert url.isascii() and url.isprintable()
        assert not any(bad in url for bad in ("..", "//", "\\", "%", "#", " ", ",", ";", ">", "<", "'", '"'))


# -- Parsing the predictor's answer ------------------------------------------------------------


def test_parse_sorts_by_score_and_keeps_the_top_few() -> None:
    entries = [item(n, score) for n, score in enumerate([0.1, 0.9, 0.5, 0.7, 0.3, 0.95, 0.2, 0.6])]
    hint_list = parse_predictor_hints(predictor_body("u-1", entries), user_id="u-1", now=NOW)
    assert len(hint_list.hints) == MAX_HINTS
    assert [hint.score for hint in hint_list.hints] == [0.95, 0.9, 0.7, 0.6, 0.5]
    assert hint_list.hints[0] == Hint("/v1/items/itm-000005-01", 0.95)
    assert hint_list.rejected == 0
    assert hint_list.expires_at == NOW + 60
    assert hint_list.user_id == "u-1"


def test_parse_ties_break_by_url_and_duplicates_keep_the_higher_score() -> None:
    entries = [item(2, 0.5), item(1, 0.5), item(1, 0.8), item(1, 0.2)]
    hint_list = parse_predictor_hints(predictor_body("u-1", entries), user_id="u-1", now=NOW)
    assert hint_list.hints == (Hint("/v1/items/itm-000001-01", 0.8), Hint("/v1/items/itm-000002-01", 0.5))


def test_parse_drops_hostile_urls_and_counts_them() -> None:
    entries = [{"url": url, "score": 0.99} for url in HOSTILE_URLS] + [item(1, 0.4)]
    hint_list = parse_predictor_hints(predictor_body("u-1", entries), user_id="u-1", now=NOW)
    assert hint_list.hints == (Hint("/v1/items/itm-000001-01", 0.4),)
    assert hint_list.rejected == len(HOSTILE_URLS)


@pytest.mark.parametrize(
    "entry",
    [
        {"url": "/v1/items/itm-1", "score": 1.5},
        {"url": "/v1/items/itm-1", "score": -0.1},
        {"url": "/v1/items/itm-1", "score": True},
        {"url": "/v1/items/itm-1", "score": "0.5"},
        {"url": "/v1/items/itm-1", "score": None},
        {"url": "/v1/items/itm-1"},
        {"url": 7, "score": 0.5},
        {"score": 0.5},
        ["/v1/items/itm-1", 0.5],
        "/v1/items/itm-1",
        None,
    ],
)
def test_parse_drops_bad_entries(entry: object) -> None:
    hint_list = parse_predictor_hints(predictor_body("u-1", [entry, item(2, 0.3)]), user_id="u-1", now=NOW)
    assert hint_list.hints == (Hint("/v1/items/itm-000002-01", 0.3),)
    assert hint_list.rejected == 1


def test_parse_drops_scores_that_overflow_to_infinity() -> None:
    # Written by hand: json.dumps would spell infinity "Infinity", which is not JSON at all.
    body = b'{"user_id": "u-1", "hints": [{"url": "/v1/items/itm-1", "score": 1e999}], '
    body += b'"expires_at": "2030-01-01T00:00:00Z"}'
    hint_list = parse_predictor_hints(body, user_id="u-1", now=NOW)
    assert (hint_list.hints, hint_list.rejected) == ((), 1)


def test_parse_accepts_integer_scores_at_the_bounds() -> None:
    hint_list = parse_predictor_hints(predictor_body("u-1", [item(1, 0), item(2, 1)]), user_id="u-1", now=NOW)
    assert [hint.score for hint in hint_list.hints] == [1.0, 0.0]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe{}",
        b"[]",
        b'"u-1"',
        b"{",
        b'{"user_id": "u-1", "hints": [], "expires_at": NaN}',
        b'{"user_id": "u-1", "hints": {}, "expires_at": "2030-01-01T00:00:00Z"}',
        b'{"user_id": "u-1", "expires_at": "2030-01-01T00:00:00Z"}',
        b'{"user_id": "u-1", "hints": []}',
        b'{"user_id": "u-1", "hints": [], "expires_at": 1900000000}',
        b'{"user_id": "u-1", "hints": [], "expires_at": "2030-01-01"}',
        b'{"user_id": "u-1", "hints": [], "expires_at": "2030-01-01T00:00:00"}',  # no offset
        b'{"user_id": "u-1", "hints": [], "expires_at": "2030-02-30T00:00:00Z"}',
        b'{"hints": [], "expires_at": "2030-01-01T00:00:00Z"}',
        b"[" * 100_000,
        b"1" * 5000,
    ],
)
def test_parse_refuses_garbage(body: bytes) -> None:
    with pytest.raises(MalformedHints):
        parse_predictor_hints(body, user_id="u-1", now=NOW)


def test_parse_refuses_another_users_list() -> None:
    with pytest.raises(MalformedHints, match="another user"):
        parse_predictor_hints(predictor_body("u-2", [item(1, 0.5)]), user_id="u-1", now=NOW)


def test_parse_refuses_too_many_entries_and_too_large_bodies() -> None:
    entries = [item(n, 0.5) for n in range(MAX_PREDICTOR_ENTRIES + 1)]
    with pytest.raises(MalformedHints, match="more than"):
        parse_predictor_hints(predictor_body("u-1", entries), user_id="u-1", now=NOW)
    padded = predictor_body("u-1", []).replace(b"{", b"{" + b" " * MAX_PREDICTOR_BODY_BYTES, 1)
    with pytest.raises(MalformedHints, match="larger"):
        parse_predictor_hints(padded, user_id="u-1", now=NOW)


def test_expired_list_is_empty_and_far_expiry_is_capped() -> None:
    expired = parse_predictor_hints(
        predictor_body("u-1", [item(1, 0.5)], format_rfc3339(NOW - 1)), user_id="u-1", now=NOW
    )
    assert expired.hints == ()
    at_the_instant = parse_predictor_hints(
        predictor_body("u-1", [item(1, 0.5)], format_rfc3339(NOW)), user_id="u-1", now=NOW
    )
    assert at_the_instant.hints == ()
    far = parse_predictor_hints(predictor_body("u-1", [item(1, 0.5)], "2099-01-01T00:00:00Z"), user_id="u-1", now=NOW)
    assert far.expires_at == NOW + MAX_HINT_LIFETIME
    assert far.current(NOW + MAX_HINT_LIFETIME - 1) == far.hints
    assert far.current(NOW + MAX_HINT_LIFETIME) == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-11-14T22:13:20Z", 1_700_000_000.0),
        ("2023-11-14t22:13:20z", 1_700_000_000.0),
        ("2023-11-14T22:13:20.250Z", 1_700_000_000.25),
        ("2023-11-15T00:13:20+02:00", 1_700_000_000.0),
        ("2023-11-14T20:13:20-02:00", 1_700_000_000.0),
        ("2016-12-31T23:59:60Z", 1_483_228_799.0),  # leap second read as :59
        ("2023-11-14T22:13:20", None),
        ("2023-11-14", None),
        ("2023-13-01T00:00:00Z", None),
        ("2023-11-14T25:00:00Z", None),
        ("1700000000", None),
        ("", None),
    ],
)
def test_parse_rfc3339(text: str, expected: float | None) -> None:
    assert parse_rfc3339(text) == expected


@given(body=st.binary(max_size=512))
@FUZZ
def test_arbitrary_bytes_raise_only_malformed_hints(body: bytes) -> None:
    try:
        hint_list = parse_predictor_hints(body, user_id="u-1", now=NOW)
    except MalformedHints:
        return
    assert all(is_hintable_url(hint.url) for hint in hint_list.hints)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(
    entries=st.lists(
        st.fixed_dictionaries(
            {"url": st.one_of(st.sampled_from(HOSTILE_URLS), st.text(max_size=40)), "score": json_values}
        )
        | json_values,
        max_size=20,
    ),
    expires_at=st.one_of(st.just(IN_A_MINUTE), json_values),
)
@FUZZ
def test_structured_garbage_raises_only_malformed_hints(entries: list[Any], expires_at: Any) -> None:
    body = json.dumps({"user_id": "u-1", "hints": entries, "expires_at": expires_at}).encode()
    try:
        hint_list = parse_predictor_hints(body, user_id="u-1", now=NOW)
    except MalformedHints:
        return
    assert len(hint_list.hints) <= MAX_HINTS
    assert all(is_hintable_url(hint.url) and 0.0 <= hint.score <= 1.0 for hint in hint_list.hints)
    scores = [hint.score for hint in hint_list.hints]
    assert scores == sorted(scores, reverse=True)


def test_malformed_hints_is_a_peer_error() -> None:
    assert issubclass(MalformedHints, PeerError)


# -- What browsers get -------------------------------------------------------------------------

THREE = (Hint("/v1/items/itm-1", 0.9), Hint("/v1/events/evt-2", 0.8), Hint("/v1/events?region=eu", 0.7))
FOUR = (*THREE, Hint("/v1/items/itm-4", 0.6))


def test_speculation_rules() -> None:
    rules = json.loads(speculation_rules_json(FOUR))
    assert rules == {"prefetch": [{"source": "list", "urls": [hint.url for hint in FOUR]}]}
    assert json.loads(speculation_rules_json(())) == {"prefetch": []}
    # The header names the rules resource; its value is an RFC 8941 list of strings.
    assert SPECULATION_RULES_HEADER_VALUE == '"/v1/hints/rules.json"'
    assert SPECULATION_RULES_PATH == "/v1/hints/rules.json"


def test_link_header() -> None:
    assert link_header(FOUR) == (
        "</v1/items/itm-1>; rel=prefetch, </v1/events/evt-2>; rel=prefetch, </v1/events?region=eu>; rel=prefetch"
    )
    assert link_header(FOUR, top=1) == "</v1/items/itm-1>; rel=prefetch"
    assert link_header(()) == ""
    # Defence in depth: a Hint built by hand with a bad URL never reaches a header.
    assert link_header((Hint("/x>; rel=preload, <//evil", 1.0),)) == ""


def test_hints_document() -> None:
    hint_list = HintList("u-1", THREE, NOW + 60)
    document = json.loads(hints_document(hint_list, NOW))
    assert document == {
        "user_id": "u-1",
        "hints": [{"url": hint.url, "score": hint.score} for hint in THREE],
        "expires_at": "2023-11-14T22:14:20Z",
    }
    assert json.loads(hints_document(hint_list, NOW + 60))["hints"] == []
    assert HINTS_RESPONSE_HEADERS["Cache-Control"] == "private, no-store"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([("Sec-Purpose", "prefetch")], True),
        ([("sec-purpose", "prefetch;anonymous-client-ip")], True),
        ([("Sec-Purpose", "Prefetch")], True),
        ([("X-Sec-Purpose", "prefetch")], True),
        ([("Purpose", "prefetch")], True),
        ([("Sec-Purpose", "prerender")], False),
        ([("Sec-Purpose", "")], False),
        ([("X-Purpose", "prefetch")], False),
        ([], False),
    ],
)
def test_is_prefetch_request(lines: list[tuple[str, str]], expected: bool) -> None:
    assert is_prefetch_request(CIMultiDict(lines)) is expected


def test_save_data_requested() -> None:
    assert save_data_requested(CIMultiDict([("Save-Data", "on")]))
    assert save_data_requested(CIMultiDict([("save-data", "On")]))
    assert not save_data_requested(CIMultiDict([("Save-Data", "off")]))
    assert not save_data_requested(CIMultiDict())


# -- Hint precision ----------------------------------------------------------------------------


def test_precision_counts_each_prefetch_used_once_by_the_same_user() -> None:
    stats = PrefetchStats(use_window=300)
    assert stats.precision is None
    for url in ("/v1/items/a", "/v1/items/b", "/v1/items/c", "/v1/items/d"):
        stats.record("alice", url, prefetch=True, now=NOW)
    stats.record("alice", "/v1/items/a", prefetch=False, now=NOW + 10)
    stats.record("alice", "/v1/items/a", prefetch=False, now=NOW + 11)  # second use: not counted again
    stats.record("bob", "/v1/items/b", prefetch=False, now=NOW + 12)  # another user's request
    stats.record("alice", "/v1/items/z", prefetch=False, now=NOW + 13)  # never prefetched
    stats.record("alice", "/v1/items/c", prefetch=False, now=NOW + 301)  # too late
    stats.record(None, "/v1/items/d", prefetch=True, now=NOW)  # unattributed
    assert (stats.prefetched, stats.used, stats.prefetched_unattributed) == (4, 1, 1)
    assert stats.precision == 0.25


def test_precision_memory_is_bounded() -> None:
    stats = PrefetchStats(max_tracked_users=3)
    for user in range(10):
        for url in range(100):
            stats.record(f"u-{user}", f"/v1/items/{url}", prefetch=True, now=NOW)
    assert stats.tracked_users == 3
    # The newest users and their newest prefetches are the ones remembered.
    stats.record("u-9", "/v1/items/99", prefetch=False, now=NOW + 1)
    stats.record("u-9", "/v1/items/0", prefetch=False, now=NOW + 1)
    stats.record("u-0", "/v1/items/99", prefetch=False, now=NOW + 1)
    assert stats.used == 1
    # Users whose every prefetch was used are forgotten.
    stats.record("solo", "/v1/items/1", prefetch=True, now=NOW)  # evicts the least recent user, u-7
    assert stats.tracked_users == 3
    stats.record("solo", "/v1/items/1", prefetch=False, now=NOW)
    assert stats.tracked_users == 2
    assert stats.used == 2


# -- HintService against a scripted predictor on loopback --------------------------------------


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class ScriptedPredictor:
    """`GET /v1/hints/{user_id}` answering what the test scripted; records every request."""

    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, bytes]] = {}
        self.requests: list[str] = []
        self.hold = asyncio.Event()  # while clear, requests for users in `slow` wait
        self.slow: set[str] = set()
        self.arrived = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/hints/{user_id}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        self.requests.append(user_id)
        self.arrived.set()
        if user_id in self.slow:
            await asyncio.wait_for(self.hold.wait(), timeout=10)
        status, body = self.answers.get(user_id, (404, b""))
        return web.Response(status=status, body=body, content_type="application/json")


@pytest.fixture
async def predictor(aiohttp_server: MakeServer) -> AsyncIterator[tuple[ScriptedPredictor, TestServer]]:
    scripted = ScriptedPredictor()
    server = await aiohttp_server(scripted.app(), shutdown_timeout=0.1)
    yield scripted, server
    scripted.hold.set()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


def make_service(
    session: aiohttp.ClientSession | None, url: str | None, **kwargs: Any
) -> tuple[HintService, FakeClock, FakeClock]:
    wall, monotonic = FakeClock(NOW), FakeClock(1000.0)
    service = HintService(session, url, wall_clock=wall, monotonic_clock=monotonic, **kwargs)
    return service, wall, monotonic


def base_url(server: TestServer) -> str:
    return str(server.make_url("/")).rstrip("/")


async def test_service_fetches_and_caches_briefly(
    predictor: tuple[ScriptedPredictor, TestServer], session: aiohttp.ClientSession
) -> None:
    scripted, server = predictor
    scripted.answers["alice"] = (200, predictor_body("alice", [item(1, 0.9), item(2, 0.4)]))
    service, _, monotonic = make_service(session, base_url(server) + "/", cache_ttl=5)

    first = await service.hints_for("alice")
    assert [hint.url for hint in first.hints] == ["/v1/items/itm-000001-01", "/v1/items/itm-000002-01"]
    assert await service.hints_for("alice") == first
    monotonic.now += 4.9
    assert await service.hints_for("alice") == first
    assert scripted.requests == ["alice"]
    assert service.stats.cache_hits == 2

    monotonic.now += 0.2
    scripted.answers["alice"] = (200, predictor_body("alice", [item(3, 0.7)]))
    refreshed = await service.hints_for("alice")
    assert [hint.url for hint in refreshed.hints] == ["/v1/items/itm-000003-01"]
    assert scripted.requests == ["alice", "alice"]


async def test_service_cache_never_outlives_the_list(
    predictor: tuple[ScriptedPredictor, TestServer], session: aiohttp.ClientSession
) -> None:
    scripted, server = predictor
    scripted.answers["alice"] = (200, predictor_body("alice", [item(1, 0.9)], format_rfc3339(NOW + 2)))
    service, wall, _ = make_service(session, base_url(server), cache_ttl=60)
    assert len((await service.hints_for("alice")).hints) == 1
    wall.now += 2
    assert (await service.hints_for("alice")).current(wall.now) == ()
    assert len(scripted.requests) == 2


async def test_service_cache_is_bounded(
    predictor: tuple[ScriptedPredictor, TestServer], session: aiohttp.ClientSession
) -> None:
    scripted, server = predictor
    service, _, _ = make_service(session, base_url(server), max_cached_users=2)
    for user in ("u-1", "u-2", "u-3", "u-1"):
        await service.hints_for(user)
    assert scripted.requests == ["u-1", "u-2", "u-3", "u-1"]  # u-1 had been evicted


async def test_service_timeout_gives_an_empty_list(
    predictor: tuple[ScriptedPredictor, TestServer], session: aiohttp.ClientSession
) -> None:
    scripted, server = predictor
    scripted.answers["alice"] = (200, predictor_body("alice", [item(1, 0.9)]))
    scripted.slow.add("alice")
    service, _, monotonic = make_service(session, base_url(server), timeout=0.05)
    hint_list = await service.hints_for("alice")
    assert hint_list.hints == ()
    assert hint_list.expires_at == NOW + EMPTY_LIST_LIFETIME
    assert service.stats.failures == 1
    # A failure is remembered only briefly, so a down predictor is not hammered.
    await service.hints_for("alice")
    assert len(scripted.requests) == 1
    monotonic.now += FAILURE_CACHE_TTL
    scripted.slow.clear()
    assert len((await service.hints_for("alice")).hints) == 1


@pytest.mark.parametrize(
    ("status", "body", "malformed"),
    [
        (200, b"not json", True),
        (200, b'{"user_id": "bob", "hints": [], "expires_at": "2030-01-01T00:00:00Z"}', True),
        (200, b" " * (MAX_PREDICTOR_BODY_BYTES + 1), True),
        (500, b"{}", True),
        (302, b"", True),
    ],
)
async def test_service_bad_answers_give_an_empty_list_and_are_counted(
    predictor: tuple[ScriptedPredictor, TestServer],
    session: aiohttp.ClientSession,
    status: int,
    body: bytes,
    malformed: bool,
) -> None:
    scripted, server = predictor
    scripted.answers["alice"] = (status, body)
    service, _, _ = make_service(session, base_url(server))
    assert (await service.hints_for("alice")).hints == ()
    assert service.stats.failures == 1
    assert service.stats.malformed == int(malformed)


async def test_service_unknown_user_and_rejected_entries(
    predictor: tuple[ScriptedPredictor, TestServer], session: aiohttp.ClientSession
) -> None:
    scripted, server = predictor
    scripted.answers["alice"] = (200, predictor_body("alice", [item(1, 0.5), {"url": "//evil.com/x", "score": 1}]))
    service, _, _ = make_service(session, base_url(server))
    assert (await service.hints_for("nobody")).hints == ()
    assert (service.stats.unknown_users, service.stats.failures) == (1, 0)
    assert len((await service.hints_for("alice")).hints) == 1
    assert service.stats.rejected_hints == 1


async def test_service_predictor_down_or_not_configured(session: aiohttp.ClientSession) -> None:
    # A port nothing listens on: bind one, note it, close it.
    probe = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    down, _, _ = make_service(session, f"http://127.0.0.1:{port}")
    assert (await down.hints_for("alice")).hints == ()
    assert down.stats.failures == 1

    for service, _, _ in (make_service(None, "http://127.0.0.1:1"), make_service(session, None)):
        assert (await service.hints_for("alice")).hints == ()
        assert service.stats.not_configured == 1
        assert not service.configured


async def test_service_coalesces_concurrent_lookups(
    predictor: tuple[ScriptedPredictor, TestServer], session: aiohttp.ClientSession
) -> None:
    scripted, server = predictor
    scripted.answers["alice"] = (200, predictor_body("alice", [item(1, 0.9)]))
    scripted.slow.add("alice")
    service, _, _ = make_service(session, base_url(server), timeout=5)
    lookups = [asyncio.ensure_future(service.hints_for("alice")) for _ in range(5)]
    await asyncio.wait_for(scripted.arrived.wait(), timeout=5)
    scripted.hold.set()
    results = await asyncio.gather(*lookups)
    assert scripted.requests == ["alice"]
    assert all(result == results[0] and len(result.hints) == 1 for result in results)


async def test_service_cancelled_leader_leaves_waiters_with_an_empty_list(
    predictor: tuple[ScriptedPredictor, TestServer], session: aiohttp.ClientSession
) -> None:
    scripted, server = predictor
    scripted.answers["alice"] = (200, predictor_body("alice", [item(1, 0.9)]))
    scripted.slow.add("alice")
    service, _, _ = make_service(session, base_url(server), timeout=5)
    leader = asyncio.ensure_future(service.hints_for("alice"))
    await asyncio.wait_for(scripted.arrived.wait(), timeout=5)
    waiter = asyncio.ensure_future(service.hints_for("alice"))
    await asyncio.sleep(0)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert (await asyncio.wait_for(waiter, timeout=5)).hints == ()


# -- User isolation end to end -------------------------------------------------------------------


async def test_a_token_only_ever_reads_its_own_list(
    predictor: tuple[ScriptedPredictor, TestServer], session: aiohttp.ClientSession, aiohttp_server: MakeServer
) -> None:
    """The composition the POP's route uses: the user id comes only from the verified token.

    The route here is the test's, written the way edge/server.py is meant to
    call these modules; the properties checked are the modules' own: the
    token names the user, HintService asks only for that user and refuses a
    list naming anyone else.
    """
    scripted, predictor_server = predictor
    scripted.answers["alice"] = (200, predictor_body("alice", [item(1, 0.9)]))
    scripted.answers["bob"] = (200, predictor_body("bob", [item(2, 0.8)]))
    service, _, _ = make_service(session, base_url(predictor_server))

    async def get_hints(request: web.Request) -> web.Response:
        try:
            user_id = user_from_headers(request.headers, SECRET, NOW)
        except InvalidToken as exc:
            raise web.HTTPUnauthorized(text=exc.message) from exc
        hint_list = await service.hints_for(user_id)
        return web.Response(
            body=hints_document(hint_list, hint_list.expires_at - 1),
            content_type="application/json",
            headers=HINTS_RESPONSE_HEADERS,
        )

    app = web.Application()
    app.router.add_get("/v1/hints", get_hints)
    app.router.add_get("/v1/hints/{user_id}", get_hints)
    pop = await aiohttp_server(app, shutdown_timeout=0.1)
    alice = sign("alice", SECRET, int(NOW) + 3600)
    bob_forged = sign("bob", b"not-the-pop-secret-000000000000", int(NOW) + 3600)
    bob_expired = sign("bob", SECRET, int(NOW) - 1)

    async def ask(path: str, headers: dict[str, str]) -> tuple[int, Any]:
        async with session.get(pop.make_url(path), headers=headers) as response:
            return response.status, (await response.json() if response.status == 200 else None)

    as_alice = {"Cookie": f"{COOKIE_NAME}={alice}"}
    for path, headers in [
        ("/v1/hints", as_alice),
        ("/v1/hints?user_id=bob", as_alice),
        ("/v1/hints/bob", as_alice),
        ("/v1/hints", {"Authorization": f"Bearer {alice}", "Cookie": f"{COOKIE_NAME}={bob_forged}"}),
        ("/v1/hints", {**as_alice, "X-User-Id": "bob"}),
    ]:
        status, document = await ask(path, headers)
        assert status == 200
        assert document["user_id"] == "alice"
        assert [hint["url"] for hint in document["hints"]] == ["/v1/items/itm-000001-01"]

    for headers in [
        {},
        {"Cookie": f"{COOKIE_NAME}={bob_forged}"},
        {"Cookie": f"{COOKIE_NAME}={bob_expired}"},
        {"Authorization": "Bearer bob"},
        {"Cookie": f"{COOKIE_NAME}=bob"},
    ]:
        status, _ = await ask("/v1/hints", headers)
        assert status == 401
    assert set(scripted.requests) == {"alice"}

    # A predictor that answers with someone else's list is refused, not relayed.
    scripted.answers["carol"] = (200, predictor_body("bob", [item(2, 0.8)]))
    status, document = await ask("/v1/hints", {"Cookie": f"{COOKIE_NAME}={sign('carol', SECRET, int(NOW) + 60)}"})
    assert (status, document["user_id"], document["hints"]) == (200, "carol", [])


# -- The service worker file (weak checks: browser behaviour is tested with Chromium later) ------


def test_service_worker_is_packaged_text_with_its_caps_and_checks() -> None:
    source = service_worker_source().decode("utf-8")
    assert SERVICE_WORKER_CONTENT_TYPE.startswith("text/javascript")
    for needle in (
        "const CACHE_NAME = 'bo-prefetch-v1'",
        "const MAX_ENTRIES = 20",
        "const MAX_TOTAL_BYTES = 2 * 1024 * 1024",
        f"const MAX_HINTS = {MAX_HINTS}",
        "connection.saveData",
        "effectiveType",
        "'Save-Data'",
        "'X-Sec-Purpose': 'prefetch'",
        "'X-Served-From', 'prefetch'",
        "request.method !== 'GET'",
        "clients.claim()",
        "credentials: 'same-origin'",
    ):
        assert needle in source, needle
    # The worker's URL filter is the server's, character for character.
    assert f"const ID = '{hints_module._ID}'" in source
    assert f"const QUERY = '{hints_module._QUERY}'" in source


NODE = shutil.which("node")

# Loads sw.js into a sandbox with a stub worker global, then runs its URL and
# connection checks on the inputs given on stdin.
NODE_HARNESS = r"""
const vm = require('vm');
const fs = require('fs');
const input = JSON.parse(fs.readFileSync(0, 'utf8'));
const results = {};
for (const [name, connection] of Object.entries(input.connections)) {
  const listeners = {};
  const self = {
    location: { origin: 'https://www.boxoffice.test' },
    navigator: connection === null ? {} : { connection },
    addEventListener: (type, fn) => { listeners[type] = fn; },
  };
  const context = vm.createContext({ self, URL, Date, Number, Set, RegExp, Promise, console });
  vm.runInContext(input.source, context);
  results[name] = {
    listeners: Object.keys(listeners).sort(),
    allowed: vm.runInContext('prefetchAllowed()', context),
    hintable: input.urls.map((url) => vm.runInContext('isHintable(' + JSON.stringify(url) + ')', context)),
    sameOrigin: input.urls.map((url) => vm.runInContext('sameOriginPath(' + JSON.stringify(url) + ')', context)),
  };
}
process.stdout.write(JSON.stringify(results));
"""


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_service_worker_checks_under_node() -> None:
    assert NODE is not None
    urls = [*HOSTILE_URLS, "/v1/items/itm-000123-01", "/v1/events?region=eu", "/v1/events/evt-1"]
    connections = {
        "none": None,
        "fast": {"saveData": False, "effectiveType": "4g"},
        "save_data": {"saveData": True, "effectiveType": "4g"},
        "slow_2g": {"saveData": False, "effectiveType": "slow-2g"},
        "2g": {"saveData": False, "effectiveType": "2g"},
        "3g": {"saveData": False, "effectiveType": "3g"},
    }
    source = service_worker_source().decode("utf-8")
    subprocess.run([NODE, "--check", "-"], input=source, text=True, check=True, timeout=30)
    completed = subprocess.run(
        [NODE, "-e", NODE_HARNESS],
        input=json.dumps({"source": source, "urls": urls, "connections": connections}),
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    results = json.loads(completed.stdout)
    allowed = {name: result["allowed"] for name, result in results.items()}
    assert allowed == {"none": True, "fast": True, "save_data": False, "slow_2g": False, "2g": False, "3g": True}
    assert results["none"]["listeners"] == ["activate", "fetch", "install", "message"]
    # The worker's URL filter agrees with the server's on every URL.
    assert results["none"]["hintable"] == [is_hintable_url(url) for url in urls]
    same_origin = dict(zip(urls, results["none"]["sameOrigin"], strict=True))
    assert same_origin["//evil.com/x"] is None
    assert same_origin["http://evil/x"] is None
    assert same_origin["https://www.boxoffice.test/v1/items/itm-1"] == "/v1/items/itm-1"
    assert same_origin["/v1/items/itm-1#frag"] == "/v1/items/itm-1"


def test_float_scores_survive_the_round_trip() -> None:
    hint_list = parse_predictor_hints(
        predictor_body("u-1", [{"url": "/v1/items/itm-1", "score": 1 / 3}]), user_id="u-1", now=NOW
    )
    document = json.loads(hints_document(hint_list, NOW))
    assert math.isclose(document["hints"][0]["score"], 1 / 3)
