"""Freshness, age, what to do with a stored response, invalidation (RFC 9111 sections 4.2-4.4, RFC 5861).

How it works: `freshness_lifetime` applies section 4.2.1's rules in order
(s-maxage, max-age, Expires - Date, then a heuristic where section 4.2.2
allows one); `current_age` is section 4.2.3's calculation term by term. `decide`
combines both with the request's and the stored response's directives into one
:class:`Decision` for the adapter: serve, serve and refresh in the
background, validate first, forward, or answer 504. `stale_if_error_allowed`
is the question the adapter asks when the upstream fails.

All times are POSIX seconds passed in; nothing here reads a clock.

`invalidated_urls` applies section 4.4: a non-error response (2xx or 3xx) to
an unsafe method, including any method whose safety we do not know,
invalidates the target URI (MUST), and here also the Location and
Content-Location URIs (MAY) when they share the target's origin; another
origin's URIs are never touched (section 4.4's denial-of-service note). This
is what drops a POP's stale availability after a purchase.

The other caching decisions live in `edge.storability` and `edge.validation`
and are re-exported here, so the adapter imports every decision from one place.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Final
from urllib.parse import urldefrag, urljoin

from edge import cachecontrol
from edge.cachecontrol import request_cache_control, response_cache_control
from edge.cachekey import TargetUri, parse_url
from edge.errors import MalformedRequestTarget
from edge.messages import Headers, Request, Response, StoredResponse
from edge.storability import HEURISTICALLY_CACHEABLE_STATUSES, headers_to_store, is_storable, why_not_storable
from edge.syntax import DELTA_SECONDS_CAP
from edge.validation import (
    client_not_modified,
    conditional_headers,
    not_modified_applies,
    not_modified_headers,
    refreshed_from_304,
    update_from_304,
)

__all__ = [
    "SAFE_METHODS",
    "STALE_IF_ERROR_STATUSES",
    "Action",
    "Decision",
    "age_header_value",
    "client_not_modified",
    "conditional_headers",
    "current_age",
    "decide",
    "freshness_lifetime",
    "headers_to_store",
    "heuristic_freshness_lifetime",
    "invalidated_urls",
    "is_storable",
    "not_modified_applies",
    "not_modified_headers",
    "refreshed_from_304",
    "stale_if_error_allowed",
    "stored_response_age",
    "update_from_304",
    "why_not_storable",
]

DAY: Final = 24 * 60 * 60
# Section 4.2.2: "A typical setting of this fraction might be 10%".
HEURISTIC_FRACTION: Final = 0.1
# Section 4.2.2 leaves the bound to us. A year-old Last-Modified would
# otherwise make a response fresh for five weeks; inventory documents change
# by the minute and always carry explicit freshness, so a day is generous.
HEURISTIC_LIFETIME_CAP: Final = 1 * DAY
# RFC 5861 section 4: the errors stale-if-error covers.
STALE_IF_ERROR_STATUSES: Final = frozenset({500, 502, 503, 504})
# Methods a stored GET response can answer (RFC 9110 section 9.3.2 for HEAD).
SERVABLE_METHODS: Final = frozenset({"GET", "HEAD"})


def freshness_lifetime(
    response: Response | StoredResponse, *, shared: bool = True, received_at: float | None = None
) -> int:
    """The freshness lifetime in whole seconds (RFC 9111 section 4.2.1), never negative.

    The first rule that applies wins: s-maxage (shared caches only), max-age,
    Expires minus Date, then `heuristic_freshness_lifetime`. A malformed
    max-age or s-maxage counts as 0 and an invalid Expires as already expired
    (see `edge.cachecontrol`).

    Args:
        response: the response; a `StoredResponse` brings its own receipt time.
        shared: whether the cache is shared (s-maxage applies only then).
        received_at: when the response arrived; stands in for a missing Date
            (RFC 9110 section 6.6.1). Defaults to a stored response's
            `response_time`.
    """
    if received_at is None and isinstance(response, StoredResponse):
        received_at = response.response_time
    directives = response_cache_control(response.headers)
    if shared and directives.s_maxage is not None:
        return directives.s_maxage
    if directives.max_age is not None:
        return directives.max_age
    headers = response.headers
    date = cachecontrol.date_value(headers, now=received_at)
    if date is None and received_at is not None:
        date = int(received_at)
    expires = cachecontrol.expires_value(headers, now=received_at)
    if expires is not None:
        return 0 if date is None else _seconds(expires - date)
    if response.status in HEURISTICALLY_CACHEABLE_STATUSES or directives.public:
        return heuristic_freshness_lifetime(date, cachecontrol.last_modified_value(headers, now=received_at))
    return 0


def heuristic_freshness_lifetime(date: float | None, last_modified: float | None) -> int:
    """10% of the time between Last-Modified and Date, at most a day (section 4.2.2).

    Only for responses without explicit expiry whose status is heuristically
    cacheable (RFC 9110 section 15.1) or that are marked public. 0 when either
    time is unknown or Last-Modified is after Date.
    """
    if date is None or last_modified is None:
        return 0
    return min(_seconds((date - last_modified) * HEURISTIC_FRACTION), HEURISTIC_LIFETIME_CAP)


def current_age(
    *, date_value: float | None, age_value: float | None, request_time: float, response_time: float, now: float
) -> float:
    """The current age in seconds, as RFC 9111 section 4.2.3 computes it::

        apparent_age = max(0, response_time - date_value)
        response_delay = response_time - request_time
        corrected_age_value = age_value + response_delay
        corrected_initial_age = max(apparent_age, corrected_age_value)
        resident_time = now - response_time
        current_age = corrected_initial_age + resident_time

    Args:
        date_value: the response's Date; None (missing) means `response_time`.
        age_value: the response's Age; None (missing or invalid) means 0.
        request_time: when the request that produced the response was sent.
        response_time: when the response was received.
        now: the current time.

    Returns:
        Never negative: the section assumes ``request_time <= response_time <=
        now``; if a wall clock stepped back, response_delay and resident_time
        are taken as 0 rather than let the age shrink below what the origin said.
    """
    apparent_age = max(0.0, response_time - (response_time if date_value is None else date_value))
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = (0.0 if age_value is None else age_value) + response_delay
    corrected_initial_age = max(apparent_age, corrected_age_value)
    resident_time = max(0.0, now - response_time)
    return corrected_initial_age + resident_time


def stored_response_age(stored: StoredResponse, now: float) -> float:
    """`current_age` of a stored response, reading Date and Age from its header fields."""
    return current_age(
        date_value=cachecontrol.date_value(stored.headers, now=stored.response_time),
        age_value=cachecontrol.age_value(stored.headers),
        request_time=stored.request_time,
        response_time=stored.response_time,
        now=now,
    )


def age_header_value(age_seconds: float) -> str:
    """The Age field value for an age (RFC 9111 section 5.1).

    Whole seconds rounded down, never negative, and at most 2^31 (section
    1.2.2 says to send 2147483648 for anything larger).
    """
    if math.isnan(age_seconds) or age_seconds <= 0:
        return "0"
    if age_seconds >= DELTA_SECONDS_CAP:
        return str(DELTA_SECONDS_CAP)
    return str(int(age_seconds))


class Action(enum.Enum):
    """What the adapter does with a request, given what the cache holds."""

    FRESH = "fresh"
    """Serve the stored response; it is fresh enough for this request."""
    STALE_WHILE_REVALIDATE = "stale-while-revalidate"
    """Serve the stale stored response and revalidate it in the background (RFC 5861 section 3)."""
    STALE_PERMITTED = "stale-permitted"
    """Serve the stale stored response: the request's max-stale allows it (section 5.2.1.2)."""
    MUST_REVALIDATE = "must-revalidate"
    """Send a conditional request (`conditional_headers`) before serving anything (section 4.3)."""
    FORWARD = "forward"
    """Nothing stored can answer this request: forward it upstream."""
    GATEWAY_TIMEOUT = "gateway-timeout"
    """only-if-cached and nothing servable is stored: answer 504 (section 5.2.1.7)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of `decide`: the action, why, and the numbers behind it."""

    action: Action
    reason: str
    age: float = 0.0
    freshness_lifetime: int = 0

    @property
    def serves_stored(self) -> bool:
        """True when the stored response goes to the client now, without waiting for upstream."""
        return self.action in (Action.FRESH, Action.STALE_WHILE_REVALIDATE, Action.STALE_PERMITTED)

    @property
    def staleness(self) -> float:
        """Seconds past the freshness lifetime; 0 while fresh."""
        return max(0.0, self.age - self.freshness_lifetime)

    @property
    def age_header(self) -> str:
        """The Age field value to send with the stored response."""
        return age_header_value(self.age)


