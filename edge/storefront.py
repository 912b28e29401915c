"""Pages the POP serves itself: the storefront, its demo session, and the status page's history.

The storefront is a static single-page app (package data under
`edge/static/`): `/` lists events near the POP, `/events/{id}` shows one
event with live availability, both the same HTML shell that `storefront.js`
fills in from the read API through this very POP. The shell and its assets
are the same for every user, so they carry `Cache-Control: public` and a
strong ETag (a hash of the bytes) and answer `If-None-Match` with 304; all
that is per user comes from `GET /_edge/session` (`private, no-store`).

Who the user is: the signed `bo_user` token of `edge.usertoken`. The demo
login (`POST /_edge/demo/login {"user_id": ...}`) issues it as an HttpOnly
cookie, but only on a site under a reserved test name (RFC 6761: `.test`,
`.localhost`, `.example`, `.invalid`), because it lets anyone claim any user
id. Consent to personalised prefetching is the `bo_consent` cookie, which
the page sets ("on"/"off"); "off" means the POP answers `/v1/hints` with an
empty list, whatever the predictor knows.

`StatusHistory` keeps what `/_edge/status` draws: one sample per
`STATUS_INTERVAL` for the last `STATUS_WINDOW`, each holding the hit ratio
and request rate over its interval (differences of the POP's cumulative
counters) and every upstream's breaker state. It is pure: the caller passes
the clocks' readings and the counters.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from edge.errors import PeerError
from edge.messages import Headers
from ops.settings import HOUR, SECOND

__all__ = [
    "CONSENT_COOKIE",
    "STATUS_INTERVAL",
    "STATUS_WINDOW",
    "Asset",
    "Counters",
    "StatusHistory",
    "StatusSample",
    "Storefront",
    "UpstreamSample",
    "consent_choice",
    "consent_refused",
    "demo_login_allowed",
    "parse_login",
]

# -- The storefront's files -----------------------------------------------------------------

# The shell is re-checked after a minute (a deploy shows up quickly); assets a
# little longer. Both revalidate cheaply by ETag.
SHELL_MAX_AGE: Final = 60
ASSET_MAX_AGE: Final = 300
SHELL_FILE: Final = "storefront.html"
STATUS_FILE: Final = "status.html"
# Files under /static/: name -> content type. Nothing else is served from there.
ASSET_TYPES: Final[Mapping[str, str]] = {
    "storefront.js": "text/javascript; charset=utf-8",
    "storefront.css": "text/css; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
}
HTML_TYPE: Final = "text/html; charset=utf-8"
STATIC_PREFIX: Final = "/static/"
EVENTS_PREFIX: Final = "/events/"
# Event ids as the origin writes them (evt-000123); the same shape edge.hints accepts.
_EVENT_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_~-]{0,127}")

CONSENT_COOKIE: Final = "bo_consent"
# A demo token lives a week: long enough for a demo, short enough to expire.
DEMO_TOKEN_TTL: Final = 7 * 24 * 3600
# RFC 6761 special-use names: a site under one of them is never a real shop.
_DEMO_SUFFIXES: Final = (".test", ".localhost", ".example", ".invalid")
MAX_LOGIN_BODY: Final = 1024  # {"user_id": <= 128 characters} and a little slack


@dataclass(frozen=True, slots=True)
class Asset:
    """One file the storefront serves, with the headers every copy of it carries."""

    body: bytes
    content_type: str
    etag: str
    max_age: int

    @classmethod
    def of(cls, body: bytes, content_type: str, max_age: int) -> Asset:
        return cls(body, content_type, '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"', max_age)

    def headers(self) -> Headers:
        return Headers(
            [
                ("Content-Type", self.content_type),
                ("Cache-Control", f"public, max-age={self.max_age}"),
                ("ETag", self.etag),
                # The pages load nothing from elsewhere; say so, so an injected
                # script or a stray CDN reference cannot run.
                ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'"),
                ("X-Content-Type-Options", "nosniff"),
            ]
        )

    def not_modified_by(self, if_none_match: str | None) -> bool:
        """Whether `If-None-Match` names this asset (RFC 9110 section 13.1.2, weak comparison)."""
        if if_none_match is None:
            return False
        tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
        return "*" in tags or self.etag in tags


class Storefront:
    """The storefront's and status page's files, read once from package data."""

    def __init__(self, files: Mapping[str, bytes] | None = None) -> None:
        """`files` (name -> bytes) replaces the package data, for tests."""
        names = (SHELL_FILE, STATUS_FILE, *ASSET_TYPES)
        read = files if files is not None else {name: _package_file(name) for name in names}
        self.shell = Asset.of(read[SHELL_FILE], HTML_TYPE, SHELL_MAX_AGE)
        self.status_page = Asset.of(read[STATUS_FILE], HTML_TYPE, SHELL_MAX_AGE)
        self.assets = {name: Asset.of(read[name], kind, ASSET_MAX_AGE) for name, kind in ASSET_TYPES.items()}

    @staticmethod
    def is_page_path(path: str) -> bool:
        """Whether `path` is one of the storefront's (not the read API's): `/`, `/events/…`, `/static/…`."""
        return path == "/" or path.startswith((EVENTS_PREFIX, STATIC_PREFIX))

    def lookup(self, path: str) -> Asset | None:
        """The asset at `path` (no query), or None: unknown files and malformed event ids are 404s."""
        if path == "/":
            return self.shell
        if path.startswith(EVENTS_PREFIX):
            return self.shell if _EVENT_ID.fullmatch(path.removeprefix(EVENTS_PREFIX)) else None
        if path.startswith(STATIC_PREFIX):
            return self.assets.get(path.removeprefix(STATIC_PREFIX))
        return None


def _package_file(name: str) -> bytes:
    return resources.files("edge").joinpath("static", name).read_bytes()


# -- The demo session -----------------------------------------------------------------------


def demo_login_allowed(site: str) -> bool:
    """Whether the demo login may run on `site`: only under an RFC 6761 special-use name."""
    return site.lower().rstrip(".").endswith(_DEMO_SUFFIXES)


def parse_login(body: bytes, content_type: str | None) -> str:
    """The user id a demo login asks for (validated by the caller with `is_valid_user_id`).

    JSON only: a cross-site HTML form cannot send `application/json` without
    a CORS preflight, so another site cannot log a visitor in as someone else.

    Raises:
        PeerError: not JSON, too large, or without a string `user_id`.
    """
    if (content_type or "").partition(";")[0].strip().lower() != "application/json":
        raise PeerError("send the login as Content-Type: application/json")
    if len(body) > MAX_LOGIN_BODY:
        raise PeerError(f"login body is larger than {MAX_LOGIN_BODY} bytes")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        raise PeerError(f"login body is not valid JSON: {exc}") from None
    user_id = document.get("user_id") if isinstance(document, dict) else None
    if not isinstance(user_id, str):
        raise PeerError('login body must be {"user_id": "..."}')
    return user_id


def consent_choice(cookie_header: str | None) -> str | None:
    """The `bo_consent` cookie's value, "on" or "off", or None when absent or anything else.

    The page asks for prefetching only after "on" (opt-in); the POP refuses
    hints only on "off", because API clients that send no cookie at all
    carry their consent in how they were given their token.
    """
    if cookie_header is None:
        return None
    for pair in cookie_header.split(";"):
        name, separator, value = pair.strip().partition("=")
        if separator and name == CONSENT_COOKIE:
            choice = value.strip().strip('"').lower()
            return choice if choice in ("on", "off") else None
    return None


def consent_refused(cookie_header: str | None) -> bool:
    """Whether the request's cookies say `bo_consent=off` (then no personalised hints)."""
    return consent_choice(cookie_header) == "off"


