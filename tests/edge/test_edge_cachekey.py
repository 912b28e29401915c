"""Primary and secondary cache keys (RFC 9111 section 4.1, RFC 9110 section 4.2.3, RFC 3986 section 6.2.2).

Tables for normalisation and for every target the key refuses; the key never
depends on forwarding headers; Vary matching with RFC 9111's normalisations
and ``Vary: *``. Fuzzing: only `PeerError`s escape, and a key's URL is a
fixed point of normalisation.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.cachekey import (
    MAX_TARGET_LENGTH,
    CacheKey,
    SecondaryKey,
    TargetUri,
    parse_url,
    primary_key,
    primary_key_for_request,
    primary_key_for_url,
    request_target_uri,
    secondary_key,
    vary_field_names,
    vary_matches,
)
from edge.errors import MalformedHeader, MalformedRequestTarget, PeerError, RequestTargetTooLong
from edge.messages import Headers, Request

FUZZ = settings(max_examples=400, deadline=None)


# -- Primary key ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "authority", "target", "url"),
    [
        ("http", "www.boxoffice.test", "/v1/items/7", "http://www.boxoffice.test/v1/items/7"),
        # Host is case-insensitive; the default port is dropped (RFC 9110 section 4.2.3).
        ("http", "WWW.BoxOffice.TEST:80", "/", "http://www.boxoffice.test/"),
        ("https", "www.boxoffice.test:443", "/", "https://www.boxoffice.test/"),
        ("HTTPS", "www.boxoffice.test:0443", "/", "https://www.boxoffice.test/"),
        ("http", "www.boxoffice.test:443", "/", "http://www.boxoffice.test:443/"),
        ("http", "www.boxoffice.test:", "/", "http://www.boxoffice.test/"),
        ("http", "127.0.0.1:8080", "/x", "http://127.0.0.1:8080/x"),
        ("http", "pop_1.boxoffice.test.", "/x", "http://pop_1.boxoffice.test./x"),
        ("http", "[::FFFF:1.2.3.4]:8080", "/x", "http://[::ffff:102:304]:8080/x"),
        ("http", "[2001:DB8::0:1]", "/x", "http://[2001:db8::1]/x"),
        # RFC 3986 section 6.2.2: escapes of unreserved characters decoded, the rest upper-cased.
        ("http", "h.test", "/%7euser/%41%2f%2F%3a", "http://h.test/~user/A%2F%2F%3A"),
        # The query is kept as sent.
        ("http", "h.test", "/p?b=2&a=%7e&&", "http://h.test/p?b=2&a=%7e&&"),
        ("http", "h.test", "/p?", "http://h.test/p?"),
        # The path is case-sensitive; repeated slashes are kept.
        ("http", "h.test", "/A//b/", "http://h.test/A//b/"),
        # Dots inside segments are not dot segments.
        ("http", "h.test", "/a.b/..c/.../.x", "http://h.test/a.b/..c/.../.x"),
        # Absolute-form: the target's own scheme and authority win (RFC 9112 section 3.2.2).
        ("http", "ignored.test", "HTTP://H.test:80/x?y", "http://h.test/x?y"),
        ("http", "ignored.test", "https://h.test", "https://h.test/"),
        ("http", "ignored.test", "https://h.test?q", "https://h.test/?q"),
    ],
)
def test_primary_key_normalisation(scheme: str, authority: str, target: str, url: str) -> None:
    assert primary_key("GET", scheme, authority, target) == CacheKey("GET", url)


def test_get_and_head_share_a_key() -> None:
    get = primary_key("GET", "https", "h.test", "/x")
    assert primary_key("HEAD", "https", "h.test", "/x") == get
    assert primary_key("POST", "https", "h.test", "/x") == CacheKey("POST", get.url)
    assert primary_key_for_url("https://h.test:443/x", "HEAD") == get


@pytest.mark.parametrize(
    ("scheme", "authority", "target"),
    [
        ("ftp", "h.test", "/x"),
        ("http", "h.test", "ftp://h.test/x"),
        ("http", "h.test", "*"),  # asterisk-form
        ("http", "h.test", "h.test:443"),  # authority-form
        ("http", "h.test", ""),
        ("http", "", "/x"),
        ("http", "user:pw@h.test", "/x"),
        ("http", "h.test", "http://user@h.test/x"),
        ("http", "h.test:99999", "/x"),
        ("http", "h.test:0", "/x"),
        ("http", "h.test:8o", "/x"),
        ("http", "h.test:1:2", "/x"),
        ("http", "h_test.example/evil", "/x"),
        ("http", "h test", "/x"),
        ("http", "h.test%2e", "/x"),
        ("http", "bücher.test", "/x"),
        ("http", "[::1", "/x"),
        ("http", "[::1]x", "/x"),
        ("http", "[fe80::1%eth0]", "/x"),
        ("http", "[v1.fe]", "/x"),
        ("http", "a" * 256, "/x"),
        ("http", ".", "/x"),
        ("http", "a..b", "/x"),
        ("http", ".a", "/x"),
        ("http", "a~b", "/x"),
        # Dot segments, plain or escaped, are refused rather than resolved.
        ("http", "h.test", "/a/../b"),
        ("http", "h.test", "/a/./b"),
        ("http", "h.test", "/.."),
        ("http", "h.test", "/a/%2e%2E/b"),
        ("http", "h.test", "/a/.%2e"),
        # Characters that cannot be in a target, and broken escapes.
        ("http", "h.test", "/a b"),
        ("http", "h.test", "/a\tb"),
        ("http", "h.test", "/a\\..\\b"),
        ("http", "h.test", "/a#frag"),
        ("http", "h.test", "/caf\u00e9"),
        ("http", "h.test", "/a?b\r\nX-Evil: 1"),
        ("http", "h.test", "/%zz"),
        ("http", "h.test", "/%4"),
        ("http", "h.test", "/%"),
    ],
)
def test_refused_targets(scheme: str, authority: str, target: str) -> None:
    with pytest.raises(MalformedRequestTarget):
        primary_key("GET", scheme, authority, target)


def test_overlong_targets_are_414() -> None:
    fits = "/" + "a" * (MAX_TARGET_LENGTH - 1)
    assert primary_key("GET", "http", "h.test", fits).url.endswith(fits)
    with pytest.raises(RequestTargetTooLong):
        primary_key("GET", "http", "h.test", fits + "a")
    with pytest.raises(RequestTargetTooLong):
        parse_url("http://h.test" + fits)


@pytest.mark.parametrize(
    "poison",
    [
        ("X-Forwarded-Host", "evil.test"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Port", "8443"),
        ("X-Host", "evil.test"),
        ("X-Original-URL", "/admin"),
        ("X-Rewrite-URL", "/admin"),
        ("Forwarded", "host=evil.test;proto=https"),
    ],
)
def test_unkeyed_headers_never_change_the_key(poison: tuple[str, str]) -> None:
    plain = Request("GET", Headers([("Host", "www.boxoffice.test")]))
    poisoned = Request("GET", Headers([("Host", "www.boxoffice.test"), poison]))
    key = primary_key_for_request(plain, scheme="http", target="/v1/items/7")
    assert primary_key_for_request(poisoned, scheme="http", target="/v1/items/7") == key
    assert key == CacheKey("GET", "http://www.boxoffice.test/v1/items/7")


def test_host_field_rules() -> None:
    # RFC 9112 section 3.2: exactly one Host, except that absolute-form ignores it.
    with pytest.raises(MalformedHeader):
        primary_key_for_request(Request("GET"), scheme="http", target="/x")
    two_hosts = Request("GET", Headers([("Host", "a.test"), ("Host", "b.test")]))
    with pytest.raises(MalformedHeader):
        primary_key_for_request(two_hosts, scheme="http", target="/x")
    absolute = primary_key_for_request(two_hosts, scheme="http", target="http://c.test/x")
    assert absolute == CacheKey("GET", "http://c.test/x")
    assert primary_key_for_request(Request("GET"), scheme="http", target="http://c.test/x") == absolute


def test_target_uri_parts() -> None:
    uri = request_target_uri("https", "H.test:8443", "/p?q")
    assert uri == TargetUri("https", "h.test", 8443, "/p", "q")
    assert uri.origin == ("https", "h.test", 8443)
    assert request_target_uri("https", "h.test", "/").origin == ("https", "h.test", 443)
    assert parse_url(uri.url) == uri


# -- Secondary key (section 4.1) ----------------------------------------------------------


def test_vary_field_names() -> None:
    assert vary_field_names(Headers()) == frozenset()
    names = vary_field_names(Headers([("Vary", "Accept-Encoding, ACCEPT"), ("Vary", "cookie")]))
    assert names == frozenset({"accept-encoding", "accept", "cookie"})
    assert vary_field_names(Headers([("Vary", "accept, *")])) is None
    assert vary_field_names(Headers([("Vary", '"accept"')])) is None


@pytest.mark.parametrize(
    ("vary", "first", "second", "match"),
    [
        # No Vary: everything matches.
        (None, [("Accept", "a")], [("Accept", "b")], True),
        ("", [], [("Accept", "b")], True),
        # Fields named by Vary must match; others do not matter.
        ("Accept", [("Accept", "application/json")], [("Accept", "application/json")], True),
        ("Accept", [("Accept", "application/json")], [("Accept", "text/html")], False),
        ("Accept", [("Accept", "a"), ("User-Agent", "x")], [("Accept", "a"), ("User-Agent", "y")], True),
        # Field names are case-insensitive, in Vary and in the request.
        ("ACCEPT", [("accept", "a")], [("Accept", "a")], True),
        # Whitespace where the syntax allows it, and combining lines (RFC 9110 section 5.3).
        ("Accept-Language", [("Accept-Language", "en,  fr")], [("Accept-Language", " en ,fr ")], True),
        (
            "Accept-Language",
            [("Accept-Language", "en"), ("Accept-Language", "fr")],
            [("Accept-Language", "en, fr")],
            True,
        ),
        ("Accept-Language", [("Accept-Language", "en,,fr")], [("Accept-Language", "en, fr")], True),
        # Order is kept: it can be significant.
        ("Accept-Language", [("Accept-Language", "en, fr")], [("Accept-Language", "fr, en")], False),
        # Case-insensitive values by definition (RFC 9110 sections 8.4.1, 12.5.4).
        ("Accept-Encoding", [("Accept-Encoding", "GZIP, br")], [("Accept-Encoding", "gzip, BR")], True),
        ("Accept", [("Accept", "TEXT/HTML")], [("Accept", "text/html")], False),
        # Absent matches only absent; present-but-empty is not absent.
        ("Accept", [], [], True),
        ("Accept", [], [("Accept", "a")], False),
        ("Accept", [("Accept", "")], [], False),
        # Cookie lines are rejoined with "; " (RFC 9113 section 8.2.3).
        ("Cookie", [("Cookie", "a=1"), ("Cookie", "b=2")], [("Cookie", "a=1;b=2")], True),
        ("Cookie", [("Cookie", "a=1; b=2")], [("Cookie", "a=1; b=3")], False),
        # Several Vary lines and duplicates.
        (["Accept", "Accept, Cookie"], [("Accept", "a"), ("Cookie", "c")], [("Cookie", "c"), ("Accept", "a")], True),
        # Vary: * never matches, not even the very same request.
        ("*", [("Accept", "a")], [("Accept", "a")], False),
        ("Accept, *", [], [], False),
        ("bad name", [], [], False),
    ],
)
def test_vary_matching(
    vary: str | list[str] | None, first: list[tuple[str, str]], second: list[tuple[str, str]], match: bool
) -> None:
    assert vary_matches(vary, Headers(first), Headers(second)) is match
    assert vary_matches(vary, Headers(second), Headers(first)) is match


def test_secondary_key_shape() -> None:
    request = Headers([("Accept-Encoding", "br"), ("Accept", "a")])
    assert secondary_key("accept-encoding, Accept, X-Absent", request) == SecondaryKey(
        (("accept", "a"), ("accept-encoding", "br"), ("x-absent", None))
    )
    assert secondary_key(None, request) == SecondaryKey(())
    assert secondary_key("*", request) is None


# -- Fuzzing ---------------------------------------------------------------------------------

target_alphabet = st.sampled_from([*"/?%.aZ09-_~:@!$&'()*+,;=[]#\\ \t\r\néÿ\x00", "%2e", "%2F", "..", "%7e"])
targets = st.lists(target_alphabet, max_size=30).map("".join)
authorities = st.text(max_size=30) | st.sampled_from(["h.test", "H.TEST:80", "[::1]:8080", "a@b", "h:99999"])


@FUZZ
@given(st.sampled_from(["GET", "HEAD", "http", "https"]), authorities, targets | st.text(max_size=40))
def test_keys_raise_only_peer_errors_and_are_fixed_points(scheme_or_method: str, authority: str, target: str) -> None:
    scheme = scheme_or_method if scheme_or_method.startswith("http") else "http"
    try:
        key = primary_key(scheme_or_method, scheme, authority, "/" + target)
    except PeerError:
        return
    # Normalising a normalised URL changes nothing, and the URL holds nothing forbidden.
    assert primary_key_for_url(key.url) == CacheKey("GET", key.url)
    assert not any(char in key.url for char in " \t\r\n\x00#\\")
    segments = parse_url(key.url).path.split("/")
    assert ".." not in segments and "." not in segments


@FUZZ
@given(
    st.lists(st.text(max_size=20), max_size=3),
    st.lists(
        st.tuples(st.sampled_from(["Accept", "Cookie", "accept-encoding", "X"]), st.text(max_size=15)), max_size=4
    ),
)
def test_vary_never_raises_and_matches_itself_unless_star(vary: list[str], lines: list[tuple[str, str]]) -> None:
    try:
        request = Headers(lines)
    except MalformedHeader:
        return
    key = secondary_key(vary, request)
    assert vary_matches(vary, request, request) is (key is not None)