def decide(request: Request, stored: StoredResponse | None, now: float, *, shared: bool = True) -> Decision:
    """Whether and how a stored response may answer `request` (RFC 9111 section 4).

    `stored` must already be the response selected for this request by the
    primary key and Vary (`edge.cachekey`), or None when there is none.

    The rules, in order:

    1. A method other than GET or HEAD is forwarded (section 4: the stored
       GET response cannot answer it).
    2. Nothing stored: forward, or 504 under only-if-cached (5.2.1.7).
    3. Validate first (or 504 under only-if-cached) when the response has an
       unqualified no-cache (5.2.2.4) or still holds a field its qualified
       no-cache names; when the request has no-cache or ``Pragma: no-cache``
       (5.2.1.4, 5.4); when the age exceeds the request's max-age (5.2.1.1); or
       when the remaining lifetime is below its min-fresh (5.2.1.3).
    4. Fresh (lifetime > age, section 4.2): serve.
    5. Stale, with must-revalidate, or in a shared cache proxy-revalidate or
       s-maxage: validate (5.2.2.2, 5.2.2.8, 5.2.2.10); no stale serving at all.
       The same when the request has max-age without max-stale: its client
       "does not wish to receive a stale response" (5.2.1.1).
    6. Stale by no more than stale-while-revalidate: serve and refresh in the
       background (RFC 5861 section 3).
    7. Stale by no more than the request's max-stale: serve (5.2.1.2).
    8. Otherwise validate (4.2.4: no stale response without permission).
    """
    if request.method not in SERVABLE_METHODS:
        return Decision(Action.FORWARD, f"method {request.method} is not answered from the cache")
    wanted = request_cache_control(request.headers)
    if stored is None:
        if wanted.only_if_cached:
            return Decision(Action.GATEWAY_TIMEOUT, "only-if-cached and nothing stored")
        return Decision(Action.FORWARD, "nothing stored")

    directives = response_cache_control(stored.headers)
    lifetime = freshness_lifetime(stored, shared=shared)
    age = stored_response_age(stored, now)

    def validate(reason: str) -> Decision:
        if wanted.only_if_cached:
            return Decision(Action.GATEWAY_TIMEOUT, f"only-if-cached, but {reason}", age, lifetime)
        return Decision(Action.MUST_REVALIDATE, reason, age, lifetime)

    if directives.no_cache:
        return validate("response no-cache")
    if not directives.no_cache_fields.isdisjoint(stored.headers.names()):
        return validate("stored response holds a field its no-cache names")
    if wanted.no_cache:
        return validate("request no-cache")
    if wanted.max_age is not None and age > wanted.max_age:
        return validate("older than the request's max-age")
    if wanted.min_fresh is not None and lifetime - age < wanted.min_fresh:
        return validate("fresh for less than the request's min-fresh")
    if lifetime > age:
        return Decision(Action.FRESH, "fresh", age, lifetime)

    staleness = age - lifetime
    if directives.forbids_stale(shared=shared):
        return validate("stale and must-revalidate, proxy-revalidate or s-maxage")
    if wanted.max_age is not None and wanted.max_stale is None:
        return validate("stale and the request's max-age refuses stale responses")
    if directives.stale_while_revalidate is not None and staleness <= directives.stale_while_revalidate:
        return Decision(Action.STALE_WHILE_REVALIDATE, "stale within stale-while-revalidate", age, lifetime)
    if wanted.max_stale is not None and staleness <= wanted.max_stale:
        return Decision(Action.STALE_PERMITTED, "stale within the request's max-stale", age, lifetime)
    return validate("stale")


