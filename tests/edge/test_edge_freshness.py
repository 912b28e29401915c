"""Freshness lifetime, age and the serve/revalidate decision (RFC 9111 sections 4.2-4.2.4, 5.2; RFC 5861).

Scripted tables per section, then properties over generated responses: the
age is never negative, a stale response under must-revalidate is never served,
and anything served as fresh really is.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.cachecontrol import DELTA_SECONDS_CAP
from edge.freshness import (
    HEURISTIC_LIFETIME_CAP,
    Action,
    Decision,
    age_header_value,
    current_age,
    decide,
    freshness_lifetime,
    stale_if_error_allowed,
    stored_response_age,
)
from edge.httpdate import format_http_date
from edge.messages import Headers, Request, Response, StoredResponse

FUZZ = settings(max_examples=300, deadline=None)

T0 = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110 section 5.6.7)
DAY = 86400


def date(seconds: float) -> str:
    return format_http_date(seconds)


def stored(cache_control: str | None = None, *lines: tuple[str, str], status: int = 200) -> StoredResponse:
    """A response received at T0, dated T0, with `cache_control` and any other `lines`."""
    fields = [("Date", date(T0))]
    if cache_control is not None:
        fields.append(("Cache-Control", cache_control))
    return StoredResponse(status, Headers([*fields, *lines]), request_time=T0, response_time=T0)


def get(*lines: tuple[str, str], method: str = "GET") -> Request:
    return Request(method, Headers(lines))


# -- Section 4.2.1: freshness lifetime ------------------------------------------


@pytest.mark.parametrize(
    ("status", "lines", "shared", "lifetime"),
    [
        # s-maxage wins in a shared cache only.
        (200, [("Cache-Control", "s-maxage=10, max-age=20")], True, 10),
        (200, [("Cache-Control", "s-maxage=10, max-age=20")], False, 20),
        # max-age beats Expires (section 5.3: Expires is then ignored).
        (200, [("Cache-Control", "max-age=20"), ("Expires", date(T0 + 100))], True, 20),
        (200, [("Cache-Control", "s-maxage=5"), ("Expires", date(T0 + 100))], True, 5),
        # Expires minus Date; section 5.3's example Expires an hour after Date.
        (200, [("Date", "Thu, 01 Dec 1994 15:00:00 GMT"), ("Expires", "Thu, 01 Dec 1994 16:00:00 GMT")], True, 3600),
        (500, [("Date", date(T0)), ("Expires", date(T0 + 100))], True, 100),
        (200, [("Date", date(T0)), ("Expires", date(T0 - 100))], True, 0),
        # Invalid Expires, "especially the value 0", is already expired; it also rules out the heuristic.
        (200, [("Date", date(T0)), ("Expires", "0"), ("Last-Modified", date(T0 - DAY))], True, 0),
        # An invalid max-age is stale, whatever Expires says (section 4.2.1).
        (200, [("Cache-Control", "max-age=soon"), ("Expires", date(T0 + 100))], True, 0),
        (200, [("Cache-Control", "max-age=60, max-age=600")], True, 0),
        # Section 4.2.2: heuristic 10% of Date - Last-Modified, for heuristically cacheable codes.
        (200, [("Date", date(T0)), ("Last-Modified", date(T0 - 1000))], True, 100),
        (404, [("Date", date(T0)), ("Last-Modified", date(T0 - 1000))], True, 100),
        (200, [("Date", date(T0)), ("Last-Modified", date(T0 - 365 * DAY))], True, HEURISTIC_LIFETIME_CAP),
        (200, [("Date", date(T0)), ("Last-Modified", date(T0 + 1000))], True, 0),
        (200, [("Date", date(T0))], True, 0),
        # Not for other codes, unless marked public.
        (302, [("Date", date(T0)), ("Last-Modified", date(T0 - 1000))], True, 0),
        (302, [("Date", date(T0)), ("Last-Modified", date(T0 - 1000)), ("Cache-Control", "public")], True, 100),
        # Nor when explicit expiry exists, even in the past.
        (200, [("Date", date(T0)), ("Last-Modified", date(T0 - 1000)), ("Expires", date(T0))], True, 0),
        # Past 2^31 means 2^31 (section 1.2.2).
        (200, [("Cache-Control", "max-age=9999999999")], True, DELTA_SECONDS_CAP),
    ],
)
def test_freshness_lifetime(status: int, lines: list[tuple[str, str]], shared: bool, lifetime: int) -> None:
    assert freshness_lifetime(Response(status, Headers(lines)), shared=shared) == lifetime


def test_missing_date_uses_the_receipt_time() -> None:
    # Section 4.2.1 via RFC 9110 section 6.6.1.
    response = Response(200, Headers([("Expires", date(T0 + 100))]))
    assert freshness_lifetime(response, received_at=T0 + 40) == 60
    assert freshness_lifetime(StoredResponse(200, response.headers, T0, T0 + 30)) == 70
    assert freshness_lifetime(response) == 0  # no Date and no receipt time: nothing to measure from


# -- Section 4.2.3: age ----------------------------------------------------------


@pytest.mark.parametrize(
    ("date_value", "age_value", "request_time", "response_time", "now", "age"),
    [
        (T0, None, T0, T0, T0, 0),
        # apparent_age: the Date was 10 s before we received it.
        (T0 - 10, None, T0, T0, T0, 10),
        # corrected_age_value: Age plus the round trip.
        (T0, 30, T0 - 2, T0, T0, 32),
        # corrected_initial_age is the larger of the two.
        (T0 - 40, 30, T0 - 2, T0, T0, 40),
        # resident_time.
        (T0, 5, T0, T0, T0 + 100, 105),
        # A Date in our future (origin clock ahead) adds nothing.
        (T0 + 500, None, T0, T0, T0 + 1, 1),
        (None, None, T0, T0, T0 + 3, 3),
        # A wall clock that stepped back shrinks nothing below what the origin said.
        (T0, 7, T0 + 5, T0, T0 - 50, 7),
    ],
)
def test_current_age(
    date_value: float | None, age_value: float | None, request_time: float, response_time: float, now: float, age: float
) -> None:
    assert (
        current_age(
            date_value=date_value, age_value=age_value, request_time=request_time, response_time=response_time, now=now
        )
        == age
    )


def test_stored_response_age_reads_date_and_age() -> None:
    response = StoredResponse(200, Headers([("Date", date(T0 - 10)), ("Age", "25")]), T0 - 1, T0)
    assert stored_response_age(response, T0 + 5) == 26 + 5


@pytest.mark.parametrize(
    ("seconds", "value"),
    [(0, "0"), (1.9, "1"), (-5, "0"), (2**31 - 1, "2147483647"), (2**31 + 5, "2147483648"), (math.inf, "2147483648")],
)
def test_age_header_value(seconds: float, value: str) -> None:
    assert age_header_value(seconds) == value
    assert age_header_value(math.nan) == "0"


times = st.floats(min_value=0, max_value=4e9, allow_nan=False)


@FUZZ
@given(times | st.none(), st.integers(0, DELTA_SECONDS_CAP) | st.none(), times, times, times)
def test_age_is_never_negative(
    date_value: float | None, age_value: int | None, request_time: float, response_time: float, now: float
) -> None:
    age = current_age(
        date_value=date_value, age_value=age_value, request_time=request_time, response_time=response_time, now=now
    )
    assert age >= 0
    assert age >= (age_value or 0)
    later = current_age(
        date_value=date_value, age_value=age_value, request_time=request_time, response_time=response_time, now=now + 1
    )
    assert later >= age
    assert int(age_header_value(age)) >= 0


# -- Section 4 and 5.2: the decision ----------------------------------------------------

FRESH, SWR, STALE_OK, REVALIDATE, FORWARD, TIMEOUT = (
    Action.FRESH,
    Action.STALE_WHILE_REVALIDATE,
    Action.STALE_PERMITTED,
    Action.MUST_REVALIDATE,
    Action.FORWARD,
    Action.GATEWAY_TIMEOUT,
)


@pytest.mark.parametrize(
    ("response_directives", "request_directives", "elapsed", "shared", "action"),
    [
        # Section 4.2: fresh while lifetime > age.
        ("max-age=60", None, 0, True, FRESH),
        ("max-age=60", None, 59, True, FRESH),
        ("max-age=60", None, 60, True, REVALIDATE),
        # 5.2.1.4 and 5.4: the client asks for validation.
        ("max-age=60", "no-cache", 0, True, REVALIDATE),
        # 5.2.1.1: request max-age bounds the age; without max-stale it refuses stale responses.
        ("max-age=60", "max-age=10", 10, True, FRESH),
        ("max-age=60", "max-age=10", 11, True, REVALIDATE),
        ("max-age=60", "max-age=0", 0, True, FRESH),
        ("max-age=60, stale-while-revalidate=100", "max-age=100", 70, True, REVALIDATE),
        ("max-age=60", "max-age=100, max-stale=20", 70, True, STALE_OK),
        # 5.2.1.3: min-fresh.
        ("max-age=60", "min-fresh=20", 40, True, FRESH),
        ("max-age=60", "min-fresh=20", 41, True, REVALIDATE),
        ("max-age=60", "min-fresh=bogus", 0, True, REVALIDATE),
        # 5.2.1.2: max-stale, with and without a value.
        ("max-age=60", "max-stale=10", 65, True, STALE_OK),
        ("max-age=60", "max-stale=10", 71, True, REVALIDATE),
        ("max-age=60", "max-stale", 10_000, True, STALE_OK),
        # 5.2.1.7: only-if-cached never reaches upstream.
        ("max-age=60", "only-if-cached", 0, True, FRESH),
        ("max-age=60", "only-if-cached", 61, True, TIMEOUT),
        ("max-age=60, stale-while-revalidate=30", "only-if-cached", 61, True, SWR),
        # RFC 5861 section 3: serve stale and refresh, only inside the window.
        ("max-age=60, stale-while-revalidate=30", None, 60, True, SWR),
        ("max-age=60, stale-while-revalidate=30", None, 90, True, SWR),
        ("max-age=60, stale-while-revalidate=30", None, 91, True, REVALIDATE),
        ("max-age=60, stale-while-revalidate=bogus", None, 61, True, REVALIDATE),
        # 5.2.2.2: must-revalidate means no stale serving at all, whatever the client allows.
        ("max-age=60, must-revalidate, stale-while-revalidate=30", None, 61, True, REVALIDATE),
        ("max-age=60, must-revalidate", "max-stale", 61, True, REVALIDATE),
        ("max-age=60, must-revalidate", "max-stale, only-if-cached", 61, True, TIMEOUT),
        ("max-age=60, must-revalidate", None, 30, True, FRESH),
        # 5.2.2.8 and 5.2.2.10: proxy-revalidate, and s-maxage implying it, bind shared caches only.
        ("max-age=60, proxy-revalidate", "max-stale", 61, True, REVALIDATE),
        ("max-age=60, proxy-revalidate", "max-stale", 61, False, STALE_OK),
        ("max-age=60, s-maxage=60, stale-while-revalidate=30", None, 61, True, REVALIDATE),
        ("max-age=60, s-maxage=60, stale-while-revalidate=30", None, 61, False, SWR),
        ("max-age=60, s-maxage=10", None, 30, True, REVALIDATE),
        ("max-age=60, s-maxage=10", None, 30, False, FRESH),
        # 5.2.2.4: no-cache, even when fresh and even for only-if-cached.
        ("max-age=60, no-cache", None, 0, True, REVALIDATE),
        ("max-age=60, no-cache", "only-if-cached", 0, True, TIMEOUT),
        ("max-age=60, no-cache", "max-stale", 0, True, REVALIDATE),
        # Section 4.2.4: without explicit permission nothing stale is served.
        ("max-age=0", None, 0, True, REVALIDATE),
        (None, None, 0, True, REVALIDATE),
    ],
)
def test_decide(
    response_directives: str | None, request_directives: str | None, elapsed: float, shared: bool, action: Action
) -> None:
    request = get(*([] if request_directives is None else [("Cache-Control", request_directives)]))
    decision = decide(request, stored(response_directives), T0 + elapsed, shared=shared)
    assert decision.action is action, decision.reason
    assert decision.age == elapsed


def test_decide_without_a_stored_response() -> None:
    assert decide(get(), None, T0) == Decision(Action.FORWARD, "nothing stored")
    assert decide(get(("Cache-Control", "only-if-cached")), None, T0).action is TIMEOUT


def test_decide_methods() -> None:
    response = stored("max-age=60")
    assert decide(get(method="HEAD"), response, T0).action is FRESH  # RFC 9110 section 9.3.2
    assert decide(get(method="POST"), response, T0).action is FORWARD
    assert decide(get(method="get"), response, T0).action is FORWARD  # methods are case-sensitive


def test_pragma_no_cache_forces_validation_only_without_cache_control() -> None:
    response = stored("max-age=60")
    assert decide(get(("Pragma", "no-cache")), response, T0).action is REVALIDATE
    assert decide(get(("Pragma", "no-cache"), ("Cache-Control", "max-stale=5")), response, T0).action is FRESH


def test_qualified_no_cache_blocks_only_responses_still_holding_the_field() -> None:
    with_cookie = stored('max-age=60, no-cache="Set-Cookie"', ("Set-Cookie", "session=abc"))
    assert decide(get(), with_cookie, T0).action is REVALIDATE
    assert decide(get(), stored('max-age=60, no-cache="Set-Cookie"'), T0).action is FRESH


def test_decision_numbers() -> None:
    decision = decide(get(), stored("max-age=60, stale-while-revalidate=30", ("Age", "20")), T0 + 50.5)
    assert decision.action is SWR
    assert decision.age == 70.5 and decision.freshness_lifetime == 60
    assert decision.staleness == 10.5 and decision.age_header == "70" and decision.serves_stored
    assert not decide(get(), stored("no-cache"), T0).serves_stored


# -- RFC 5861 section 4: stale-if-error ---------------------------------------------------


@pytest.mark.parametrize(
    ("response_directives", "request_directives", "elapsed", "shared", "allowed"),
    [
        ("max-age=60, stale-if-error=100", None, 150, True, True),
        ("max-age=60, stale-if-error=100", None, 160, True, True),
        ("max-age=60, stale-if-error=100", None, 161, True, False),
        ("max-age=60", None, 61, True, False),
        # The client's own window counts, and the longer window wins.
        ("max-age=60", "stale-if-error=300", 300, True, True),
        ("max-age=60, stale-if-error=10", "stale-if-error=300", 300, True, True),
        ("max-age=60, stale-if-error=300", "stale-if-error=10", 300, True, True),
        # A client that asked for a validated or young response: only its own window.
        ("max-age=60, stale-if-error=100", "no-cache", 100, True, False),
        ("max-age=60, stale-if-error=100", "max-age=0", 100, True, False),
        ("max-age=60", "no-cache, stale-if-error=100", 100, True, True),
        # RFC 9111 sections 4.2.4 and 5.2.2.2 outrank the extension.
        ("max-age=60, must-revalidate, stale-if-error=100", None, 100, True, False),
        ("max-age=60, no-cache, stale-if-error=100", None, 100, True, False),
        ("max-age=60, proxy-revalidate, stale-if-error=100", None, 100, True, False),
        ("max-age=60, proxy-revalidate, stale-if-error=100", None, 100, False, True),
        ("s-maxage=60, stale-if-error=100", None, 100, True, False),
    ],
)
def test_stale_if_error(
    response_directives: str, request_directives: str | None, elapsed: float, shared: bool, allowed: bool
) -> None:
    request = get(*([] if request_directives is None else [("Cache-Control", request_directives)]))
    assert stale_if_error_allowed(request, stored(response_directives), T0 + elapsed, shared=shared) is allowed


def test_stale_if_error_only_for_reads() -> None:
    assert not stale_if_error_allowed(get(method="POST"), stored("stale-if-error=100"), T0)


# -- Properties ------------------------------------------------------------------------

response_directive = st.sampled_from(
    [
        "max-age=0",
        "max-age=30",
        "max-age=x",
        "s-maxage=20",
        "no-cache",
        'no-cache="set-cookie"',
        "must-revalidate",
        "proxy-revalidate",
        "public",
        "private",
        "stale-while-revalidate=15",
        "stale-if-error=40",
        "no-store",
    ]
)
request_directive = st.sampled_from(
    ["max-age=0", "max-age=25", "max-stale", "max-stale=10", "min-fresh=5", "no-cache", "only-if-cached", "bogus"]
)
optional_lines = st.lists(
    st.sampled_from(
        [
            ("Age", "10"),
            ("Age", "junk"),
            ("Expires", date(T0 + 45)),
            ("Expires", "0"),
            ("Last-Modified", date(T0 - 500)),
            ("Set-Cookie", "a=b"),
        ]
    ),
    max_size=3,
)


@FUZZ
@given(
    st.lists(response_directive, max_size=4),
    st.lists(request_directive, max_size=3),
    optional_lines,
    st.sampled_from([200, 204, 301, 302, 404, 500]),
    st.floats(min_value=0, max_value=200),
    st.booleans(),
)
def test_decisions_respect_the_rules(
    response_directives: list[str],
    request_directives: list[str],
    lines: list[tuple[str, str]],
    status: int,
    elapsed: float,
    shared: bool,
) -> None:
    response = stored(", ".join(response_directives), *lines, status=status)
    request = get(("Cache-Control", ", ".join(request_directives)))
    decision = decide(request, response, T0 + elapsed, shared=shared)
    assert decision.age >= 0
    if decision.action is Action.FRESH:
        assert decision.freshness_lifetime > decision.age
    if decision.serves_stored:
        assert "no-cache" not in response_directives and "no-cache" not in request_directives
    if decision.age >= decision.freshness_lifetime:
        assert decision.action is not Action.FRESH
        if "must-revalidate" in response_directives:
            assert not decision.serves_stored
            assert not stale_if_error_allowed(request, response, T0 + elapsed, shared=shared)
    if "only-if-cached" in request_directives:
        assert decision.action is not Action.MUST_REVALIDATE
