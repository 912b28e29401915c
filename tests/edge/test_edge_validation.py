"""Conditional requests both ways and invalidation (RFC 9111 sections 4.3 and 4.4, RFC 9110 section 13).

Scripted tables with RFC 9110's entity-tag examples; a 304 round trip that
makes a stale response fresh again; invalidation that never crosses origins.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import MalformedHeader, MalformedRequestTarget
from edge.freshness import (
    Action,
    client_not_modified,
    conditional_headers,
    decide,
    invalidated_urls,
    not_modified_applies,
    not_modified_headers,
    refreshed_from_304,
    update_from_304,
)
from edge.httpdate import format_http_date
from edge.messages import Headers, Request, StoredResponse

FUZZ = settings(max_examples=300, deadline=None)
T0 = 784111777
DATE_T0 = format_http_date(T0)
EARLIER = format_http_date(T0 - 3600)
LATER = format_http_date(T0 + 3600)


def fields(*lines: tuple[str, str]) -> Headers:
    return Headers(lines)


# -- Section 4.3.1: the validators we send upstream ---------------------------------


@pytest.mark.parametrize(
    ("stored_lines", "expected"),
    [
        (
            [("ETag", '"xyzzy"'), ("Last-Modified", EARLIER)],
            [("If-None-Match", '"xyzzy"'), ("If-Modified-Since", EARLIER)],
        ),
        ([("ETag", ' W/"xyzzy" ')], [("If-None-Match", 'W/"xyzzy"')]),
        ([("Last-Modified", EARLIER)], [("If-Modified-Since", EARLIER)]),
        ([], []),
        # Malformed or ambiguous validators are not sent.
        ([("ETag", "xyzzy"), ("Last-Modified", "yesterday")], []),
        ([("ETag", '"a"'), ("ETag", '"b"'), ("Last-Modified", EARLIER), ("Last-Modified", LATER)], []),
    ],
)
def test_conditional_headers(stored_lines: list[tuple[str, str]], expected: list[tuple[str, str]]) -> None:
    assert conditional_headers(Headers(stored_lines)) == Headers(expected)


# -- Section 4.3.4: applying a 304 -----------------------------------------------------


@pytest.mark.parametrize(
    ("stored_lines", "lines_304", "applies"),
    [
        ([("ETag", '"v1"')], [], True),
        ([("ETag", '"v1"')], [("ETag", '"v1"')], True),
        ([("ETag", '"v1"')], [("ETag", '"v2"')], False),
        # A weak validator in the 304 compares weakly; a strong one strongly.
        ([("ETag", '"v1"')], [("ETag", 'W/"v1"')], True),
        ([("ETag", 'W/"v1"')], [("ETag", '"v1"')], False),
        ([], [("ETag", '"v1"')], False),
        ([("ETag", '"v1"')], [("ETag", "garbage")], False),
        ([("Last-Modified", EARLIER)], [("Last-Modified", EARLIER)], True),
        ([("Last-Modified", EARLIER)], [("Last-Modified", LATER)], False),
        ([], [], True),
    ],
)
def test_not_modified_applies(
    stored_lines: list[tuple[str, str]], lines_304: list[tuple[str, str]], applies: bool
) -> None:
    assert not_modified_applies(Headers(stored_lines), Headers(lines_304)) is applies


def test_update_from_304_replaces_fields_except_content_length() -> None:
    stored = fields(
        ("Date", EARLIER),
        ("Cache-Control", "max-age=60"),
        ("Content-Length", "1234"),
        ("Content-Type", "application/json"),
        ("ETag", '"v1"'),
        ("Age", "30"),
        ("X-Old", "a"),
        ("X-Old", "b"),
    )
    response_304 = fields(
        ("Date", DATE_T0),
        ("Cache-Control", "max-age=120"),
        ("Content-Length", "0"),
        ("ETag", '"v1"'),
        ("X-Old", "c"),
        ("Connection", "X-Hop"),
        ("X-Hop", "1"),
        ("Transfer-Encoding", "chunked"),
    )
    assert update_from_304(stored, response_304, received_at=T0) == fields(
        ("Content-Length", "1234"),
        ("Content-Type", "application/json"),
        ("Date", DATE_T0),
        ("Cache-Control", "max-age=120"),
        ("ETag", '"v1"'),
        ("X-Old", "c"),
    )


def test_update_from_304_dates_and_ages_belong_to_the_new_exchange() -> None:
    stored = fields(("Date", EARLIER), ("Age", "30"), ("Cache-Control", "max-age=60"))
    assert update_from_304(stored, fields(), received_at=T0 + 0.5) == fields(
        ("Date", DATE_T0), ("Cache-Control", "max-age=60")
    )
    assert update_from_304(stored, fields(("Age", "3")), received_at=T0).get_all("age") == ("3",)


def test_update_from_304_applies_the_new_qualified_directives() -> None:
    stored = fields(("Date", EARLIER), ("Set-Cookie", "s=1"), ("X-User", "ann"))
    response_304 = fields(("Date", DATE_T0), ("Cache-Control", 'max-age=5, no-cache="Set-Cookie", private="X-User"'))
    assert update_from_304(stored, response_304, received_at=T0).names() == {"date", "cache-control"}
    assert "x-user" in update_from_304(stored, response_304, received_at=T0, shared=False)


def test_a_304_makes_a_stale_response_fresh_again() -> None:
    stored_headers = fields(("Date", EARLIER), ("Cache-Control", "max-age=60"), ("ETag", '"v1"'))
    stored = StoredResponse(200, stored_headers, request_time=T0 - 3600, response_time=T0 - 3600)
    assert decide(Request("GET"), stored, T0).action is Action.MUST_REVALIDATE
    assert conditional_headers(stored.headers).get_all("if-none-match") == ('"v1"',)
    response_304 = fields(("Date", DATE_T0), ("ETag", '"v1"'))
    assert not_modified_applies(stored.headers, response_304)
    refreshed = refreshed_from_304(stored, response_304, request_time=T0 - 1, response_time=T0)
    assert (refreshed.request_time, refreshed.response_time) == (T0 - 1, T0)
    decision = decide(Request("GET"), refreshed, T0 + 10)
    assert decision.action is Action.FRESH
    assert decision.age == 11  # one second of round trip plus ten of residence


# -- Section 4.3.2 and RFC 9110 13.1-13.2: answering the client's conditionals -----------

STORED = fields(("Date", DATE_T0), ("ETag", '"xyzzy"'), ("Last-Modified", EARLIER))


@pytest.mark.parametrize(
    ("request_lines", "not_modified"),
    [
        # RFC 9110 section 13.1.2's examples, with weak comparison.
        ([("If-None-Match", '"xyzzy"')], True),
        ([("If-None-Match", 'W/"xyzzy"')], True),
        ([("If-None-Match", '"xyzzy", "r2d2xxxx", "c3piozzzz"')], True),
        ([("If-None-Match", '"r2d2xxxx"'), ("If-None-Match", 'W/"xyzzy"')], True),
        ([("If-None-Match", 'W/"r2d2xxxx", W/"c3piozzzz"')], False),
        ([("If-None-Match", "*")], True),
        ([("If-None-Match", "xyzzy")], False),
        ([("If-None-Match", '"xyzzy", *')], False),
        # If-None-Match decides alone, even when If-Modified-Since would match.
        ([("If-None-Match", '"other"'), ("If-Modified-Since", DATE_T0)], False),
        # RFC 9110 section 13.1.3.
        ([("If-Modified-Since", EARLIER)], True),
        ([("If-Modified-Since", DATE_T0)], True),
        ([("If-Modified-Since", format_http_date(T0 - 3601))], False),
        ([("If-Modified-Since", "Sunday, 06-Nov-94 08:49:37 GMT")], True),
        ([("If-Modified-Since", "yesterday")], False),
        ([("If-Modified-Since", DATE_T0), ("If-Modified-Since", DATE_T0)], False),
        # If-Match and If-Unmodified-Since are for the origin.
        ([("If-Match", '"xyzzy"')], False),
        ([("If-Unmodified-Since", DATE_T0)], False),
        ([], False),
    ],
)
def test_client_not_modified(request_lines: list[tuple[str, str]], not_modified: bool) -> None:
    assert client_not_modified(Headers(request_lines), STORED) is not_modified


def test_client_not_modified_limits() -> None:
    asks = fields(("If-None-Match", '"xyzzy"'))
    assert client_not_modified(asks, STORED, method="HEAD")
    assert not client_not_modified(asks, STORED, method="POST")
    assert not client_not_modified(asks, STORED, stored_status=404)  # RFC 9110 section 13.2.1
    assert not client_not_modified(asks, fields(("Date", DATE_T0)))


def test_if_modified_since_falls_back_to_date_then_receipt_time() -> None:
    # RFC 9111 section 4.3.2.
    since = fields(("If-Modified-Since", DATE_T0))
    assert client_not_modified(since, fields(("Date", EARLIER)))
    assert not client_not_modified(since, fields(("Date", LATER)))
    assert client_not_modified(since, fields(), received_at=T0)
    assert not client_not_modified(since, fields(), received_at=T0 + 1)
    assert not client_not_modified(since, fields())


def test_not_modified_headers() -> None:
    # RFC 9110 section 15.4.5.
    stored = fields(
        ("Date", DATE_T0),
        ("Content-Type", "application/json"),
        ("Content-Length", "10"),
        ("Cache-Control", "max-age=60"),
        ("ETag", '"v1"'),
        ("Vary", "Accept-Encoding"),
        ("Last-Modified", EARLIER),
        ("Content-Location", "/v1/items/7"),
    )
    assert not_modified_headers(stored) == fields(
        ("Date", DATE_T0),
        ("Cache-Control", "max-age=60"),
        ("ETag", '"v1"'),
        ("Vary", "Accept-Encoding"),
        ("Content-Location", "/v1/items/7"),
    )
    assert not_modified_headers(stored.without(["etag"])).get_all("last-modified") == (EARLIER,)


# -- Section 4.4: invalidation -------------------------------------------------------------

ITEM = "https://www.boxoffice.test/v1/items/7"


@pytest.mark.parametrize(
    ("method", "status", "response_lines", "urls"),
    [
        ("GET", 200, [], []),
        ("HEAD", 200, [], []),
        ("OPTIONS", 204, [], []),
        ("POST", 200, [], [ITEM]),
        ("PUT", 204, [], [ITEM]),
        ("DELETE", 200, [], [ITEM]),
        ("PATCH", 200, [], [ITEM]),
        # Methods of unknown safety count as unsafe; methods are case-sensitive.
        ("PURCHASE", 200, [], [ITEM]),
        ("get", 200, [], [ITEM]),
        # Only non-error responses (2xx, 3xx).
        ("POST", 303, [], [ITEM]),
        ("POST", 404, [], []),
        ("POST", 500, [], []),
        ("POST", 101, [], []),
        # Location and Content-Location, resolved against the target, same origin only.
        ("POST", 201, [("Location", "/v1/holds/9")], [ITEM, "https://www.boxoffice.test/v1/holds/9"]),
        ("POST", 201, [("Location", "8")], [ITEM, "https://www.boxoffice.test/v1/items/8"]),
        ("POST", 201, [("Location", "../events/3?x=1#top")], [ITEM, "https://www.boxoffice.test/v1/events/3?x=1"]),
        ("PUT", 200, [("Content-Location", "HTTPS://WWW.boxoffice.test:443/v1/items/7?v=2")], [ITEM, ITEM + "?v=2"]),
        ("POST", 201, [("Location", ITEM)], [ITEM]),
        ("POST", 201, [("Location", "https://other.test/v1/items/7")], [ITEM]),
        ("POST", 201, [("Location", "http://www.boxoffice.test/v1/items/8")], [ITEM]),
        ("POST", 201, [("Location", "https://www.boxoffice.test:8443/v1/items/8")], [ITEM]),
        ("POST", 201, [("Location", "//other.test/x")], [ITEM]),
        # Unusable values are skipped, never fatal.
        ("POST", 201, [("Location", "https://[::1/x")], [ITEM]),
        ("POST", 201, [("Location", "/a b")], [ITEM]),
        ("POST", 201, [("Location", "mailto:x@y")], [ITEM]),
        ("POST", 201, [("Location", "/a"), ("Location", "/b")], [ITEM]),
        (
            "POST",
            201,
            [("Location", "/v1/holds/9"), ("Content-Location", "/v1/holds/9")],
            [ITEM, "https://www.boxoffice.test/v1/holds/9"],
        ),
    ],
)
def test_invalidated_urls(method: str, status: int, response_lines: list[tuple[str, str]], urls: list[str]) -> None:
    assert invalidated_urls(method, status, ITEM, Headers(response_lines)) == tuple(urls)


def test_invalidated_urls_needs_an_absolute_target() -> None:
    with pytest.raises(MalformedRequestTarget):
        invalidated_urls("POST", 200, "/v1/items/7", Headers())


@FUZZ
@given(st.text(max_size=60), st.text(max_size=60))
def test_invalidation_never_leaves_the_origin(location: str, content_location: str) -> None:
    try:
        response_headers = Headers([("Location", location), ("Content-Location", content_location)])
    except MalformedHeader:  # CR, LF or NUL: such a response never gets this far
        return
    urls = invalidated_urls("POST", 201, ITEM, response_headers)
    assert urls[0] == ITEM
    assert all(url.startswith("https://www.boxoffice.test/") for url in urls)
    assert len(set(urls)) == len(urls)