def stale_if_error_allowed(request: Request, stored: StoredResponse, now: float, *, shared: bool = True) -> bool:
    """True when `stored` may answer `request` because the upstream failed (RFC 5861 section 4).

    Ask this when validating or fetching ends in a connection error, a
    timeout, or one of `STALE_IF_ERROR_STATUSES`. The window is the
    stale-if-error of the request or of the stored response, whichever is
    longer. Never when the response forbids stale serving (no-cache,
    must-revalidate, and in a shared cache proxy-revalidate or s-maxage:
    RFC 9111 section 4.2.4 and 5.2.2.2 outrank the extension). When the
    request asked for a validated or younger response (no-cache, max-age,
    min-fresh), only its own stale-if-error counts.
    """
    if request.method not in SERVABLE_METHODS:
        return False
    directives = response_cache_control(stored.headers)
    if directives.no_cache or directives.forbids_stale(shared=shared):
        return False
    wanted = request_cache_control(request.headers)
    staleness = max(0.0, stored_response_age(stored, now) - freshness_lifetime(stored, shared=shared))
    windows = [wanted.stale_if_error]
    client_is_strict = wanted.no_cache or wanted.max_age is not None or wanted.min_fresh is not None
    if not client_is_strict:
        windows.append(directives.stale_if_error)
    return any(window is not None and staleness <= window for window in windows)


