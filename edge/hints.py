"""Prefetch hints for browsers: the predictor's contract, what the POP sends, hint precision.

The predictor contract (the POP is the client; this docstring is the contract)
--------------------------------------------------------------------------------
Request: ``GET {predictor}/v1/hints/{user_id}`` with ``Accept: application/json``.
``{user_id}`` is one path segment, percent-encoded; user ids match
`edge.usertoken.USER_ID_PATTERN`. The POP sends no body and no credentials,
does not follow redirects, and gives up after its timeout (default 300 ms).

Response ``200`` with ``Content-Type: application/json``, at most
`MAX_PREDICTOR_BODY_BYTES`::

    {"user_id": "u-42",
     "hints": [{"url": "/v1/items/itm-000123-01", "score": 0.83}, ...],
     "expires_at": "2025-01-01T12:00:00Z"}

* ``user_id`` (string, required) equals the requested id. A list naming
  anyone else is refused whole: it must never be shown to this caller.
* ``hints`` (array, required, at most `MAX_PREDICTOR_ENTRIES` entries, may be
  empty): objects with ``url`` (string) and ``score`` (number in [0, 1], the
  predicted probability that the user requests the URL soon). Extra members
  are ignored. An entry whose url is not hintable (`is_hintable_url`: a
  same-origin relative reference to a safe GET read resource —
  ``/v1/items/{id}``, ``/v1/events/{id}`` or ``/v1/events?{query}``) or whose
  score is missing or out of range is dropped and counted; the others stand.
  Order does not matter; a url listed twice keeps its higher score.
* ``expires_at`` (string, required): RFC 3339 date-time with an offset. After
  it the list is worthless; the POP also caps it at `MAX_HINT_LIFETIME` ahead.
* ``404``: the predictor knows nothing about the user; an empty list.
  Anything else (other statuses, a body that breaks these rules, a timeout)
  is a failure: the POP counts it and serves an empty list. Hints are an
  optimisation and never fail a page.

What the POP does with a list
-----------------------------
The POP keeps the top `MAX_HINTS` by score. `GET /v1/hints` answers
`hints_document` (private, never stored by any cache). Responses to an
identified user may carry `link_header` (``Link: </v1/items/x>; rel=prefetch``)
and ``Speculation-Rules: "/v1/hints/rules.json"``: per the HTML standard
(section 7.6.3) that header's value is a structured-field list of *URL strings*
pointing at rule sets served as ``application/speculationrules+json``, so the
value is the same for everybody and the per-user rules are the body of
`SPECULATION_RULES_PATH` (`speculation_rules_json`). Browsers apply it only to
HTML documents.

Hint precision
--------------
`PrefetchStats` counts prefetches served (requests marked by
`is_prefetch_request`) and prefetches later used: a non-prefetch request from
the same user for the same URL within a window. Uses the POP cannot see (the
browser answering from its own HTTP cache) are missed, so precision is a lower
bound; our service worker sends a revalidation request when it serves a
prefetched response so its uses are seen.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from typing import Final
from urllib.parse import quote

import aiohttp

from edge.errors import PeerError
from edge.upstream import read_capped
from edge.usertoken import is_valid_user_id

__all__ = [
    "HINTS_PATH",
    "HINTS_RESPONSE_HEADERS",
    "LINK_HEADER_TOP",
    "MAX_HINTS",
    "SERVICE_WORKER_CONTENT_TYPE",
    "SERVICE_WORKER_PATH",
    "SPECULATION_RULES_CONTENT_TYPE",
    "SPECULATION_RULES_HEADER_VALUE",
    "SPECULATION_RULES_PATH",
    "Hint",
    "HintList",
    "HintService",
    "HintServiceStats",
    "MalformedHints",
    "PrefetchStats",
    "hints_document",
    "is_hintable_url",
    "is_prefetch_request",
    "link_header",
    "parse_predictor_hints",
    "save_data_requested",
    "service_worker_source",
    "speculation_rules_json",
]

SECOND: Final = 1.0
MINUTE: Final = 60 * SECOND
KiB: Final = 1024

# A page can use only a few prefetched documents before the user moves on;
# more hints cost bandwidth (item documents are ~1-2 KiB) and cache room for
# little gain, and Chrome also limits eager speculative prefetches per page.
MAX_HINTS: Final = 5
# How many hints go into a Link header: each one is a request the browser may
# start right away, so only the best few.
LINK_HEADER_TOP: Final = 3
# A well-behaved predictor sends about MAX_HINTS entries; a longer array is a bug
# or an attack, refused before any per-entry work.
MAX_PREDICTOR_ENTRIES: Final = 64
# 64 entries of ~150 bytes each is under 10 KiB; 64 KiB leaves room and bounds
# what we read and parse per request.
MAX_PREDICTOR_BODY_BYTES: Final = 64 * KiB
MAX_HINT_URL_LENGTH: Final = 512
# Hints reflect what the user is doing now; a predictor that claims an hour is wrong.
MAX_HINT_LIFETIME: Final = 15 * MINUTE
# An empty list (no hints, predictor down) tells the service worker to ask again soon.
EMPTY_LIST_LIFETIME: Final = 30 * SECOND

HINTS_PATH: Final = "/v1/hints"
SPECULATION_RULES_PATH: Final = "/v1/hints/rules.json"
# A structured-field list (RFC 8941) of one string: the rules resource's URL.
SPECULATION_RULES_HEADER_VALUE: Final = f'"{SPECULATION_RULES_PATH}"'
SPECULATION_RULES_CONTENT_TYPE: Final = "application/speculationrules+json"
# Both per-user resources: never stored by the POP or any shared cache.
HINTS_RESPONSE_HEADERS: Final[Mapping[str, str]] = {
    "Cache-Control": "private, no-store",
    "Vary": "Cookie, Authorization",
}
SERVICE_WORKER_PATH: Final = "/sw.js"
SERVICE_WORKER_CONTENT_TYPE: Final = "text/javascript; charset=utf-8"

# Identifiers as the origin writes them (itm-000123-01, evt-000123); the first
# character is alphanumeric, so "." and ".." cannot appear as a segment.
_ID: Final = r"[A-Za-z0-9][A-Za-z0-9_~-]{0,127}"
_QUERY: Final = r"[A-Za-z0-9_.~-]+=[A-Za-z0-9_.~:-]*(?:&[A-Za-z0-9_.~-]+=[A-Za-z0-9_.~:-]*){0,7}"
# The read resources a hint may name: safe GETs whose response is the same for
# every user and cheap to serve from a POP's cache. Holds, orders, the change
# feed (long-poll) and snapshots (large) are deliberately absent.
_HINTABLE_URL: Final = re.compile(rf"/v1/(?:items/{_ID}|events/{_ID}|events\?{_QUERY})")
_RFC3339: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)


class MalformedHints(PeerError):
    """The predictor's answer breaks the contract in this module's docstring."""


@dataclass(frozen=True, slots=True)
class Hint:
    """One URL the user is likely to request soon, with the predicted probability."""

    url: str
    score: float


@dataclass(frozen=True, slots=True)
class HintList:
    """A user's hints, best first, at most MAX_HINTS; `expires_at` in POSIX seconds.

    `rejected` counts the predictor's entries that were dropped as invalid.
    """

    user_id: str
    hints: tuple[Hint, ...]
    expires_at: float
    rejected: int = 0

    @classmethod
    def empty(cls, user_id: str, now: float) -> HintList:
        """No hints, worth asking again after EMPTY_LIST_LIFETIME."""
        return cls(user_id, (), now + EMPTY_LIST_LIFETIME)

    def current(self, now: float) -> tuple[Hint, ...]:
        """The hints, or () once the list has expired."""
        return self.hints if now < self.expires_at else ()


def is_hintable_url(url: str) -> bool:
    """Whether `url` may be prefetched: a same-origin path to a safe GET read resource.

    Only origin-relative references (no scheme, no "//" authority) of the
    shapes `_HINTABLE_URL` allows; no dot segments, percent-escapes,
    backslashes, fragments or whitespace, so nothing can be re-read as
    another path or another host.
    """
    return len(url) <= MAX_HINT_URL_LENGTH and ".." not in url and _HINTABLE_URL.fullmatch(url) is not None


def parse_predictor_hints(body: bytes, *, user_id: str, now: float) -> HintList:
    """Validate the predictor's answer for `user_id` (see the module docstring).

    Returns the valid hints, best first (ties by URL), at most MAX_HINTS; no
    hints when the list has expired at `now`.

    Raises:
        MalformedHints: the body is too large, not JSON, not the documented
            shape, names another user, or has no valid expires_at.
    """
    if len(body) > MAX_PREDICTOR_BODY_BYTES:
        raise MalformedHints(f"hint list is larger than {MAX_PREDICTOR_BODY_BYTES} bytes")
    try:
        document = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MalformedHints(f"hint list is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise MalformedHints("hint list is not a JSON object")
    if document.get("user_id") != user_id:
        raise MalformedHints("hint list names another user")
    entries = document.get("hints")
    if not isinstance(entries, list):
        raise MalformedHints("hints is not an array")
    if len(entries) > MAX_PREDICTOR_ENTRIES:
        raise MalformedHints(f"more than {MAX_PREDICTOR_ENTRIES} hints")
    expires_text = document.get("expires_at")
    expires_at = parse_rfc3339(expires_text) if isinstance(expires_text, str) else None
    if expires_at is None:
        raise MalformedHints("expires_at is not an RFC 3339 date-time")
    expires_at = min(expires_at, now + MAX_HINT_LIFETIME)

    best: dict[str, float] = {}
    rejected = 0
    for entry in entries:
        hint = _valid_hint(entry)
        if hint is None:
            rejected += 1
        elif hint.score > best.get(hint.url, -1.0):
            best[hint.url] = hint.score
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:MAX_HINTS]
    hints = tuple(Hint(url, score) for url, score in ranked) if now < expires_at else ()
    return HintList(user_id, hints, expires_at, rejected)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _valid_hint(entry: object) -> Hint | None:
    if not isinstance(entry, dict):
        return None
    url, score = entry.get("url"), entry.get("score")
    if not isinstance(url, str) or not is_hintable_url(url):
        return None
    if isinstance(score, bool) or not isinstance(score, int | float):
        return None
    score = float(score)
    if not (math.isfinite(score) and 0.0 <= score <= 1.0):
        return None
    return Hint(url, score)


def parse_rfc3339(text: str) -> float | None:
    """POSIX seconds of an RFC 3339 date-time (section 5.6, offset required), or None.

    A leap second (":60") is read as ":59": it is an expiry, not a timestamp.
    """
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(group) for group in match.groups()[:6])
    fraction, zulu, sign, offset_hours, offset_minutes = match.groups()[6:]
    try:
        zone = UTC
        if not zulu:
            offset = timedelta(hours=int(offset_hours), minutes=int(offset_minutes))
            zone = timezone(-offset if sign == "-" else offset)
        moment = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=zone)
    except ValueError:
        return None
    return moment.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)


def format_rfc3339(moment: float) -> str:
    """`moment` (POSIX seconds) as an RFC 3339 UTC date-time, whole seconds."""
    return datetime.fromtimestamp(math.floor(moment), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def hints_document(hint_list: HintList, now: float) -> bytes:
    """The body of `GET /v1/hints` (send with HINTS_RESPONSE_HEADERS).

    ``{"user_id": ..., "hints": [{"url": ..., "score": ...}], "expires_at": RFC 3339}``,
    the predictor's shape, so the service worker reads both the same way.
    """
    document = {
        "user_id": hint_list.user_id,
        "hints": [{"url": hint.url, "score": hint.score} for hint in hint_list.current(now)],
        "expires_at": format_rfc3339(hint_list.expires_at),
    }
    return json.dumps(document, separators=(",", ":")).encode()


def speculation_rules_json(hints: Sequence[Hint]) -> str:
    """The speculation rule set for `hints`, served at SPECULATION_RULES_PATH.

    A list rule (HTML section 7.6.1) with the hints' URLs; its default
    eagerness for list rules is "immediate". Serve it as
    SPECULATION_RULES_CONTENT_TYPE with HINTS_RESPONSE_HEADERS.
    """
    urls = [hint.url for hint in hints if is_hintable_url(hint.url)]
    rules: dict[str, object] = {"prefetch": [{"source": "list", "urls": urls}] if urls else []}
    return json.dumps(rules, separators=(",", ":"))


def link_header(hints: Sequence[Hint], top: int = LINK_HEADER_TOP) -> str:
    """A `Link` value prefetching the first `top` hints (RFC 8288), "" when there are none.

    Hintable URLs hold no ">", "," or ";", so they need no escaping. The
    value is per user: add it after the cache lookup, never store it.
    """
    return ", ".join(f"<{hint.url}>; rel=prefetch" for hint in hints[:top] if is_hintable_url(hint.url))


def save_data_requested(headers: Mapping[str, str]) -> bool:
    """Whether the request carries `Save-Data: on` (then send no prefetch headers).

    `headers` must look names up case-insensitively (aiohttp's request.headers does).
    """
    value = headers.get("Save-Data")
    return value is not None and value.partition(";")[0].strip().lower() == "on"


def is_prefetch_request(headers: Mapping[str, str]) -> bool:
    """Whether the request is a prefetch rather than a use.

    * ``Sec-Purpose: prefetch`` (a structured-field list; parameters such as
      ``;anonymous-client-ip`` may follow): speculation rules and Firefox's
      ``<link rel=prefetch>``.
    * ``Purpose: prefetch``: Chrome's legacy header for ``<link rel=prefetch>``.
    * ``X-Sec-Purpose: prefetch``: our service worker. ``Sec-`` names are
      forbidden request headers (Fetch standard): a script's attempt to set one
      is silently dropped, so the worker marks its prefetches this way instead.
    """
    for name in ("Sec-Purpose", "X-Sec-Purpose", "Purpose"):
        value = headers.get(name)
        if value is not None and value.split(",")[0].partition(";")[0].strip().lower() == "prefetch":
            return True
    return False


def service_worker_source() -> bytes:
    """The service worker script (package data `edge/static/sw.js`), read from disk.

    Call it once when building the application, not per request. Serve it at
    SERVICE_WORKER_PATH as SERVICE_WORKER_CONTENT_TYPE with `Cache-Control:
    no-cache`, so browsers check for a new worker on every registration.
    """
    return resources.files("edge").joinpath("static", "sw.js").read_bytes()


# -- The predictor adapter -------------------------------------------------------------------

# The hints answer sits on a page's critical path; a predictor slower than this
# is treated as down for this request.
DEFAULT_PREDICTOR_TIMEOUT: Final = 0.3 * SECOND
# A user's next page view usually comes within seconds; a few seconds of reuse
# absorbs the page, /v1/hints and rules.json asking at once without serving
# hints that lag behind the user's clicks.
DEFAULT_CACHE_TTL: Final = 5 * SECOND
# After a failure, wait this long before asking the predictor for that user again.
FAILURE_CACHE_TTL: Final = 1 * SECOND
# About 100 bytes of hints per user: 10,000 users is ~1 MiB per POP worker.
DEFAULT_MAX_CACHED_USERS: Final = 10_000


@dataclass(slots=True)
class HintServiceStats:
    """Counters for /metrics; they only ever grow."""

    lookups: int = 0
    cache_hits: int = 0
    predictor_requests: int = 0
    failures: int = 0  # timeouts, connection errors, unexpected statuses, malformed lists
    malformed: int = 0  # the subset of failures that were contract violations
    unknown_users: int = 0  # 404 from the predictor
    not_configured: int = 0  # lookups answered empty because there is no predictor
    rejected_hints: int = 0  # entries dropped from otherwise valid lists


@dataclass(slots=True)
class _Cached:
    hint_list: HintList
    fresh_until: float  # on the monotonic clock


class HintService:
    """Fetches users' hint lists from the predictor, briefly cached; never raises for predictor trouble.

    `session` is owned by the caller (the POP's cleanup context closes it).
    `predictor_url` is the predictor's base URL ("http://127.0.0.1:8200") or
    None when hints are off. `wall_clock` reads POSIX time for expiry,
    `monotonic_clock` times cache entries; tests pass their own.
    Concurrent lookups for one user share one predictor request.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None,
        predictor_url: str | None,
        *,
        timeout: float = DEFAULT_PREDICTOR_TIMEOUT,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        max_cached_users: int = DEFAULT_MAX_CACHED_USERS,
        wall_clock: Callable[[], float] = time.time,
        monotonic_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout <= 0 or cache_ttl < 0 or max_cached_users < 1:
            raise ValueError("timeout must be positive, cache_ttl not negative, max_cached_users at least 1")
        self._session = session
        self._base_url = predictor_url.rstrip("/") if predictor_url else None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._cache_ttl = cache_ttl
        self._max_cached_users = max_cached_users
        self._wall_clock = wall_clock
        self._monotonic_clock = monotonic_clock
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._in_flight: dict[str, asyncio.Future[HintList]] = {}
        self.stats = HintServiceStats()

    @property
    def configured(self) -> bool:
        return self._session is not None and self._base_url is not None

    async def hints_for(self, user_id: str) -> HintList:
        """The hint list of `user_id`, which must come from a verified token.

        Returns an empty list when there is no predictor, it fails, or it
        knows nothing about the user.
        """
        self.stats.lookups += 1
        now = self._wall_clock()
        if self._session is None or self._base_url is None:
            self.stats.not_configured += 1
            return HintList.empty(user_id, now)
        if not is_valid_user_id(user_id):  # verified tokens only hold valid ids; this is defence in depth
            return HintList.empty(user_id, now)
        cached = self._cache.get(user_id)
        fresh = cached is not None and self._monotonic_clock() < cached.fresh_until
        if cached is not None and fresh and now < cached.hint_list.expires_at:
            self._cache.move_to_end(user_id)
            self.stats.cache_hits += 1
            return cached.hint_list
        pending = self._in_flight.get(user_id)
        if pending is not None:
            # Shielded: a waiter being cancelled must not cancel the shared answer.
            return await asyncio.shield(pending)
        shared: asyncio.Future[HintList] = asyncio.get_running_loop().create_future()
        self._in_flight[user_id] = shared
        try:
            hint_list, ttl = await self._fetch(self._session, self._base_url, user_id)
            self._store(user_id, hint_list, ttl)
            shared.set_result(hint_list)
            return hint_list
        finally:
            del self._in_flight[user_id]
            if not shared.done():  # we were cancelled: waiters get no hints rather than an error
                shared.set_result(HintList.empty(user_id, self._wall_clock()))

    async def _fetch(self, session: aiohttp.ClientSession, base_url: str, user_id: str) -> tuple[HintList, float]:
        url = f"{base_url}/v1/hints/{quote(user_id, safe='')}"
        self.stats.predictor_requests += 1
        try:
            async with session.get(
                url, timeout=self._timeout, allow_redirects=False, headers={"Accept": "application/json"}
            ) as response:
                if response.status == 404:
                    self.stats.unknown_users += 1
                    return HintList.empty(user_id, self._wall_clock()), self._cache_ttl
                if response.status != 200:
                    raise MalformedHints(f"predictor answered {response.status}")
                body = await _read_bounded(response, MAX_PREDICTOR_BODY_BYTES)
            hint_list = parse_predictor_hints(body, user_id=user_id, now=self._wall_clock())
        except MalformedHints:
            self.stats.failures += 1
            self.stats.malformed += 1
            return HintList.empty(user_id, self._wall_clock()), FAILURE_CACHE_TTL
        except (aiohttp.ClientError, TimeoutError):
            self.stats.failures += 1
            return HintList.empty(user_id, self._wall_clock()), FAILURE_CACHE_TTL
        self.stats.rejected_hints += hint_list.rejected
        return hint_list, self._cache_ttl

    def _store(self, user_id: str, hint_list: HintList, ttl: float) -> None:
        self._cache[user_id] = _Cached(hint_list, self._monotonic_clock() + ttl)
        self._cache.move_to_end(user_id)
        while len(self._cache) > self._max_cached_users:
            self._cache.popitem(last=False)


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, refusing more than `limit` bytes without reading them all."""
    if response.content_length is not None and response.content_length > limit:
        raise MalformedHints(f"predictor body is larger than {limit} bytes")
    return await read_capped(response, limit, lambda: MalformedHints(f"predictor body is larger than {limit} bytes"))


# -- Hint precision --------------------------------------------------------------------------

# A prefetch used after this long was not what made the page fast; count it unused.
DEFAULT_USE_WINDOW: Final = 5 * MINUTE
DEFAULT_MAX_TRACKED_USERS: Final = 10_000
# Per user: a few refreshes' worth of MAX_HINTS.
MAX_TRACKED_PREFETCHES_PER_USER: Final = 4 * MAX_HINTS


class PrefetchStats:
    """Counts prefetches served and prefetches later used; bounded memory.

    Pure: the caller passes `now` (any clock, as long as it is always the same
    one). URLs are the request's path and query exactly as the hints write
    them. Each prefetch is used at most once; the user's set of recent
    prefetches keeps the newest MAX_TRACKED_PREFETCHES_PER_USER, and the least
    recently active users are forgotten past `max_tracked_users`.
    """

    def __init__(
        self, *, use_window: float = DEFAULT_USE_WINDOW, max_tracked_users: int = DEFAULT_MAX_TRACKED_USERS
    ) -> None:
        if use_window < 0 or max_tracked_users < 1:
            raise ValueError("use_window must not be negative, max_tracked_users at least 1")
        self.use_window = use_window
        self.max_tracked_users = max_tracked_users
        self.prefetched = 0
        self.used = 0
        # Prefetches without a verified user cannot be matched to a use, so they
        # stay out of the precision figure.
        self.prefetched_unattributed = 0
        self._recent: OrderedDict[str, OrderedDict[str, float]] = OrderedDict()

    def record(self, user_id: str | None, url: str, *, prefetch: bool, now: float) -> None:
        """Record a successful (2xx or 304) request, `prefetch` as `is_prefetch_request` says."""
        if user_id is None:
            self.prefetched_unattributed += prefetch
            return
        if prefetch:
            self.prefetched += 1
            urls = self._recent.setdefault(user_id, OrderedDict())
            self._recent.move_to_end(user_id)
            urls[url] = now
            urls.move_to_end(url)
            while len(urls) > MAX_TRACKED_PREFETCHES_PER_USER:
                urls.popitem(last=False)
            while len(self._recent) > self.max_tracked_users:
                self._recent.popitem(last=False)
            return
        urls_or_none = self._recent.get(user_id)
        if urls_or_none is None:
            return
        prefetched_at = urls_or_none.pop(url, None)
        if prefetched_at is not None and 0 <= now - prefetched_at <= self.use_window:
            self.used += 1
        if not urls_or_none:
            del self._recent[user_id]

    @property
    def tracked_users(self) -> int:
        return len(self._recent)

    @property
    def precision(self) -> float | None:
        """used / prefetched, or None before the first attributed prefetch."""
        return self.used / self.prefetched if self.prefetched else None
