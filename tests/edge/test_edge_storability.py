"""Whether a response may be stored, and which of its fields (RFC 9111 sections 3, 3.1, 3.5, 5.2.2).

A scripted table walks every condition of section 3 and this cache's stated
policies (GET only, Set-Cookie, Vary: *), then properties: a response with
no-store, or to a request with no-store, is never storable.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.freshness import headers_to_store, is_storable, why_not_storable
from edge.httpdate import format_http_date
from edge.messages import Headers, Request, Response

FUZZ = settings(max_examples=300, deadline=None)
T0 = 784111777
MAX_AGE = ("Cache-Control", "max-age=60")


@pytest.mark.parametrize(
    ("method", "request_lines", "status", "response_lines", "shared", "storable"),
    [
        ("GET", [], 200, [MAX_AGE], True, True),
        # GET only: HEAD is answered from the stored GET; other methods are not cached here.
        ("HEAD", [], 200, [MAX_AGE], True, False),
        ("POST", [], 200, [MAX_AGE], True, False),
        # Final, understood status codes only.
        ("GET", [], 103, [MAX_AGE], True, False),
        ("GET", [], 600, [MAX_AGE], True, False),
        ("GET", [], 206, [MAX_AGE], True, False),
        ("GET", [], 304, [MAX_AGE], True, False),
        ("GET", [], 299, [MAX_AGE], True, True),
        # 5.2.1.5 and 5.2.2.5: no-store from either side.
        ("GET", [("Cache-Control", "no-store")], 200, [MAX_AGE], True, False),
        ("GET", [], 200, [("Cache-Control", "public, max-age=60, no-store")], True, False),
        ("GET", [("Pragma", "no-store")], 200, [MAX_AGE], True, True),  # Pragma knows only no-cache
        # 5.2.2.3: must-understand needs a status we understand, and never overrides no-store here.
        ("GET", [], 200, [("Cache-Control", "must-understand, max-age=60")], True, True),
        ("GET", [], 299, [("Cache-Control", "must-understand, max-age=60")], True, False),
        ("GET", [], 200, [("Cache-Control", "must-understand, no-store, max-age=60")], True, False),
        # 5.2.2.7: private keeps a response out of shared caches; the qualified form only its fields.
        ("GET", [], 200, [("Cache-Control", "private, max-age=60")], True, False),
        ("GET", [], 200, [("Cache-Control", "private")], False, True),
        ("GET", [], 302, [("Cache-Control", "private")], False, True),
        ("GET", [], 200, [("Cache-Control", 'private="X-User", max-age=60')], True, True),
        # 3.5: Authorization in a shared cache needs public, must-revalidate or s-maxage.
        ("GET", [("Authorization", "Bearer t")], 200, [MAX_AGE], True, False),
        ("GET", [("Authorization", "Bearer t")], 200, [("Cache-Control", "public")], True, True),
        ("GET", [("Authorization", "Bearer t")], 200, [("Cache-Control", "must-revalidate, max-age=9")], True, True),
        ("GET", [("Authorization", "Bearer t")], 200, [("Cache-Control", "s-maxage=60")], True, True),
        ("GET", [("Authorization", "Bearer t")], 200, [MAX_AGE], False, True),
        # Set-Cookie (section 7.3 and our policy): stored by a shared cache only with the field excluded.
        ("GET", [], 200, [MAX_AGE, ("Set-Cookie", "session=1")], True, False),
        ("GET", [], 200, [("Cache-Control", "public, max-age=60"), ("Set-Cookie", "session=1")], True, False),
        ("GET", [], 200, [("Cache-Control", 'no-cache="Set-Cookie"'), ("Set-Cookie", "s=1")], True, True),
        ("GET", [], 200, [("Cache-Control", 'private="set-cookie", max-age=5'), ("Set-Cookie", "s=1")], True, True),
        ("GET", [], 200, [MAX_AGE, ("Set-Cookie", "session=1")], False, True),
        # Section 4.1: Vary: * never matches, so it is not worth storing.
        ("GET", [], 200, [MAX_AGE, ("Vary", "*")], True, False),
        ("GET", [], 200, [MAX_AGE, ("Vary", "Accept-Encoding, *")], True, False),
        ("GET", [], 200, [MAX_AGE, ("Vary", "Accept Encoding")], True, False),
        ("GET", [], 200, [MAX_AGE, ("Vary", "Accept-Encoding")], True, True),
        # The last condition of section 3: something must make it cacheable.
        ("GET", [], 200, [], True, True),  # heuristically cacheable (RFC 9110 section 15.1)
        ("GET", [], 404, [], True, True),
        ("GET", [], 302, [], True, False),
        ("GET", [], 500, [], True, False),
        ("GET", [], 302, [MAX_AGE], True, True),
        ("GET", [], 302, [("Expires", format_http_date(T0))], True, True),
        ("GET", [], 302, [("Cache-Control", "public")], True, True),
        ("GET", [], 302, [("Cache-Control", "s-maxage=5")], True, True),
        ("GET", [], 302, [("Cache-Control", "s-maxage=5")], False, False),
        ("GET", [], 500, [("Cache-Control", "max-age=5")], True, True),
        # no-cache responses are stored; they are validated before every use.
        ("GET", [], 200, [("Cache-Control", "no-cache")], True, True),
    ],
)
def test_is_storable(
    method: str,
    request_lines: list[tuple[str, str]],
    status: int,
    response_lines: list[tuple[str, str]],
    shared: bool,
    storable: bool,
) -> None:
    request = Request(method, Headers(request_lines))
    response = Response(status, Headers(response_lines))
    reason = why_not_storable(request, response, shared=shared)
    assert is_storable(request, response, shared=shared) is storable, reason
    assert (reason is None) is storable


def test_headers_to_store_drops_what_section_3_1_keeps_out() -> None:
    received = Headers(
        [
            ("Date", format_http_date(T0)),
            ("Connection", "close, X-Hop"),
            ("X-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("Proxy-Authenticate", "Basic"),
            ("Cache-Control", 'max-age=60, no-cache="X-Trace", private="Set-Cookie"'),
            ("X-Trace", "abc"),
            ("Set-Cookie", "s=1"),
            ("ETag", '"v1"'),
        ]
    )
    kept = [
        ("Date", format_http_date(T0)),
        ("Cache-Control", 'max-age=60, no-cache="X-Trace", private="Set-Cookie"'),
        ("ETag", '"v1"'),
    ]
    assert headers_to_store(received, received_at=T0 + 9) == Headers(kept)
    # A private cache keeps fields named by private, never those named by no-cache.
    assert headers_to_store(received, received_at=T0, shared=False) == Headers(
        [*kept[:2], ("Set-Cookie", "s=1"), kept[2]]
    )


@pytest.mark.parametrize(
    ("dates", "stored_date"),
    [
        ([], format_http_date(T0 + 5)),
        (["garbage"], format_http_date(T0 + 5)),
        ([format_http_date(T0), format_http_date(T0 + 1)], format_http_date(T0 + 5)),
        ([format_http_date(T0 - 30)], format_http_date(T0 - 30)),
    ],
)
def test_headers_to_store_guarantees_a_date(dates: list[str], stored_date: str) -> None:
    # RFC 9110 section 6.6.1: a cache records the receipt time when Date is missing.
    stored = headers_to_store(Headers([("Date", value) for value in dates]), received_at=T0 + 5.7)
    assert stored.get_all("date") == (stored_date,)


directive = st.sampled_from(
    ["public", "private", "max-age=60", "s-maxage=5", "must-revalidate", "must-understand", 'no-cache="a"', "x=y"]
)
extra_response_lines = st.lists(
    st.sampled_from([("Expires", "0"), ("Vary", "Accept"), ("Set-Cookie", "a=b"), ("Last-Modified", "x")]),
    max_size=3,
)


@FUZZ
@given(
    st.lists(directive, max_size=4),
    st.sampled_from(["no-store", "NO-STORE", 'no-store="x"', "no-store=1"]),
    extra_response_lines,
    st.integers(min_value=100, max_value=599),
    st.booleans(),
    st.booleans(),
)
def test_no_store_is_never_storable(
    directives: list[str],
    no_store: str,
    lines: list[tuple[str, str]],
    status: int,
    shared: bool,
    on_request: bool,
) -> None:
    with_no_store = ", ".join([*directives, no_store])
    others = ", ".join(directives)
    request = Request("GET", Headers([("Cache-Control", with_no_store if on_request else others)]))
    response = Response(status, Headers([("Cache-Control", others if on_request else with_no_store), *lines]))
    assert not is_storable(request, response, shared=shared)


@FUZZ
@given(st.lists(directive, max_size=5), extra_response_lines, st.integers(min_value=0, max_value=999), st.booleans())
def test_storability_never_raises_and_private_stays_out_of_shared_caches(
    directives: list[str], lines: list[tuple[str, str]], status: int, shared: bool
) -> None:
    response = Response(status, Headers([("Cache-Control", ", ".join(directives)), *lines]))
    storable = is_storable(Request("GET"), response, shared=shared)
    if shared and "private" in directives:
        assert not storable
