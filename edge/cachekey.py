"""Cache keys: the primary key from the request target, the secondary key from Vary (RFC 9111 section 4.1).

The primary key is the method (GET and HEAD share one: a HEAD is answered
from the stored GET) and the target URI, built only from the request target
and the authority the request was sent to: the Host field, or the authority
of an absolute-form target (RFC 9112 section 3.2.2). Forwarding headers such
as X-Forwarded-Host or Forwarded never enter it, so a client cannot store a
response under a URL it did not request (cache poisoning through unkeyed
input).

Normalisation is the syntax-based kind of RFC 3986 section 6.2.2 that keeps
the key equal to what is forwarded upstream: scheme and host lower-cased, the
scheme's default port dropped (RFC 9110 section 4.2.3), an empty path made
"/", percent-escapes of unreserved characters decoded and the rest written in
upper-case hex. The query is kept exactly as sent. Dot segments, including
escaped ones, are refused rather than removed: an upstream could resolve them
differently from us, and the key must name what the upstream serves.

The secondary key holds, for each field a stored response's Vary names, that
field's value in the request, normalised the ways section 4.1 allows:
combining field lines, dropping optional whitespace and empty list members,
and lower-casing the values that are case-insensitive by definition.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from edge.errors import MalformedHeader, MalformedRequestTarget, RequestTargetTooLong
from edge.messages import Headers, Request
from edge.syntax import OWS, is_token, split_list

# RFC 9112 section 3: recipients ought to support request-lines of at least
# 8000 octets. Longer targets are refused with 414 rather than keyed.
MAX_TARGET_LENGTH: Final = 8 * 1024
# RFC 1035 section 2.3.4: a domain name is at most 255 octets.
MAX_HOST_LENGTH: Final = 255
DEFAULT_PORTS: Final = {"http": 80, "https": 443}

# Control characters, space, non-ASCII, "#" (a fragment is never sent) and "\"
# (which some servers read as "/", a path-confusion vector).
_FORBIDDEN_IN_TARGET: Final = re.compile(r"[^\x21-\x7e]|[#\\]")
_ABSOLUTE_FORM: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?]*)(.*)", re.DOTALL)
# Host names as DNS writes them (RFC 1123 section 2.1, plus "_" which internal
# names use): dot-separated non-empty labels, one optional trailing dot. IPv4
# addresses match too. Other reg-name characters RFC 3986 allows (sub-delims,
# percent-escapes) never name a host we serve.
_HOST_NAME: Final = re.compile(r"(?:[a-z0-9_\-]+\.)*[a-z0-9_\-]+\.?")
_PORT: Final = re.compile(r"[0-9]{1,5}")
_PERCENT_ESCAPE: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_PERCENT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DOT_SEGMENTS: Final = frozenset({".", ".."})

# RFC 9110 sections 8.4.1, 12.5.3 and 12.5.4: content codings, charsets and
# language tags compare case-insensitively.
_CASE_INSENSITIVE_VALUES: Final = frozenset({"accept-encoding", "accept-charset", "accept-language"})


@dataclass(frozen=True, slots=True)
class TargetUri:
    """A normalised http(s) target URI.

    `port` is None when it is the scheme's default; `query` is None when the
    target had no "?" at all and "" when it had an empty one.
    """

    scheme: str
    host: str
    port: int | None
    path: str
    query: str | None

    @property
    def origin(self) -> tuple[str, str, int]:
        """(scheme, host, port) with the port always filled in (RFC 9110 section 4.3.1)."""
        return (self.scheme, self.host, DEFAULT_PORTS[self.scheme] if self.port is None else self.port)

    @property
    def url(self) -> str:
        """The URI as one string, e.g. "https://www.boxoffice.test/v1/items/7?x=1"."""
        port = "" if self.port is None else f":{self.port}"
        query = "" if self.query is None else f"?{self.query}"
        return f"{self.scheme}://{self.host}{port}{self.path}{query}"


@dataclass(frozen=True, slots=True)
class CacheKey:
    """The primary cache key: method ("GET" for GET and HEAD) and normalised target URI."""

    method: str
    url: str


def key_method(method: str) -> str:
    """The method a request is keyed under: HEAD shares GET's entries (RFC 9110 section 9.3.2)."""
    return "GET" if method == "HEAD" else method


