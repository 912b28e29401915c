"""The POP's own endpoints, and per-user hint headers on the way out.

    GET  /_edge/health        load, capacity, hit ratio, cache, upstreams, feed, shard map (GeoDNS reads `load`)
    GET  /metrics             Prometheus text
    POST /_edge/warm          {"urls": [{"url": "/v1/items/…", "priority": 0.9}, …]} (bearer token)
    POST /_edge/purge         {"urls": ["/v1/items/…", …]} (bearer token)
    GET  /v1/hints            the caller's prefetch list (user from the signed bo_user token)
    GET  /v1/hints/rules.json the same list as Speculation Rules
    GET  /sw.js               the service worker
    GET  /, /events/{id}, /static/…   the storefront (edge.storefront; same shell for everyone, cacheable)
    GET  /_edge/session       who the page's user is, consent, Save-Data, the POP's region (private)
    POST /_edge/demo/login    {"user_id": …} → the bo_user cookie (demo sites only, see edge.storefront)
    POST /_edge/demo/logout   clears it
    GET  /_edge/status        the status page: hit ratio, request rate, upstream health over the last hour
    GET  /_edge/status.json   its data: one sample per 5 s (edge.storefront.StatusHistory)

`/v1/hints` answers an empty list under `Save-Data: on` or `bo_consent=off`:
the service worker then prefetches nothing, whatever the predictor said.

Warming fetches in priority order with bounded concurrency and admits a
response only if that evicts nothing hotter (`S3FifoCache.admit_if_room`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from multidict import CIMultiDict, CIMultiDictProxy

from edge import hints as hintlib
from edge.entry import plain_response
from edge.errors import EdgeError, PeerError
from edge.feedfollow import FeedFollower
from edge.hints import HintService, PrefetchStats
from edge.messages import Headers
from edge.pop import ClientRequest, Pop
from edge.shardmap import ShardMapPoller
from edge.storefront import (
    DEMO_TOKEN_TTL,
    Asset,
    Counters,
    StatusHistory,
    StatusSample,
    Storefront,
    UpstreamSample,
    consent_choice,
    consent_refused,
    demo_login_allowed,
    parse_login,
)
from edge.streamfollow import StreamFollower
from edge.upstream import UpstreamUnavailable
from edge.usertoken import COOKIE_NAME, InvalidToken, is_valid_user_id, issue_cookie, user_from_headers
from ops.metrics import CONTENT_TYPE, Registry

MAX_WARM_URLS: Final = 1_000  # a warm list is a POP's top items, not a crawl
MAX_PURGE_URLS: Final = 10_000
RATE_WINDOW: Final = 5.0  # seconds over which `load` (requests per second) is measured
# Per-user answers: never stored by a shared cache, and they differ by Save-Data.
_PER_USER_HEADERS: Final[Mapping[str, str]] = {**hintlib.HINTS_RESPONSE_HEADERS,
                                               "Vary": "Cookie, Authorization, Save-Data"}  # fmt: skip

Handler = Callable[[ClientRequest], Awaitable[bytes]]


@dataclass
class RateMeter:
    """Requests per second over the last window, from a monotonically growing count."""

    samples: list[tuple[float, int]] = field(default_factory=list)

    def rate(self, count: int, now: float) -> float:
        self.samples.append((now, count))
        while len(self.samples) > 2 and now - self.samples[1][0] >= RATE_WINDOW:
            self.samples.pop(0)
        first_time, first_count = self.samples[0]
        return 0.0 if now <= first_time else (count - first_count) / (now - first_time)


class EdgeApp:
    def __init__(
        self,
        pop: Pop,
        *,
        hints: HintService | None,
        follower: FeedFollower | StreamFollower | None,
        shardmap: ShardMapPoller | None = None,
        started_at: float | None = None,
    ) -> None:
        self.pop = pop
        self.hints = hints
        self.follower = follower
        self.shardmap = shardmap
        self.prefetch = PrefetchStats()
        self.started_at = time.monotonic() if started_at is None else started_at
        self.meter = RateMeter()
        self.load = 0.0
        self._secret = pop.settings.user_secret.encode()
        self._sw = hintlib.service_worker_source()
        self.storefront = Storefront()
        self.status = StatusHistory(time.monotonic())
        self.metrics = Registry()
        self._register_metrics()
        self._routes: dict[tuple[str, str], Handler] = {
            ("GET", "/_edge/health"): self.health,
            ("GET", "/metrics"): self.render_metrics,
            ("POST", "/_edge/warm"): self.warm,
            ("POST", "/_edge/purge"): self.purge,
            ("GET", hintlib.HINTS_PATH): self.user_hints,
            ("GET", hintlib.SPECULATION_RULES_PATH): self.speculation_rules,
            ("GET", hintlib.SERVICE_WORKER_PATH): self.service_worker,
            ("GET", "/_edge/session"): self.session,
            ("POST", "/_edge/demo/login"): self.demo_login,
            ("POST", "/_edge/demo/logout"): self.demo_logout,
            ("GET", "/_edge/status"): self.status_page,
            ("GET", "/_edge/status.json"): self.status_json,
        }

    @property
    def hints_enabled(self) -> bool:
        return bool(self._secret)

    def internal(self, target: str) -> Handler | None:
        """The handler for `target` if it is one of ours; page requests get the hint wrapper."""
        path = target.split("?", 1)[0]
        if path.startswith("/_edge/") or path in ("/metrics", hintlib.HINTS_PATH, hintlib.SPECULATION_RULES_PATH,
                                                  hintlib.SERVICE_WORKER_PATH):  # fmt: skip
            return self._dispatch
        if Storefront.is_page_path(path):
            return self._page
        if self.hints_enabled:
            return self._with_hints
        return None

    async def _dispatch(self, request: ClientRequest) -> bytes:
        path = request.target.split("?", 1)[0]
        handler = self._routes.get((request.method, path))
        if handler is None:
            methods = sorted(method for method, route in self._routes if route == path)
            if methods:
                return self.pop.error(405, f"{path} takes {', '.join(methods)}", request,
                                      extra=(("Allow", ", ".join(methods)),))  # fmt: skip
            return self.pop.error(404, f"no POP endpoint {path}", request)
        try:
            return await handler(request)
        except _Unauthorized as exc:
            return self.pop.error(401, exc.message, request, extra=(("WWW-Authenticate", 'Bearer realm="edge"'),))
        except PeerError as exc:
            return self.pop.error(400, exc.message, request)

    def tick(self) -> None:
        """Called about once a second by the service: refresh the load figure, sample the status history."""
        now = time.monotonic()
        self.load = self.meter.rate(self.pop.stats.requests, now)
        if self.status.due(now):
            self.sample_status(wall_now=time.time(), monotonic_now=now)

    def sample_status(self, *, wall_now: float, monotonic_now: float) -> StatusSample:
        """Close the status history's current interval with the POP's counters now."""
        stats = self.pop.stats
        counters = Counters(stats.requests, stats.hits, stats.misses, stats.stale_served,
                            self.prefetch.prefetched + self.prefetch.prefetched_unattributed,
                            self.prefetch.used)  # fmt: skip
        upstreams = {
            target: UpstreamSample(h.state, h.ewma_latency) for target, h in self.pop.upstream.snapshot().items()
        }
        return self.status.record(wall_now=wall_now, monotonic_now=monotonic_now, counters=counters,
                                  upstreams=upstreams)  # fmt: skip

    # Endpoints -------------------------------------------------------------------
    async def health(self, request: ClientRequest) -> bytes:
        stats = self.pop.stats
        served = stats.hits + stats.misses + stats.stale_served
        upstreams = {
            target: {"state": h.state, "consecutive_failures": h.consecutive_failures,
                     "ewma_latency": h.ewma_latency, "last_error": h.last_error}
            for target, h in self.pop.upstream.snapshot().items()
        }  # fmt: skip
        all_open = bool(upstreams) and all(u["state"] == "open" for u in upstreams.values())
        doc = {
            "status": "degraded" if all_open else "ok",
            "pop": self.pop.settings.pop,
            "load": round(self.load, 1),
            "capacity": self.pop.settings.capacity,
            "hit_ratio": round(stats.hits / served, 4) if served else None,
            "requests": stats.requests,
            "cache": {
                "entries": len(self.pop.cache),
                "bytes": self.pop.cache.bytes_used,
                "capacity_bytes": self.pop.cache.capacity_bytes,
            },
            "upstreams": upstreams,
            "feed": None if self.follower is None else self.follower.status().to_document(),
            "shardmap": None if self.shardmap is None else self.shardmap.status().to_document(),
            "region": self.pop.settings.region or None,
            "uptime_seconds": round(time.monotonic() - self.started_at, 1),
        }
        return self._json(doc, request, status=200)

    async def render_metrics(self, request: ClientRequest) -> bytes:
        body = self.metrics.render().encode()
        return self._raw(200, body, CONTENT_TYPE, request, {"Cache-Control": "no-store"})

    async def warm(self, request: ClientRequest) -> bytes:
        self._authorize(request)
        entries = _json_body(request).get("urls")
        if not isinstance(entries, list) or len(entries) > MAX_WARM_URLS:
            raise PeerError(f"urls: a list of at most {MAX_WARM_URLS} {{url, priority}} objects")
        wanted: list[tuple[float, str]] = []
        for entry in entries:
            url = entry.get("url") if isinstance(entry, dict) else entry
            priority = entry.get("priority", 0.0) if isinstance(entry, dict) else 0.0
            if not isinstance(url, str) or not url.startswith("/") or not isinstance(priority, int | float):
                raise PeerError("each url must be a path starting with / and priority a number")
            wanted.append((float(priority), url))
        wanted.sort(key=lambda pair: -pair[0])
        counts = {"warmed": 0, "already_cached": 0, "skipped": 0, "failed": 0}
        limit = asyncio.Semaphore(self.pop.settings.warm_concurrency)

        async def warm_one(url: str) -> None:
            async with limit:
                counts[await self._warm_url(url, request)] += 1

        async with asyncio.TaskGroup() as group:
            for _, url in wanted:
                group.create_task(warm_one(url))
        return self._json(counts, request, status=200)

    async def _warm_url(self, url: str, request: ClientRequest) -> str:
        try:
            key = self.pop.key_for(url)
        except PeerError:
            return "failed"
        if self.pop.cache.peek(key) is not None:
            return "already_cached"
        warm_request = ClientRequest("GET", url, Headers([("Host", self.pop.settings.site)]), b"", True, request.client)
        try:
            return "warmed" if await self.pop.warm(key, warm_request) else "skipped"
        except (EdgeError, UpstreamUnavailable, TimeoutError):
            return "failed"

    async def purge(self, request: ClientRequest) -> bytes:
        self._authorize(request)
        urls = _json_body(request).get("urls")
        if not isinstance(urls, list) or len(urls) > MAX_PURGE_URLS or not all(isinstance(u, str) for u in urls):
            raise PeerError(f"urls: a list of at most {MAX_PURGE_URLS} paths")
        purged = sum(self.pop.purge_url(url) for url in urls)
        return self._json({"purged": purged}, request, status=200)

    async def user_hints(self, request: ClientRequest) -> bytes:
        user = self._user(request)
        if user is None:
            return self.pop.error(401, "send the bo_user cookie or Authorization: Bearer <token>", request)
        assert self.hints is not None
        now = time.time()
        if self._no_prefetching(request):
            hint_list = hintlib.HintList.empty(user, now)
        else:
            hint_list = await self.hints.hints_for(user)
        body = hintlib.hints_document(hint_list, now)
        return self._raw(200, body, "application/json", request, _PER_USER_HEADERS)

    async def speculation_rules(self, request: ClientRequest) -> bytes:
        user = self._user(request)
        hints: tuple[hintlib.Hint, ...] = ()
        if user is not None and self.hints is not None and not self._no_prefetching(request):
            hints = (await self.hints.hints_for(user)).current(time.time())
        body = hintlib.speculation_rules_json(hints).encode()
        return self._raw(200, body, hintlib.SPECULATION_RULES_CONTENT_TYPE, request, _PER_USER_HEADERS)

    async def service_worker(self, request: ClientRequest) -> bytes:
        return self._raw(200, self._sw, hintlib.SERVICE_WORKER_CONTENT_TYPE, request,
                         {"Cache-Control": "no-cache", "Service-Worker-Allowed": "/"})  # fmt: skip

    # The storefront and status page ---------------------------------------------
    async def _page(self, request: ClientRequest) -> bytes:
        path = request.target.split("?", 1)[0]
        if request.method not in ("GET", "HEAD"):
            return self.pop.error(405, f"{path} takes GET, HEAD", request, extra=(("Allow", "GET, HEAD"),))
        asset = self.storefront.lookup(path)
        if asset is None:
            return self.pop.error(404, f"no page {path[:200]}", request)
        return self._asset(asset, request)

    async def status_page(self, request: ClientRequest) -> bytes:
        return self._asset(self.storefront.status_page, request)

    async def status_json(self, request: ClientRequest) -> bytes:
        stats = self.pop.stats
        served = stats.hits + stats.misses + stats.stale_served
        doc = {
            "pop": self.pop.settings.pop,
            "region": self.pop.settings.region or None,
            "now": round(time.time(), 3),
            **self.status.to_document(),
            "totals": {
                "requests": stats.requests,
                "hit_ratio": round(stats.hits / served, 4) if served else None,
                "load": round(self.load, 1),
                "prefetched": self.prefetch.prefetched + self.prefetch.prefetched_unattributed,
                "prefetch_used": self.prefetch.used,
            },
        }
        return self._json(doc, request, status=200)

    async def session(self, request: ClientRequest) -> bytes:
        view = _view(request.headers)
        settings = self.pop.settings
        doc = {
            "user_id": self._user(request),
            "consent": consent_choice(view.get("Cookie")),
            "save_data": hintlib.save_data_requested(view),
            "region": settings.region or None,
            "pop": settings.pop,
            "hints": self.hints is not None and self.hints.configured,
            "demo_login": self.hints_enabled and demo_login_allowed(settings.site),
        }
        return self._raw(200, json.dumps(doc).encode(), "application/json", request, _PER_USER_HEADERS)

    async def demo_login(self, request: ClientRequest) -> bytes:
        if not demo_login_allowed(self.pop.settings.site):
            return self.pop.error(404, "the demo login exists only on test sites (*.test, *.localhost)", request)
        if not self.hints_enabled:
            return self.pop.error(503, "no user tokens: edge.user_secret is empty", request)
        user_id = parse_login(request.body, request.headers.first("content-type"))
        if not is_valid_user_id(user_id):
            raise PeerError("user_id: 1 to 128 of A-Z a-z 0-9 . _ : @ ~ -, starting with a letter or digit")
        cookie = issue_cookie(user_id, self._secret, time.time(), DEMO_TOKEN_TTL)
        return self._raw(200, json.dumps({"user_id": user_id}).encode(), "application/json", request,
                         {"Cache-Control": "no-store", "Set-Cookie": cookie})  # fmt: skip

    async def demo_logout(self, request: ClientRequest) -> bytes:
        cookie = f"{COOKIE_NAME}=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax"
        return self._raw(200, b'{"user_id":null}', "application/json", request,
                         {"Cache-Control": "no-store", "Set-Cookie": cookie})  # fmt: skip

    def _asset(self, asset: Asset, request: ClientRequest) -> bytes:
        headers = asset.headers()
        # A 304 may carry the Content-Length a 200 would have (RFC 9110 section 8.6), never a body.
        not_modified = asset.not_modified_by(request.headers.first("if-none-match"))
        return plain_response(304 if not_modified else 200, headers, asset.body, keep_alive=request.keep_alive,
                              send_body=not not_modified and request.method != "HEAD")  # fmt: skip

    def _no_prefetching(self, request: ClientRequest) -> bool:
        """Save-Data: on, or the user said no to personalised prefetching."""
        view = _view(request.headers)
        return hintlib.save_data_requested(view) or consent_refused(view.get("Cookie"))

    # Per-user hint headers on pages ----------------------------------------------
    async def _with_hints(self, request: ClientRequest) -> bytes:
        data = await self.pop.handle(request)
        view = _view(request.headers)
        user = self._user(request)
        now = time.time()
        if data[9:10] in (b"2", b"3"):
            self.prefetch.record(user, request.target, prefetch=hintlib.is_prefetch_request(view), now=now)
        if user is None or self.hints is None or request.method != "GET" or self._no_prefetching(request):
            return data
        hints = (await self.hints.hints_for(user)).current(now)
        lines = [f"Speculation-Rules: {hintlib.SPECULATION_RULES_HEADER_VALUE}"]
        if hints:
            lines.append(f"Link: {hintlib.link_header(hints)}")
        end = data.find(b"\r\n\r\n")
        return data[:end] + ("\r\n" + "\r\n".join(lines)).encode("latin-1") + data[end:]

    # Helpers ---------------------------------------------------------------------
    def _user(self, request: ClientRequest) -> str | None:
        if not self._secret:
            return None
        try:
            return user_from_headers(_view(request.headers), self._secret, time.time())
        except InvalidToken:
            return None

    def _authorize(self, request: ClientRequest) -> None:
        token = self.pop.settings.purge_token
        offered = (request.headers.first("authorization") or "").partition(" ")
        if not token or offered[0].lower() != "bearer" or not hmac.compare_digest(offered[2].encode(), token.encode()):
            raise _Unauthorized("send Authorization: Bearer <edge.purge_token>")

    def _json(self, doc: Any, request: ClientRequest, *, status: int) -> bytes:
        return self._raw(status, json.dumps(doc).encode(), "application/json", request, {"Cache-Control": "no-store"})

    def _raw(self, status: int, body: bytes, content_type: str, request: ClientRequest,
             extra: Mapping[str, str]) -> bytes:  # fmt: skip
        headers = Headers([("Content-Type", content_type), *extra.items()])
        return plain_response(status, headers, body, keep_alive=request.keep_alive)

    def _register_metrics(self) -> None:
        m, pop = self.metrics, self.pop
        stats = pop.stats
        for name, help_text, read in (
            ("edge_requests_total", "Requests received", lambda: stats.requests),
            ("edge_cache_hits_total", "Requests answered fresh from the cache", lambda: stats.hits),
            ("edge_cache_misses_total", "Requests that needed the upstream", lambda: stats.misses),
            ("edge_stale_served_total", "Stale responses served (while revalidating or on error)",
             lambda: stats.stale_served),
            ("edge_revalidated_total", "Stored responses refreshed by a 304", lambda: stats.revalidated),
            ("edge_coalesced_total", "Requests that waited on another request's upstream fetch",
             lambda: stats.coalesced),
            ("edge_upstream_errors_total", "Requests no upstream answered", lambda: stats.upstream_errors),
            ("edge_shed_total", "Requests refused with 503 past the upstream limit", lambda: stats.shed),
            ("edge_purged_total", "Entries evicted by purges and the change feed", lambda: stats.purged),
            ("edge_l2_hits_total", "Misses answered by the Redis second level", lambda: stats.l2_hits),
            ("edge_l2_errors_total", "Redis second-level operations that failed",
             lambda: 0 if pop.l2 is None else pop.l2.stats.errors),
            ("edge_cache_evictions_total", "Entries evicted to make room", lambda: pop.cache.stats.evictions),
            ("edge_cache_entries", "Entries in the cache", lambda: len(pop.cache)),
            ("edge_cache_bytes", "Bytes held by the cache", lambda: pop.cache.bytes_used),
            ("edge_load", "Requests per second over the last 5 s", lambda: self.load),
            ("edge_prefetched_total", "Prefetch requests from known users", lambda: self.prefetch.prefetched),
            ("edge_prefetch_used_total", "Prefetched responses later used", lambda: self.prefetch.used),
            ("edge_feed_lag_seconds", "Change-feed lag (upper bound; NaN: no feed, or never verified)",
             self._feed_lag_seconds),
            ("edge_feed_lag_entries", "Redis Streams entries not yet delivered to this POP's group (XINFO GROUPS)",
             self._feed_lag_entries),
            ("edge_feed_resets_total", "Cache purges ordered by the change feed",
             lambda: 0 if self.follower is None else self.follower.resets),
            ("edge_shardmap_version", "Version of the shard map in use (NaN: none)",
             lambda: float("nan") if self.shardmap is None or self.shardmap.current is None
             else self.shardmap.current.version),
            ("edge_shardmap_rejected_total", "Shard map documents rejected as invalid",
             lambda: 0 if self.shardmap is None else self.shardmap.rejected),
            ("edge_shardmap_failures_total", "Shard map fetches that failed",
             lambda: 0 if self.shardmap is None else self.shardmap.failures),
        ):  # fmt: skip
            m.gauge(name, help_text, read)
        self.upstream_latency = m.histogram("edge_upstream_seconds", "Upstream response time", ("upstream", "outcome"))
        m.family("edge_responses_total", "Responses from the slow path by status", "counter", ("status",),
                 lambda: {(str(status),): count for status, count in stats.by_status.items()})  # fmt: skip

    def _feed_lag_seconds(self) -> float:
        # Unknown is NaN, not 0: a follower that never reached its feed must not look current.
        lag = None if self.follower is None else self.follower.status().lag_seconds
        return float("nan") if lag is None else lag

    def _feed_lag_entries(self) -> float:
        follower = self.follower
        if not isinstance(follower, StreamFollower) or follower.lag_entries is None:
            return float("nan")
        return float(follower.lag_entries)


class _Unauthorized(PeerError):
    pass


def _view(headers: Headers) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(list(headers)))


def _json_body(request: ClientRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        raise PeerError(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise PeerError("body must be a JSON object")
    return body
