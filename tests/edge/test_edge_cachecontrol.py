"""Cache-Control, Pragma, Expires, Date, Age and HTTP-date parsing (RFC 9111 section 5, RFC 9110 5.6.7).

Scripted tables per section, using the RFCs' own examples where they give
them, then fuzzing: on arbitrary text the parsers never raise, and `Headers`
raises only `MalformedHeader`.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.cachecontrol import (
    ALREADY_EXPIRED,
    DELTA_SECONDS_CAP,
    Directive,
    RequestCacheControl,
    ResponseCacheControl,
    age_value,
    date_value,
    expires_value,
    last_modified_value,
    parse_directives,
    pragma_no_cache,
    request_cache_control,
    response_cache_control,
)
from edge.errors import MalformedHeader
from edge.httpdate import format_http_date, parse_http_date
from edge.messages import Headers
from edge.syntax import EntityTag, parse_entity_tag, parse_entity_tag_list, split_list, unquote

FUZZ = settings(max_examples=300, deadline=None)

# RFC 9110 section 5.6.7's example instant, in all three formats.
SUNDAY_1994 = 784111777
SUNDAY_1994_IMF = "Sun, 06 Nov 1994 08:49:37 GMT"


def headers(*lines: tuple[str, str]) -> Headers:
    return Headers(lines)


def response_directives(*values: str) -> ResponseCacheControl:
    return response_cache_control(Headers(("Cache-Control", value) for value in values))


def request_directives(*values: str) -> RequestCacheControl:
    return request_cache_control(Headers(("Cache-Control", value) for value in values))


# -- Section 5.2: directive syntax ---------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["max-age=60"], [Directive("max-age", "60")]),
        # Names compare case-insensitively; arguments may be quoted (section 5.2).
        (['MAX-AGE="60"'], [Directive("max-age", "60")]),
        (["no-cache, no-store"], [Directive("no-cache"), Directive("no-store")]),
        # Empty list members are ignored (RFC 9110 section 5.6.1).
        ([",, max-age=5 ,,"], [Directive("max-age", "5")]),
        # Several field lines read as one list (RFC 9110 section 5.3).
        (["public", "max-age=1"], [Directive("public"), Directive("max-age", "1")]),
        # A comma inside a quoted-string does not split; quoted-pairs unescape.
        (['private="a, b", x="q\\"uote"'], [Directive("private", "a, b"), Directive("x", 'q"uote')]),
        # Whitespace around "=" is tolerated.
        (["max-age = 7"], [Directive("max-age", "7")]),
        # An argument that is neither token nor quoted-string is malformed.
        (["max-age="], [Directive("max-age", None, malformed_argument=True)]),
        (['max-age="6'], [Directive("max-age", None, malformed_argument=True)]),
        (["max-age=a b"], [Directive("max-age", None, malformed_argument=True)]),
        # Members whose name is not a token are not directives at all.
        (['"quoted", =5, max age=3, ok'], [Directive("ok")]),
        ([""], []),
    ],
)
def test_parse_directives(values: list[str], expected: list[Directive]) -> None:
    assert parse_directives(values) == tuple(expected)


# -- Section 5.2.2: response directives ------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["max-age=60"], ResponseCacheControl(max_age=60)),
        (["s-maxage=30, max-age=60"], ResponseCacheControl(max_age=60, s_maxage=30)),
        (['max-age="60"'], ResponseCacheControl(max_age=60)),
        # 5.2.2.4: unqualified and qualified no-cache.
        (["no-cache"], ResponseCacheControl(no_cache=True)),
        (
            ['no-cache="Set-Cookie, X-Trace"'],
            ResponseCacheControl(no_cache_fields=frozenset({"set-cookie", "x-trace"})),
        ),
        # The token form is accepted too (section 5.2: recipients accept both).
        (["no-cache=Set-Cookie"], ResponseCacheControl(no_cache_fields=frozenset({"set-cookie"}))),
        # An empty or non-field-name list counts as unqualified: the stricter reading.
        (['no-cache=""'], ResponseCacheControl(no_cache=True, malformed=frozenset({"no-cache"}))),
        (['no-cache="a b"'], ResponseCacheControl(no_cache=True, malformed=frozenset({"no-cache"}))),
        # 5.2.2.7: private, qualified and not; both present means unqualified wins where it matters.
        (["private"], ResponseCacheControl(private=True)),
        (['private="Set-Cookie"'], ResponseCacheControl(private_fields=frozenset({"set-cookie"}))),
        (['private, private="x"'], ResponseCacheControl(private=True, private_fields=frozenset({"x"}))),
        (["public"], ResponseCacheControl(public=True)),
        (["no-store"], ResponseCacheControl(no_store=True)),
        # Directives that take no argument count even if one was sent.
        (["no-store=yes"], ResponseCacheControl(no_store=True)),
        (["no-transform"], ResponseCacheControl(no_transform=True)),
        (["must-revalidate"], ResponseCacheControl(must_revalidate=True)),
        (["proxy-revalidate"], ResponseCacheControl(proxy_revalidate=True)),
        (["must-understand, no-store"], ResponseCacheControl(must_understand=True, no_store=True)),
        # RFC 5861 sections 3 and 4 (its own example).
        (
            ["max-age=600, stale-while-revalidate=30"],
            ResponseCacheControl(max_age=600, stale_while_revalidate=30),
        ),
        (["max-age=600, stale-if-error=1200"], ResponseCacheControl(max_age=600, stale_if_error=1200)),
        # Unknown directives are ignored (5.2.3).
        (["community=UCI, max-age=5"], ResponseCacheControl(max_age=5)),
    ],
)
def test_response_directives(values: list[str], expected: ResponseCacheControl) -> None:
    assert response_directives(*values) == expected


@pytest.mark.parametrize(
    ("value", "max_age"),
    [
        # Section 4.2.1: invalid freshness information is read as stale.
        ("max-age=abc", 0),
        ("max-age=-1", 0),
        ("max-age=1.5", 0),
        ("max-age=+5", 0),
        ("max-age=\u0663", 0),  # ARABIC-INDIC DIGIT THREE is a digit to str.isdigit, not to HTTP
        ("max-age", 0),
        # Duplicates: equal values are fine, different ones are read as stale.
        ("max-age=60, max-age=60", 60),
        ("max-age=60, max-age=120", 0),
        # Section 1.2.2: past 2^31 means 2^31, however many digits.
        ("max-age=99999999999999999999", DELTA_SECONDS_CAP),
        ("max-age=" + "9" * 5000, DELTA_SECONDS_CAP),
        ("max-age=0000000000060", 60),
    ],
)
def test_response_max_age_bad_values(value: str, max_age: int) -> None:
    parsed = response_directives(value)
    assert parsed.max_age == max_age
    assert ("max-age" in parsed.malformed) == (value not in {"max-age=60, max-age=60"} and max_age == 0)


def test_bad_windows_grant_nothing() -> None:
    parsed = response_directives("stale-while-revalidate=soon, stale-if-error=-1, s-maxage=x")
    assert parsed.stale_while_revalidate is None
    assert parsed.stale_if_error is None
    assert parsed.s_maxage == 0
    assert parsed.malformed == {"stale-while-revalidate", "stale-if-error", "s-maxage"}


@pytest.mark.parametrize(
    ("values", "shared", "explicit", "forbids_stale"),
    [
        (["max-age=5"], True, True, False),
        (["s-maxage=5"], True, True, True),  # 5.2.2.10: s-maxage implies proxy-revalidate
        (["s-maxage=5"], False, False, False),  # a private cache ignores s-maxage
        (["proxy-revalidate"], True, False, True),
        (["proxy-revalidate"], False, False, False),
        (["must-revalidate"], False, False, True),
    ],
)
def test_response_derived_rules(values: list[str], shared: bool, explicit: bool, forbids_stale: bool) -> None:
    parsed = response_directives(*values)
    assert parsed.has_explicit_expiry(shared=shared) is explicit
    assert parsed.forbids_stale(shared=shared) is forbids_stale


# -- Section 5.2.1: request directives -------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["max-age=0"], RequestCacheControl(max_age=0)),
        # 5.2.1.2: max-stale without a value accepts any staleness.
        (["max-stale"], RequestCacheControl(max_stale=DELTA_SECONDS_CAP)),
        (["max-stale=30"], RequestCacheControl(max_stale=30)),
        (["min-fresh=10"], RequestCacheControl(min_fresh=10)),
        (["no-cache"], RequestCacheControl(no_cache=True)),
        (["no-store"], RequestCacheControl(no_store=True)),
        (["no-transform"], RequestCacheControl(no_transform=True)),
        (["only-if-cached"], RequestCacheControl(only_if_cached=True)),
        (["stale-if-error=60"], RequestCacheControl(stale_if_error=60)),
        # Malformed values take the strictest reading.
        (["max-age=x"], RequestCacheControl(max_age=0, malformed=frozenset({"max-age"}))),
        (["min-fresh=x"], RequestCacheControl(min_fresh=DELTA_SECONDS_CAP, malformed=frozenset({"min-fresh"}))),
        (["max-stale=x"], RequestCacheControl(malformed=frozenset({"max-stale"}))),
        (["max-stale=5, max-stale"], RequestCacheControl(malformed=frozenset({"max-stale"}))),
    ],
)
def test_request_directives(values: list[str], expected: RequestCacheControl) -> None:
    assert request_directives(*values) == expected


# -- Section 5.4: Pragma -------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "no_cache"),
    [
        ([("Pragma", "no-cache")], True),
        ([("Pragma", "NO-CACHE")], True),
        ([("Pragma", "x-foo, no-cache")], True),
        ([("Pragma", "x-no-cache")], False),
        ([("Pragma", 'no-cache="x"')], False),
        # Cache-Control present: Pragma is ignored, even if Cache-Control says nothing we know.
        ([("Pragma", "no-cache"), ("Cache-Control", "max-stale")], False),
        ([("Pragma", "no-cache"), ("Cache-Control", "x-unknown")], False),
        ([("Cache-Control", "no-cache")], True),
    ],
)
def test_pragma_in_requests(lines: list[tuple[str, str]], no_cache: bool) -> None:
    assert request_cache_control(Headers(lines)).no_cache is no_cache


def test_pragma_is_not_read_in_responses() -> None:
    assert pragma_no_cache(headers(("Pragma", "no-cache")))
    assert response_cache_control(headers(("Pragma", "no-cache"))) == ResponseCacheControl()


# -- Sections 5.3, 5.1 and RFC 9110 6.6.1: Expires, Age, Date ---------------------


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([], None),
        # Section 5.3's example.
        (["Thu, 01 Dec 1994 16:00:00 GMT"], 786297600),
        # "especially the value 0": invalid means already expired.
        (["0"], ALREADY_EXPIRED),
        (["-1"], ALREADY_EXPIRED),
        (["tomorrow"], ALREADY_EXPIRED),
        # Several lines: equal is fine, different is stale (section 4.2.1).
        (["Thu, 01 Dec 1994 16:00:00 GMT", "Thu, 01 Dec 1994 16:00:00 GMT"], 786297600),
        (["Thu, 01 Dec 1994 16:00:00 GMT", "Fri, 02 Dec 1994 16:00:00 GMT"], ALREADY_EXPIRED),
    ],
)
def test_expires(lines: list[str], expected: int | None) -> None:
    assert expires_value(Headers(("Expires", line) for line in lines)) == expected


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([], None),
        (["60"], 60),
        (["0"], 0),
        # Section 5.1: a list-based Age is read by its first member.
        (["60, 30"], 60),
        (["60", "30"], 60),
        # Invalid values are ignored.
        (["-5"], None),
        (["1.5"], None),
        (["soon"], None),
        (["99999999999999"], DELTA_SECONDS_CAP),
    ],
)
def test_age(lines: list[str], expected: int | None) -> None:
    assert age_value(Headers(("Age", line) for line in lines)) == expected


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([], None),
        ([SUNDAY_1994_IMF], SUNDAY_1994),
        (["garbage"], None),
        ([SUNDAY_1994_IMF, "Mon, 07 Nov 1994 08:49:37 GMT"], None),
    ],
)
def test_date_and_last_modified(lines: list[str], expected: int | None) -> None:
    assert date_value(Headers(("Date", line) for line in lines)) == expected
    assert last_modified_value(Headers(("Last-Modified", line) for line in lines)) == expected


# -- RFC 9110 section 5.6.7: HTTP-date -----------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850 format
        "Sun Nov  6 08:49:37 1994",  # ANSI C's asctime() format
        # RFC 9111 section 4.2: caches match case-insensitively.
        "sun, 06 nov 1994 08:49:37 gmt",
        "SUNDAY, 06-NOV-94 08:49:37 GMT",
        # Surrounding whitespace is not part of the value; a one-digit day is tolerated.
        "  Sun, 6 Nov 1994 08:49:37 GMT\t",
    ],
)
def test_http_date_formats(text: str) -> None:
    assert parse_http_date(text) == SUNDAY_1994


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37",
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:61 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "Xyz, 06 Nov 1994 08:49:37 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 0000 08:49:37 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT extra",
        "Sun, 06 Nov 1994 \u0660\u0668:49:37 GMT",  # non-ASCII digits
        "Sunday, 06-Nov-1994 08:49:37 GMT",
        "Sun Nov 6 08:49:37 1994",  # asctime pads a one-digit day with a space
    ],
)
def test_http_date_invalid(text: str) -> None:
    assert parse_http_date(text) is None


def test_http_date_leap_second_is_the_next_minute() -> None:
    assert parse_http_date("Sat, 31 Dec 2016 23:59:60 GMT") == parse_http_date("Sun, 01 Jan 2017 00:00:00 GMT")


@pytest.mark.parametrize(
    ("text", "now_year", "year"),
    [
        # Section 5.6.7: more than 50 years in the future means the past century.
        ("Tuesday, 01-Jan-80 00:00:00 GMT", 2025, 1980),
        ("Thursday, 01-Jan-70 00:00:00 GMT", 2025, 2070),
        ("Saturday, 01-Jan-75 00:00:00 GMT", 2025, 2075),
        ("Wednesday, 01-Jan-76 00:00:00 GMT", 2025, 1976),
        ("Saturday, 01-Jan-00 00:00:00 GMT", 2025, 2000),
        ("Saturday, 01-Jan-00 00:00:00 GMT", 2099, 2100),
        ("Saturday, 01-Jan-00 00:00:00 GMT", None, 2000),
        ("Monday, 01-Jan-90 00:00:00 GMT", None, 1990),
    ],
)
def test_rfc850_two_digit_years(text: str, now_year: int | None, year: int) -> None:
    now = None if now_year is None else parse_http_date(f"Mon, 01 Jun {now_year} 00:00:00 GMT")
    parsed = parse_http_date(text, now=now)
    assert parsed is not None
    assert parsed == parse_http_date(f"Mon, 01 Jan {year} 00:00:00 GMT")


def test_format_http_date() -> None:
    assert format_http_date(SUNDAY_1994) == SUNDAY_1994_IMF
    assert format_http_date(SUNDAY_1994 + 0.9) == SUNDAY_1994_IMF


@FUZZ
@given(st.integers(min_value=-(10**10), max_value=253402300799))
def test_http_date_round_trip(seconds: int) -> None:
    assert parse_http_date(format_http_date(seconds)) == seconds


# -- RFC 9110 sections 5.6 and 8.8.3: the syntax underneath ---------------------------


@pytest.mark.parametrize(
    ("values", "members"),
    [
        ("a, b,,c ,", ["a", "b", "c"]),
        (["a", "b, c"], ["a", "b", "c"]),
        ('x="1,2", y', ['x="1,2"', "y"]),
        ('x="a\\",b", y', ['x="a\\",b"', "y"]),
        ('x="unterminated, y', ['x="unterminated, y']),
        ("", []),
    ],
)
def test_split_list(values: str | list[str], members: list[str]) -> None:
    assert split_list(values) == members


@pytest.mark.parametrize(
    ("text", "content"),
    [('"abc"', "abc"), ('"a\\"b"', 'a"b'), ('""', ""), ('"a"b"', None), ('"a\\"', None), ("abc", None), ('"', None)],
)
def test_unquote(text: str, content: str | None) -> None:
    assert unquote(text) == content


@pytest.mark.parametrize(
    ("value", "tags"),
    [
        # RFC 9110 section 8.8.3's examples.
        ('"xyzzy"', [EntityTag("xyzzy")]),
        ('W/"xyzzy"', [EntityTag("xyzzy", weak=True)]),
        ('""', [EntityTag("")]),
        # Section 13.1.2's examples.
        ('"xyzzy", "r2d2xxxx", "c3piozzzz"', [EntityTag("xyzzy"), EntityTag("r2d2xxxx"), EntityTag("c3piozzzz")]),
        ('W/"xyzzy", W/"r2d2xxxx"', [EntityTag("xyzzy", True), EntityTag("r2d2xxxx", True)]),
        # A comma or a backslash inside the quotes is part of the tag.
        ('"a,b", "c\\"', [EntityTag("a,b"), EntityTag("c\\")]),
        ("xyzzy", None),
        ('w/"xyzzy"', None),  # W/ is case-sensitive
        ('"xy"zy"', None),
        ('"a" "b"', None),
    ],
)
def test_entity_tag_lists(value: str, tags: list[EntityTag] | None) -> None:
    assert parse_entity_tag_list(value) == (None if tags is None else tuple(tags))


def test_entity_tag_comparison() -> None:
    # RFC 9110 section 8.8.3.2's table.
    weak1, weak2, strong1 = EntityTag("1", True), EntityTag("2", True), EntityTag("1")
    assert not weak1.strongly_matches(weak1) and weak1.weakly_matches(weak1)
    assert not weak1.strongly_matches(weak2) and not weak1.weakly_matches(weak2)
    assert not weak1.strongly_matches(strong1) and weak1.weakly_matches(strong1)
    assert strong1.strongly_matches(EntityTag("1")) and strong1.weakly_matches(EntityTag("1"))
    assert str(weak1) == 'W/"1"' and parse_entity_tag(' "1" ') == strong1


# -- Headers ----------------------------------------------------------------------------


def test_headers_lookup_is_case_insensitive_and_keeps_lines() -> None:
    fields = headers(("Cache-Control", "public"), ("Vary", "Accept"), ("cache-control", " max-age=5 "))
    assert fields.get_all("CACHE-CONTROL") == ("public", "max-age=5")
    assert fields.combined("cache-control") == "public, max-age=5"
    assert fields.first("vary") == "Accept" and fields.first("etag") is None
    assert "VARY" in fields and "etag" not in fields and 5 not in fields
    assert fields.names() == {"cache-control", "vary"}
    assert fields.without(["Cache-Control"]) == headers(("Vary", "Accept"))
    assert fields.replacing("cache-control", "no-store") == headers(("Cache-Control", "no-store"), ("Vary", "Accept"))
    assert fields.replacing("ETag", '"1"').get_all("etag") == ('"1"',)
    assert fields.with_line("Age", "1").get_all("age") == ("1",)
    assert headers(("A", "1")) == headers(("a", "1")) and hash(headers(("A", "1"))) == hash(headers(("a", "1")))
    assert len(fields) == 3 and next(iter(fields)) == ("Cache-Control", "public")


@pytest.mark.parametrize(
    ("name", "value"),
    [("Bad Name", "x"), ("", "x"), ("X:", "x"), ("X-Ok", "a\r\nSet-Cookie: evil"), ("X-Ok", "a\nb"), ("X", "\x00")],
)
def test_headers_refuse_injection(name: str, value: str) -> None:
    with pytest.raises(MalformedHeader):
        Headers([(name, value)])


# -- Fuzzing: only our error may escape ------------------------------------------------

field_text = st.text(max_size=80) | st.text(alphabet='abcdefgimnorstuvwxyz-=", \t;0123456789*/W', max_size=80)


@FUZZ
@given(st.lists(field_text, max_size=4))
def test_cache_control_parsers_never_raise(values: list[str]) -> None:
    directives = parse_directives(values)
    assert all(directive.name == directive.name.lower() for directive in directives)
    response = ResponseCacheControl.from_directives(directives)
    request = RequestCacheControl.from_directives(directives)
    for seconds in (response.max_age, response.s_maxage, request.max_age, request.min_fresh, request.max_stale):
        assert seconds is None or 0 <= seconds <= DELTA_SECONDS_CAP


@FUZZ
@given(field_text)
def test_field_parsers_never_raise(text: str) -> None:
    parsed = parse_http_date(text)
    assert parsed is None or isinstance(parsed, int)
    split_list(text)
    unquote(text)
    parse_entity_tag_list(text)
    try:
        fields = Headers([("Expires", text), ("Date", text), ("Age", text), ("Pragma", text)])
    except MalformedHeader:
        return
    expires_value(fields)
    date_value(fields)
    age_value(fields)
    request_cache_control(fields)


@FUZZ
@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=20)), max_size=5))
def test_headers_raise_only_malformed_header(lines: list[tuple[str, str]]) -> None:
    try:
        fields = Headers(lines)
    except MalformedHeader:
        return
    assert len(fields) == len(lines)
    for name, _ in lines:
        assert name in fields