def request_target_uri(scheme: str, authority: str, target: str) -> TargetUri:
    """The normalised target URI of a request (RFC 9110 section 7.1).

    Args:
        scheme: "http" or "https", as the request arrived. An absolute-form
            target's own scheme wins.
        authority: the Host field value (or HTTP/2 ":authority"). Ignored for an
            absolute-form target, whose own authority wins (RFC 9112 section 3.2.2).
        target: the request-target as sent: origin-form ("/path?query") or
            absolute-form ("http://host/path?query").

    Raises:
        RequestTargetTooLong: `target` is longer than `MAX_TARGET_LENGTH`.
        MalformedRequestTarget: anything else this module refuses (asterisk and
            authority forms, another scheme, userinfo, a bad host or port,
            forbidden characters, bad percent-escapes, dot segments).
    """
    if len(target) > MAX_TARGET_LENGTH:
        raise RequestTargetTooLong(f"request target longer than {MAX_TARGET_LENGTH} characters")
    if target.startswith("/"):
        return _build(scheme.lower(), authority, target)
    return parse_url(target)


def parse_url(url: str) -> TargetUri:
    """The normalised form of an absolute http(s) URL.

    Raises:
        RequestTargetTooLong, MalformedRequestTarget: as for `request_target_uri`.
    """
    if len(url) > MAX_TARGET_LENGTH:
        raise RequestTargetTooLong(f"URL longer than {MAX_TARGET_LENGTH} characters")
    match = _ABSOLUTE_FORM.fullmatch(url)
    if match is None:
        raise MalformedRequestTarget("not an absolute URL or an origin-form target")
    scheme, authority, rest = match.groups()
    return _build(scheme.lower(), authority, rest)


def primary_key(method: str, scheme: str, authority: str, target: str) -> CacheKey:
    """The primary cache key of a request; see `request_target_uri` for the arguments.

    Raises:
        RequestTargetTooLong, MalformedRequestTarget: as for `request_target_uri`.
    """
    return CacheKey(key_method(method), request_target_uri(scheme, authority, target).url)


def primary_key_for_request(request: Request, *, scheme: str, target: str) -> CacheKey:
    """The primary cache key with the authority taken from the request's Host field.

    Only Host counts; X-Forwarded-Host, Forwarded and the like are ignored.

    Raises:
        MalformedHeader: an origin-form target without exactly one Host line
            (RFC 9112 section 3.2 requires a 400 for that).
        RequestTargetTooLong, MalformedRequestTarget: as for `request_target_uri`.
    """
    hosts = request.headers.get_all("host")
    if target.startswith("/") and len(hosts) != 1:
        raise MalformedHeader(f"a request needs exactly one Host field, it has {len(hosts)}")
    return primary_key(request.method, scheme, hosts[0] if hosts else "", target)


def primary_key_for_url(url: str, method: str = "GET") -> CacheKey:
    """The primary key under which a request for absolute `url` is stored.

    Raises:
        RequestTargetTooLong, MalformedRequestTarget: as for `parse_url`.
    """
    return CacheKey(key_method(method), parse_url(url).url)


def _build(scheme: str, authority: str, path_and_query: str) -> TargetUri:
    if scheme not in DEFAULT_PORTS:
        raise MalformedRequestTarget(f"scheme {scheme!r} is not http or https")
    if _FORBIDDEN_IN_TARGET.search(path_and_query):
        raise MalformedRequestTarget("control, space, non-ASCII, '#' or '\\' in the request target")
    host, port = _parse_authority(authority, scheme)
    path, question_mark, query = path_and_query.partition("?")
    return TargetUri(scheme, host, port, _normalize_path(path), query if question_mark else None)