# -- The status page's history --------------------------------------------------------------

# One sample per 5 s for the last hour: 720 samples of a few hundred bytes.
STATUS_INTERVAL: Final = 5 * SECOND
STATUS_WINDOW: Final = 1 * HOUR


@dataclass(frozen=True, slots=True)
class Counters:
    """The POP's cumulative counters at one moment (they only grow)."""

    requests: int = 0
    hits: int = 0
    misses: int = 0
    stale_served: int = 0
    prefetched: int = 0
    prefetch_used: int = 0


@dataclass(frozen=True, slots=True)
class UpstreamSample:
    """One upstream at sampling time: its breaker state ("closed", "open", "half_open") and latency."""

    state: str
    ewma_latency: float | None

    @property
    def healthy(self) -> bool:
        return self.state == "closed"


@dataclass(frozen=True, slots=True)
class StatusSample:
    """What happened in one interval ending at `at` (POSIX seconds).

    `hit_ratio` is fresh hits over responses served from the cache or the
    upstream in the interval (the `/_edge/health` definition), None when
    nothing was served.
    """

    at: float
    seconds: float
    requests: int
    hits: int
    served: int
    prefetched: int
    upstreams: Mapping[str, UpstreamSample]

    @property
    def hit_ratio(self) -> float | None:
        return self.hits / self.served if self.served else None

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def to_document(self) -> dict[str, Any]:
        ratio = self.hit_ratio
        return {
            "at": round(self.at, 3),
            "seconds": round(self.seconds, 3),
            "requests": self.requests,
            "requests_per_second": round(self.requests_per_second, 3),
            "hits": self.hits,
            "served": self.served,
            "hit_ratio": None if ratio is None else round(ratio, 4),
            "prefetched": self.prefetched,
            "upstreams": {
                target: {
                    "state": upstream.state,
                    "healthy": upstream.healthy,
                    "ewma_latency": None if upstream.ewma_latency is None else round(upstream.ewma_latency, 6),
                }
                for target, upstream in sorted(self.upstreams.items())
            },
        }