def _seconds(value: float) -> int:
    """A duration as whole seconds in [0, 2^31] (RFC 9111 section 1.2.2 caps overflow there)."""
    if value <= 0:
        return 0
    return DELTA_SECONDS_CAP if value >= DELTA_SECONDS_CAP else int(value)


# -- Section 4.4: invalidation --------------------------------------------------

# RFC 9110 section 9.2.1. Methods are case-sensitive: "get" is not GET.
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# Section 10.2.2 (Location) and 8.7 (Content-Location): both may be relative
# references, resolved against the target URI.
_INVALIDATING_FIELDS: Final = ("location", "content-location")


def invalidated_urls(method: str, status: int, request_url: str, response_headers: Headers) -> tuple[str, ...]:
    """The normalised URLs whose stored responses must be invalidated after a response.

    Args:
        method: the request method as sent.
        status: the final response status.
        request_url: the absolute target URI of the request (as from
            `edge.cachekey.request_target_uri(...).url`).
        response_headers: the response's header fields.

    Returns:
        () for a safe method or an error status; otherwise the target URI
        first, then same-origin Location and Content-Location targets, each
        once, in `edge.cachekey.TargetUri.url` form (use them with
        `edge.cachekey.primary_key_for_url`). A field with several lines or a
        value that is not a usable http(s) URI is skipped. Invalidating means
        removing every stored response for the URL, or marking it as needing
        validation.

    Raises:
        MalformedRequestTarget: `request_url` is not an absolute http(s) URL.
    """
    if method in SAFE_METHODS or not 200 <= status < 400:
        return ()
    target = parse_url(request_url)
    urls = [target.url]
    for field in _INVALIDATING_FIELDS:
        lines = response_headers.get_all(field)
        if len(lines) != 1:
            continue
        resolved = _resolve(lines[0], target)
        if resolved is not None and resolved.origin == target.origin and resolved.url not in urls:
            urls.append(resolved.url)
    return tuple(urls)


def _resolve(reference: str, base: TargetUri) -> TargetUri | None:
    """`reference` resolved against `base` (RFC 3986 section 5), or None when unusable."""
    try:
        absolute, _fragment = urldefrag(urljoin(base.url, reference))
        return parse_url(absolute)
    except (ValueError, MalformedRequestTarget):  # urljoin raises ValueError on a bad IPv6 literal
        return None
