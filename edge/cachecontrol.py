"""Cache-Control, Pragma, Expires, Date and Age, parsed (RFC 9111 sections 5.1-5.4).

How it works: `parse_directives` turns Cache-Control field lines into
:class:`Directive` values (name lower-cased, argument unquoted) and never
raises. :class:`RequestCacheControl` and :class:`ResponseCacheControl` then
read the directives each side defines (sections 5.2.1 and 5.2.2, plus
stale-while-revalidate and stale-if-error from RFC 5861). Unknown directives
are ignored (section 5.2.3).

Bad input takes the most restrictive reading, as sections 4.2.1 and 5.2 advise:

* a directive's argument may be a token or a quoted-string (section 5.2);
* a max-age or s-maxage whose value is not delta-seconds, or that appears
  twice with different values, makes the response stale (0 seconds); a
  request's max-age likewise becomes 0 and its min-fresh 2^31 (so only
  validation satisfies it); a bad max-stale, stale-while-revalidate or
  stale-if-error grants nothing;
* no-cache or private with an argument that is not a list of field names
  counts as the unqualified directive;
* directives that take no argument count even if one was sent.

Every directive read that way is named in the `malformed` set, for logs.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from edge.httpdate import parse_http_date
from edge.messages import Headers
from edge.syntax import DELTA_SECONDS_CAP, is_token, parse_delta_seconds, split_list, unquote

__all__ = [
    "ALREADY_EXPIRED",
    "DELTA_SECONDS_CAP",
    "Directive",
    "RequestCacheControl",
    "ResponseCacheControl",
    "age_value",
    "date_value",
    "expires_value",
    "last_modified_value",
    "parse_directives",
    "parse_http_date",
    "pragma_no_cache",
    "request_cache_control",
    "response_cache_control",
]


@dataclass(frozen=True, slots=True)
class Directive:
    """One cache directive: ``name`` or ``name=argument`` (RFC 9111 section 5.2).

    `name` is lower-cased (names compare case-insensitively); `argument` is
    the token or the unquoted quoted-string, None when there was none.
    `malformed_argument` is set when an ``=`` was followed by neither.
    """

    name: str
    argument: str | None = None
    malformed_argument: bool = False


def parse_directives(field_values: str | Iterable[str]) -> tuple[Directive, ...]:
    """Every well-named directive in one or more Cache-Control field lines, in order.

    Members whose name is not a token are dropped (they cannot be a directive
    we know). Never raises.
    """
    directives: list[Directive] = []
    for member in split_list(field_values):
        name, equals, raw_argument = member.partition("=")
        name = name.rstrip(" \t")
        if not is_token(name):
            continue
        name = name.lower()
        if not equals:
            directives.append(Directive(name))
            continue
        raw_argument = raw_argument.lstrip(" \t")
        argument = raw_argument if is_token(raw_argument) else unquote(raw_argument)
        directives.append(Directive(name, argument, malformed_argument=argument is None))
    return tuple(directives)


@dataclass(frozen=True, slots=True)
class RequestCacheControl:
    """The request directives of RFC 9111 section 5.2.1 (and RFC 5861 section 4).

    `max_stale` is 2^31 when max-stale came without a value ("any staleness").
    """

    max_age: int | None = None
    max_stale: int | None = None
    min_fresh: int | None = None
    no_cache: bool = False
    no_store: bool = False
    no_transform: bool = False
    only_if_cached: bool = False
    stale_if_error: int | None = None
    malformed: frozenset[str] = frozenset()

    @classmethod
    def from_directives(cls, directives: Iterable[Directive]) -> RequestCacheControl:
        """Read the request directives out of parsed `directives`."""
        found = _Collected(directives)
        return cls(
            max_age=found.delta_seconds("max-age", restrictive=0),
            max_stale=found.delta_seconds("max-stale", restrictive=None, bare=DELTA_SECONDS_CAP),
            min_fresh=found.delta_seconds("min-fresh", restrictive=DELTA_SECONDS_CAP),
            no_cache=found.present("no-cache"),
            no_store=found.present("no-store"),
            no_transform=found.present("no-transform"),
            only_if_cached=found.present("only-if-cached"),
            stale_if_error=found.delta_seconds("stale-if-error", restrictive=None),
            malformed=frozenset(found.malformed),
        )


@dataclass(frozen=True, slots=True)
class ResponseCacheControl:
    """The response directives of RFC 9111 section 5.2.2 (and RFC 5861 sections 3-4).

    `no_cache` and `private` are the unqualified forms; `no_cache_fields` and
    `private_fields` hold the lower-cased field names of the qualified forms
    (sections 5.2.2.4 and 5.2.2.7), empty when there were none.
    """

    max_age: int | None = None
    s_maxage: int | None = None
    no_cache: bool = False
    no_cache_fields: frozenset[str] = frozenset()
    no_store: bool = False
    no_transform: bool = False
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    must_understand: bool = False
    private: bool = False
    private_fields: frozenset[str] = frozenset()
    public: bool = False
    stale_while_revalidate: int | None = None
    stale_if_error: int | None = None
    malformed: frozenset[str] = frozenset()

    @classmethod
    def from_directives(cls, directives: Iterable[Directive]) -> ResponseCacheControl:
        """Read the response directives out of parsed `directives`."""
        found = _Collected(directives)
        no_cache, no_cache_fields = found.field_list("no-cache")
        private, private_fields = found.field_list("private")
        return cls(
            max_age=found.delta_seconds("max-age", restrictive=0),
            s_maxage=found.delta_seconds("s-maxage", restrictive=0),
            no_cache=no_cache,
            no_cache_fields=no_cache_fields,
            no_store=found.present("no-store"),
            no_transform=found.present("no-transform"),
            must_revalidate=found.present("must-revalidate"),
            proxy_revalidate=found.present("proxy-revalidate"),
            must_understand=found.present("must-understand"),
            private=private,
            private_fields=private_fields,
            public=found.present("public"),
            stale_while_revalidate=found.delta_seconds("stale-while-revalidate", restrictive=None),
            stale_if_error=found.delta_seconds("stale-if-error", restrictive=None),
            malformed=frozenset(found.malformed),
        )

    def has_explicit_expiry(self, *, shared: bool) -> bool:
        """True when max-age (or, in a shared cache, s-maxage) gives the lifetime (section 4.2.1)."""
        return self.max_age is not None or (shared and self.s_maxage is not None)

    def forbids_stale(self, *, shared: bool) -> bool:
        """True when a stale copy must never be served unvalidated (section 4.2.4).

        That is must-revalidate (5.2.2.2) and, in a shared cache,
        proxy-revalidate (5.2.2.8) or s-maxage, which implies it (5.2.2.10).
        """
        return self.must_revalidate or (shared and (self.proxy_revalidate or self.s_maxage is not None))


class _Collected:
    """The directives of one message grouped by name, read with the rules above."""

    def __init__(self, directives: Iterable[Directive]) -> None:
        self._by_name: dict[str, list[Directive]] = {}
        for directive in directives:
            self._by_name.setdefault(directive.name, []).append(directive)
        self.malformed: set[str] = set()

    def present(self, name: str) -> bool:
        return name in self._by_name

    def delta_seconds(self, name: str, *, restrictive: int | None, bare: int | None = None) -> int | None:
        """The directive's delta-seconds, or `restrictive` when bad or conflicting.

        `bare` is the value of the directive without an argument, where that is
        allowed (max-stale); elsewhere a missing argument is malformed.
        """
        occurrences = self._by_name.get(name)
        if not occurrences:
            return None
        values: set[int | None] = set()
        for directive in occurrences:
            if directive.argument is None and not directive.malformed_argument:
                values.add(bare)
            else:
                values.add(None if directive.argument is None else parse_delta_seconds(directive.argument))
        if None in values or len(values) != 1:
            self.malformed.add(name)
            return restrictive
        return values.pop()

    def field_list(self, name: str) -> tuple[bool, frozenset[str]]:
        """(unqualified, qualified field names) for no-cache or private.

        An occurrence whose argument is not a non-empty list of field names
        counts as unqualified: the stricter reading.
        """
        unqualified = False
        fields: set[str] = set()
        for directive in self._by_name.get(name, ()):
            names = split_list(directive.argument) if directive.argument is not None else []
            if names and all(is_token(field) for field in names):
                fields.update(field.lower() for field in names)
            else:
                unqualified = True
                if directive.argument is not None or directive.malformed_argument:
                    self.malformed.add(name)
        return unqualified, frozenset(fields)


def response_cache_control(headers: Headers) -> ResponseCacheControl:
    """The response's Cache-Control directives (all field lines together).

    Pragma is not read: its meaning in responses was never specified (RFC
    9111 section 5.4).
    """
    return _response_directives(headers.get_all("cache-control"))


# A POP sees a handful of distinct Cache-Control values, and each stored miss
# used to parse the same one four times (storability, freshness, entry):
# parsed results are immutable, so they are shared per distinct field lines.
@functools.lru_cache(maxsize=1024)
def _response_directives(lines: tuple[str, ...]) -> ResponseCacheControl:
    return ResponseCacheControl.from_directives(parse_directives(lines))


def request_cache_control(headers: Headers) -> RequestCacheControl:
    """The request's Cache-Control directives, with Pragma's fallback.

    ``Pragma: no-cache`` counts as ``Cache-Control: no-cache`` only when the
    request has no Cache-Control field at all (RFC 7234 section 5.4; RFC 9111
    section 5.4 deprecates Pragma but HTTP/1.0 clients still send it).
    """
    lines = headers.get_all("cache-control")
    if not lines:
        return RequestCacheControl(no_cache=pragma_no_cache(headers))
    return RequestCacheControl.from_directives(parse_directives(lines))


def pragma_no_cache(headers: Headers) -> bool:
    """True when a Pragma field holds the no-cache pragma-directive (case-insensitive)."""
    return any(member.lower() == "no-cache" for member in split_list(headers.get_all("pragma")))


# RFC 9111 section 5.3: an invalid Expires, "especially the value 0", means a
# time in the past. The epoch is in the past of every Date we will meet.
ALREADY_EXPIRED: Final = 0


def expires_value(headers: Headers, *, now: float | None = None) -> int | None:
    """The Expires time in POSIX seconds; None when there is no Expires field.

    An Expires that is not one valid HTTP-date (including several lines with
    different values, section 4.2.1) gives `ALREADY_EXPIRED`. `now` only
    resolves two-digit years (see `edge.httpdate.parse_http_date`).
    """
    lines = headers.get_all("expires")
    if not lines:
        return None
    moments = {parse_http_date(line, now=now) for line in lines}
    if None in moments or len(moments) != 1:
        return ALREADY_EXPIRED
    return moments.pop()


def date_value(headers: Headers, *, now: float | None = None) -> int | None:
    """The Date field in POSIX seconds, or None when absent, invalid or ambiguous.

    A recipient treats a missing Date as the time the message arrived (RFC
    9110 section 6.6.1); callers substitute that for None.
    """
    moments = {parse_http_date(line, now=now) for line in headers.get_all("date")}
    return moments.pop() if len(moments) == 1 else None


def last_modified_value(headers: Headers, *, now: float | None = None) -> int | None:
    """The Last-Modified field in POSIX seconds, or None when absent, invalid or ambiguous."""
    moments = {parse_http_date(line, now=now) for line in headers.get_all("last-modified")}
    return moments.pop() if len(moments) == 1 else None


def age_value(headers: Headers) -> int | None:
    """The Age field's seconds (capped at 2^31), or None when absent or invalid.

    RFC 9111 section 5.1: a list-based Age is read by its first member; an
    invalid value is ignored.
    """
    members = split_list(headers.get_all("age"))
    return parse_delta_seconds(members[0]) if members else None