class StatusHistory:
    """Samples of the POP's counters, one per `interval`, the newest `window` worth.

    `monotonic_start` is when counting began (the counters were `start`);
    the first sample covers the time since then.
    """

    def __init__(
        self,
        monotonic_start: float,
        *,
        start: Counters | None = None,
        interval: float = STATUS_INTERVAL,
        window: float = STATUS_WINDOW,
    ) -> None:
        if interval <= 0 or window < interval:
            raise ValueError("interval must be positive and window at least one interval")
        self.interval = interval
        self.window = window
        self.samples: deque[StatusSample] = deque(maxlen=int(window // interval))
        self._last_counters = start or Counters()
        self._last_monotonic = monotonic_start

    def due(self, monotonic_now: float) -> bool:
        """Whether an interval has passed since the last sample."""
        return monotonic_now - self._last_monotonic >= self.interval

    def record(
        self,
        *,
        wall_now: float,
        monotonic_now: float,
        counters: Counters,
        upstreams: Mapping[str, UpstreamSample],
    ) -> StatusSample:
        """Close the current interval: append and return its sample.

        A counter that went down (a restarted POP's counters fed to an old
        history) counts as zero for the interval rather than negative.
        """
        last = self._last_counters

        def grew(now: int, before: int) -> int:
            return max(0, now - before)

        hits = grew(counters.hits, last.hits)
        sample = StatusSample(
            at=wall_now,
            seconds=max(0.0, monotonic_now - self._last_monotonic),
            requests=grew(counters.requests, last.requests),
            hits=hits,
            served=hits + grew(counters.misses, last.misses) + grew(counters.stale_served, last.stale_served),
            prefetched=grew(counters.prefetched, last.prefetched),
            upstreams=dict(upstreams),
        )
        self.samples.append(sample)
        self._last_counters = counters
        self._last_monotonic = monotonic_now
        return sample

    def to_document(self) -> dict[str, Any]:
        """The body of `GET /_edge/status.json`'s `samples` part, oldest first."""
        return {
            "interval_seconds": self.interval,
            "window_seconds": self.window,
            "samples": [sample.to_document() for sample in self.samples],
        }