def _parse_authority(authority: str, scheme: str) -> tuple[str, int | None]:
    """(lower-cased host, port or None when default) from an authority without userinfo.

    IPv6 literals are written compressed; zone ids ("%eth0") are refused, as
    RFC 9110 URIs cannot carry them.
    """
    authority = authority.strip(OWS)
    if "@" in authority:
        raise MalformedRequestTarget("userinfo in the authority")
    if authority.startswith("["):
        literal, bracket, port_text = authority[1:].partition("]")
        if not bracket or "%" in literal or (port_text and not port_text.startswith(":")):
            raise MalformedRequestTarget("bad IPv6 literal in the authority")
        try:
            host = f"[{ipaddress.IPv6Address(literal).compressed}]"
        except ValueError as exc:
            raise MalformedRequestTarget("bad IPv6 literal in the authority") from exc
        port_text = port_text[1:]
    else:
        host, _, port_text = authority.partition(":")
        host = host.lower()
        if len(host) > MAX_HOST_LENGTH or _HOST_NAME.fullmatch(host) is None:
            raise MalformedRequestTarget("bad host in the authority")
    return host, _parse_port(port_text, scheme)


def _parse_port(port_text: str, scheme: str) -> int | None:
    if not port_text:  # "host:" means the default port (RFC 3986 section 6.2.3)
        return None
    if _PORT.fullmatch(port_text) is None or not 0 < int(port_text) <= 65535:
        raise MalformedRequestTarget("bad port in the authority")
    port = int(port_text)
    return None if port == DEFAULT_PORTS[scheme] else port


def _normalize_path(path: str) -> str:
    if not path:
        return "/"
    if _BAD_PERCENT.search(path):
        raise MalformedRequestTarget("'%' not followed by two hex digits in the path")
    normalized = _PERCENT_ESCAPE.sub(_normalize_escape, path)
    if not _DOT_SEGMENTS.isdisjoint(normalized.split("/")):
        raise MalformedRequestTarget("dot segment in the path")
    return normalized


def _normalize_escape(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else match.group(0).upper()


# -- Vary (RFC 9111 section 4.1) ------------------------------------------------


def vary_field_names(headers: Headers) -> frozenset[str] | None:
    """The lower-cased field names a response's Vary lists; None for ``*`` or a non-token member.

    ``Vary: *`` always fails to match (section 4.1). A member that is not a
    field name is read the same way: the origin varies on something we cannot
    evaluate.
    """
    return _vary_names(headers.get_all("vary"))


@dataclass(frozen=True, slots=True)
class SecondaryKey:
    """Normalised values of the request fields a response varies on, sorted by name.

    A value is None when the field was absent: absent matches only absent.
    """

    fields: tuple[tuple[str, str | None], ...]


def secondary_key(vary: str | Sequence[str] | None, request_headers: Headers) -> SecondaryKey | None:
    """The secondary key of a request for a response whose Vary is `vary`.

    Args:
        vary: the stored response's Vary field lines (or one combined value);
            None or () when it has no Vary (the key is then empty).
        request_headers: the request's header fields.

    Returns:
        The key, or None when Vary is ``*`` (or unreadable): such a response
        never matches. None is not a key; compare with `vary_matches`.
    """
    lines = () if vary is None else (vary,) if isinstance(vary, str) else vary
    names = _vary_names(lines)
    if names is None:
        return None
    return SecondaryKey(tuple((name, _normalized_value(name, request_headers)) for name in sorted(names)))


def vary_matches(vary: str | Sequence[str] | None, stored_request_headers: Headers, request_headers: Headers) -> bool:
    """True when a stored response with Vary `vary` may serve `request_headers` (section 4.1).

    `stored_request_headers` are those of the request that produced the stored
    response. ``Vary: *`` never matches.
    """
    stored_key = secondary_key(vary, stored_request_headers)
    return stored_key is not None and stored_key == secondary_key(vary, request_headers)


def _vary_names(lines: Sequence[str]) -> frozenset[str] | None:
    names: set[str] = set()
    for member in split_list(lines):
        if member == "*" or not is_token(member):
            return None
        names.add(member.lower())
    return frozenset(names)


def _normalized_value(name: str, headers: Headers) -> str | None:
    lines = headers.get_all(name)
    if not lines:
        return None
    if name == "cookie":
        # Cookie is split across lines by HTTP/2 and rejoined with "; " (RFC 9113 section 8.2.3).
        pairs = (pair.strip(OWS) for line in lines for pair in line.split(";"))
        return "; ".join(pair for pair in pairs if pair)
    value = ",".join(split_list(lines))
    return value.lower() if name in _CASE_INSENSITIVE_VALUES else value
