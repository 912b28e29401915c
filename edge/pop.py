"""The POP's request handling: cache lookups, misses, revalidation, writes, purges.

`Pop.fast_hit` is the hot path the HTTP protocol calls synchronously for a
plain GET/HEAD (no cache directives, validators, credentials or cookies): one
dictionary lookup for the cache key of the raw target, one S3-FIFO lookup,
a freshness comparison, and pre-serialized bytes with the Age filled in.

Everything else goes through `Pop.handle`, which follows RFC 9111 with the
pure cores (`edge.freshness`, `edge.validation`, `edge.cachekey`):

* fresh → serve; stale inside stale-while-revalidate → serve and refresh in
  the background; otherwise revalidate with a conditional request;
* misses for one key are coalesced into one upstream request;
* upstream failure → stale-if-error when the response allows it, else 502/504;
* a successful unsafe request invalidates its target and Location /
  Content-Location (section 4.4);
* past `max_upstream_requests` concurrent fetches, new misses get 503 with
  Retry-After instead of queueing.

Item documents remember their event, so a change-feed record for an item
evicts both `/v1/items/{id}` and `/v1/events/{event_id}`. A record of an
event's metadata edit evicts `/v1/events/{id}` and the cached listings.

Upstream fetches go to `router.targets(target)` (edge.shardmap: the shard
map's route for this POP's region) or, without a router, to the configured
upstreams. The route is chosen inside the one fetch a coalesced miss makes,
so requests waiting on it never fan out to other upstreams.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

from edge.cachekey import CacheKey, primary_key, secondary_key, vary_field_names, vary_matches
from edge.coalesce import Coalescer, TooManyWaiters
from edge.entry import CachedEntry, end_of_head, make_entry, plain_response, serialize_head
from edge.errors import EdgeError, MalformedRequestTarget, PeerError, RequestTargetTooLong
from edge.freshness import Action, decide, invalidated_urls, stale_if_error_allowed
from edge.l2 import Blob, RedisL2
from edge.messages import Headers, Request, Response, StoredResponse
from edge.s3fifo import S3FifoCache
from edge.settings import EdgeSettings
from edge.shardmap import Router
from edge.storability import headers_to_store, is_storable
from edge.upstream import UpstreamPool, UpstreamResponse, UpstreamUnavailable, strip_hop_by_hop
from edge.validation import (
    client_not_modified,
    conditional_headers,
    not_modified_applies,
    not_modified_headers,
    refreshed_from_304,
)
from origin.lww import is_event_patch

log = logging.getLogger("boxoffice.edge")

SAFE_METHODS: Final = frozenset({"GET", "HEAD"})
FORWARDED_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Raw target -> cache key memo for the fast path; bounded so random targets
# cannot grow it (they only cost a normalisation each).
MAX_KEY_MEMO: Final = 100_000
MAX_ITEM_EVENTS: Final = 1_000_000
# Pending best-effort tasks (second-level writes and deletes, background
# refreshes); beyond this, new ones are dropped rather than queued.
MAX_BACKGROUND_TASKS: Final = 1_000
# Client headers never sent upstream on a coalesced (shared) fetch: the
# response is for everyone, so nothing personal may shape it.
_PERSONAL_FIELDS: Final = frozenset({"cookie", "authorization"})
_CONDITIONAL_FIELDS: Final = frozenset(
    {"if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range"}
)
# Never sent on a shared fetch either: a 206 for one client's range would be
# handed to every request waiting on that fetch. The full response serves a
# range request too (RFC 9110 section 14.2: a server may ignore Range).
_RANGE_FIELDS: Final = frozenset({"range"})


_ERROR_CODES: Final = {
    400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
    414: "uri_too_long", 431: "request_header_fields_too_large", 500: "internal_error", 502: "bad_gateway",
    501: "not_implemented", 503: "service_unavailable", 504: "gateway_timeout",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ClientRequest:
    method: str
    target: str  # the raw request target
    headers: Headers
    body: bytes
    keep_alive: bool
    client: str  # the peer's address


@dataclass
class PopStats:
    requests: int = 0
    hits: int = 0
    misses: int = 0
    stale_served: int = 0
    revalidated: int = 0
    coalesced: int = 0
    upstream_errors: int = 0
    shed: int = 0
    purged: int = 0
    l2_hits: int = 0
    background_dropped: int = 0
    stored: int = 0
    not_stored: int = 0
    by_status: dict[int, int] = field(default_factory=dict)


class Pop:
    def __init__(
        self,
        settings: EdgeSettings,
        upstream: UpstreamPool,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        l2: RedisL2 | None = None,
        router: Router | None = None,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        # Which upstreams answer a target, in failover order: the shard map's
        # route for this POP's region, or the configured upstreams without one.
        self.router = router
        self.l2 = l2
        self.clock = clock
        self.monotonic = monotonic
        self.cache: S3FifoCache[CacheKey, CachedEntry] = S3FifoCache(
            settings.cache_bytes, max_entry_bytes=settings.max_entry_bytes
        )
        self.stats = PopStats()
        # Each flight's result carries the request headers it was fetched with (for Vary).
        self.coalescer: Coalescer[tuple[UpstreamResponse, Headers, int]] = Coalescer(
            max_waiters=settings.max_coalesced_waiters, timeout=settings.coalesce_timeout
        )
        self._key_memo: dict[str, CacheKey] = {}
        self._event_of_item: dict[str, str] = {}
        self._announced: dict[str, int] = {}  # item id -> newest version the change feed named
        self._in_flight = 0
        # Purges are numbered; a response whose fetch began before its key's
        # latest purge (or before a feed reset, `_purge_floor`) is not stored.
        self._purge_seq = 0
        self._purge_floor = 0
        self._purged_at: dict[CacheKey, int] = {}
        self._l2_floor = 0.0  # second-level entries received before this wall-clock time predate a feed reset
        self._l2_listing_floor = 0.0  # second-level event listings received before this predate a metadata edit
        self._background: set[asyncio.Task[None]] = set()
        self._via = f"1.1 boxoffice-{settings.pop}"

    # The hot path ------------------------------------------------------------
    def fast_hit(self, target: str, *, head_only: bool, keep_alive: bool) -> bytes | None:
        """Pre-serialized response bytes for a plain GET/HEAD of `target`, or None (take the slow path)."""
        self.stats.requests += 1
        key = self._key_memo.get(target)
        if key is None:
            return None
        entry = self.cache.get(key)
        if entry is None or not entry.fast:
            return None
        now = self.clock()
        if now >= entry.fresh_until:
            return None
        self.stats.hits += 1
        return entry.render(now, head_only=head_only, keep_alive=keep_alive)

    # Everything else ---------------------------------------------------------
    async def handle(self, request: ClientRequest) -> bytes:
        """The full response bytes for `request`. Raises nothing but CancelledError."""
        try:
            return await self._handle(request)
        except RequestTargetTooLong as exc:
            return self.error(414, exc.message, request)
        except PeerError as exc:
            return self.error(400, exc.message, request)
        except TooManyWaiters as exc:
            self.stats.shed += 1
            return self.error(503, exc.message, request, retry_after=1)
        except TimeoutError:
            return self.error(504, "the upstream did not answer in time", request)
        except EdgeError as exc:
            log.error("%s %s: %s", request.method, request.target[:200], exc.message)
            return self.error(500, "the POP failed to answer; see its log", request)

    async def _handle(self, request: ClientRequest) -> bytes:
        if request.method not in FORWARDED_METHODS:
            return self.error(405, f"method {request.method[:20]} is not allowed here", request,
                              extra=(("Allow", ", ".join(sorted(FORWARDED_METHODS))),))  # fmt: skip
        if not request.target.startswith("/"):
            # Absolute-form and authority-form targets are for forward proxies;
            # this POP serves one site and is never an open proxy.
            raise MalformedRequestTarget("request targets must be paths (origin-form): this is not a proxy")
        key = self.key_for(request.target)
        if request.method in SAFE_METHODS:
            return await self._read(request, key)
        return await self._write(request, key)

    def key_for(self, target: str) -> CacheKey:
        key = self._key_memo.get(target)
        if key is None:
            # The site's own authority, never the client's Host: a Host header
            # cannot poison another site's key or split one resource in two.
            key = primary_key("GET", "http", self.settings.site, target)
            if len(self._key_memo) >= MAX_KEY_MEMO:
                self._key_memo.clear()
            self._key_memo[target] = key
        return key

    async def _read(self, request: ClientRequest, key: CacheKey) -> bytes:
        head_only = request.method == "HEAD"
        entry = self.cache.get(key)
        if (
            entry is not None
            and entry.vary is not None
            and not vary_matches(entry.vary, entry.request_headers, request.headers)
        ):
            entry = None
        now = self.clock()
        core_request = Request(request.method, request.headers)
        decision = decide(core_request, None if entry is None else entry.stored, now)
        if entry is not None and decision.action in (Action.FRESH, Action.STALE_PERMITTED):
            self.stats.hits += 1
            return self._serve(entry, request, now, b"HIT")
        if entry is not None and decision.action is Action.STALE_WHILE_REVALIDATE:
            self.stats.stale_served += 1
            self._refresh_in_background(key, entry, request)
            return self._serve(entry, request, now, b"STALE")
        if entry is None and self.l2 is not None and decision.action is Action.FORWARD:
            shared = await self._from_l2(key, request, now)
            if shared is not None:
                return shared
        if decision.action is Action.GATEWAY_TIMEOUT:
            return self.error(504, "only-if-cached and nothing usable is stored", request)
        self.stats.misses += 1
        try:
            if entry is not None and decision.action is Action.MUST_REVALIDATE:
                fresh = await self._revalidate(key, entry, request)
                return self._serve(fresh, request, self.clock(), b"REVALIDATED")
            response, since = await self._fetch_shared(key, request)
        except UpstreamUnavailable as exc:
            self.stats.upstream_errors += 1
            if entry is not None and stale_if_error_allowed(core_request, entry.stored, self.clock()):
                self.stats.stale_served += 1
                return self._serve(entry, request, self.clock(), b"STALE")
            if exc.response is not None:
                return self._relay(exc.response, head_only, request.keep_alive, b"MISS")
            return self.error(502, f"no upstream answered: {exc.message}", request)
        stored = self._store(key, request, response, since)
        if stored is not None:
            return self._serve(stored, request, self.clock(), b"MISS")
        return self._relay(response, head_only, request.keep_alive, b"MISS")

    async def _from_l2(self, key: CacheKey, request: ClientRequest, now: float) -> bytes | None:
        """A response from the shared second level when it is fresh for this request; it also fills L1."""
        assert self.l2 is not None
        since = self._purge_seq
        blob = await self.l2.get(key)
        if blob is None or self._purged_since(key, since) or blob.stored.response_time < self._l2_floor:
            return None
        if blob.stored.response_time < self._l2_listing_floor and _is_listing(key):
            return None
        entry = make_entry(key, blob.stored, blob.body, blob.request_headers)
        if entry.vary is not None and not vary_matches(entry.vary, entry.request_headers, request.headers):
            return None
        if not self._remember_item(entry):
            return None
        decision = decide(Request(request.method, request.headers), entry.stored, now)
        if decision.action not in (Action.FRESH, Action.STALE_PERMITTED):
            return None
        self.cache.put(key, entry, entry.size)
        self.stats.hits += 1
        self.stats.l2_hits += 1
        return self._serve(entry, request, now, b"HIT-L2")

    async def _write(self, request: ClientRequest, key: CacheKey) -> bytes:
        try:
            response = await self._fetch(request, request.headers, request.body)
        except UpstreamUnavailable as exc:
            self.stats.upstream_errors += 1
            if exc.response is not None:
                return self._relay(exc.response, False, request.keep_alive, b"PASS")
            return self.error(502, f"no upstream answered: {exc.message}", request)
        for url in invalidated_urls(request.method, response.status, key.url, response.headers):
            self.purge_url(url)
        return self._relay(response, False, request.keep_alive, b"PASS")

    # Upstream ------------------------------------------------------------------
    async def _fetch_shared(self, key: CacheKey, request: ClientRequest) -> tuple[UpstreamResponse, int]:
        """The response and the purge number its fetch began at."""
        if any(name in _PERSONAL_FIELDS for name in request.headers.names()):
            since = self._purge_seq
            return await self._fetch(request, request.headers.without(_CONDITIONAL_FIELDS), None, method="GET"), since
        shared_headers = request.headers.without(_PERSONAL_FIELDS | _CONDITIONAL_FIELDS | _RANGE_FIELDS)

        def fetch() -> Awaitable[tuple[UpstreamResponse, Headers, int]]:
            return self._fetch_sent(request, shared_headers)

        joined = key in self.coalescer
        if joined:
            self.stats.coalesced += 1
        response, sent, since = await self.coalescer.run(key, fetch)
        vary = response.headers.combined("vary")
        if joined and vary is not None and not vary_matches(vary, sent, request.headers):
            # The leader's request selected another variant (RFC 9111 section 4.1):
            # fetch this one, coalesced with requests for the same variant only.
            variant = secondary_key(vary, request.headers)
            if variant is None:  # Vary: * is never shared
                response, _, since = await fetch()
                return response, since
            response, _, since = await self.coalescer.run(("variant", key, variant), fetch)
        return response, since

    async def _fetch_sent(self, request: ClientRequest, headers: Headers) -> tuple[UpstreamResponse, Headers, int]:
        since = self._purge_seq
        return await self._fetch(request, headers, None, method="GET"), headers, since

    async def _revalidate(self, key: CacheKey, entry: CachedEntry, request: ClientRequest) -> CachedEntry:
        headers = request.headers.without(_PERSONAL_FIELDS | _CONDITIONAL_FIELDS | _RANGE_FIELDS)
        for name, value in conditional_headers(entry.stored.headers):
            headers = headers.with_line(name, value)
        response, _, since = await self.coalescer.run(("revalidate", key), lambda: self._fetch_sent(request, headers))
        if response.status == 304 and not_modified_applies(entry.stored.headers, response.headers):
            self.stats.revalidated += 1
            stored = refreshed_from_304(
                entry.stored, response.headers, request_time=response.request_time, response_time=response.response_time
            )
            fresh = make_entry(key, stored, entry.body, entry.request_headers)
            fresh.item_id, fresh.event_id = entry.item_id, entry.event_id
            if not self._purged_since(key, since):
                self.cache.put(key, fresh, fresh.size)
            return fresh
        stored_entry = self._store(key, request, response, since)
        if stored_entry is None:
            # A new response that may not be stored still answers this request.
            stored = StoredResponse(response.status, response.headers, response.request_time, response.response_time)
            return make_entry(key, stored, response.body, request.headers)
        return stored_entry

    async def _fetch(
        self, request: ClientRequest, headers: Headers, body: bytes | None, *, method: str | None = None
    ) -> UpstreamResponse:
        if self._in_flight >= self.settings.max_upstream_requests:
            # Counted in `stats.shed` where it is answered (`handle`).
            raise TooManyWaiters(f"{self._in_flight} upstream requests in flight: try again shortly")
        # The client's Connection options are applied here, before our own
        # fields are added: "Connection: Via" must not remove the POP's Via.
        forwarded = strip_hop_by_hop(headers).without({"via", "x-forwarded-for"}).with_line("Via", self._via)
        forwarded = forwarded.with_line("X-Forwarded-For", request.client)
        self._in_flight += 1
        try:
            targets = self.settings.upstreams if self.router is None else self.router.targets(request.target)
            return await self.upstream.fetch(
                targets,
                method or request.method,
                request.target,
                forwarded,
                body,
                deadline=self.monotonic() + self.settings.request_timeout,
            )
        finally:
            self._in_flight -= 1

    def _refresh_in_background(self, key: CacheKey, entry: CachedEntry, request: ClientRequest) -> None:
        async def refresh() -> None:
            try:
                await self._revalidate(key, entry, request)
            except (EdgeError, TimeoutError) as exc:
                log.info("background refresh of %s failed: %s", key.url, exc)

        if ("revalidate", key) not in self.coalescer:
            self._spawn(refresh(), droppable=False)

    async def warm(self, key: CacheKey, request: ClientRequest) -> bool:
        """Fetch `request` into the cache if that evicts nothing hotter; True when admitted."""
        response, since = await self._fetch_shared(key, request)
        entry = self._storable_entry(key, request, response, since)
        return entry is not None and self.cache.admit_if_room(key, entry, entry.size)

    # Storing and serving -------------------------------------------------------
    def _storable_entry(
        self, key: CacheKey, request: ClientRequest, response: UpstreamResponse, since: int
    ) -> CachedEntry | None:
        """The cache entry for `response`, or None when it may not be stored (counted as not stored)."""
        core_request = Request("GET", request.headers)
        if self._purged_since(key, since) or not is_storable(core_request, Response(response.status, response.headers)):
            self.stats.not_stored += 1
            return None
        personal = _PERSONAL_FIELDS & request.headers.names()
        if personal and not personal.isdisjoint(vary_field_names(response.headers) or ()):
            # The personal fields are not kept with the entry, so it would match
            # every request without them: another client would get this one's variant.
            self.stats.not_stored += 1
            return None
        headers = headers_to_store(response.headers, received_at=response.response_time)
        stored = StoredResponse(response.status, headers, response.request_time, response.response_time)
        entry = make_entry(key, stored, response.body, request.headers.without(_PERSONAL_FIELDS))
        if not self._remember_item(entry):
            # The change feed already announced a newer version: this response
            # left the upstream before that change and must not be cached.
            self.stats.not_stored += 1
            return None
        return entry

    def _store(
        self, key: CacheKey, request: ClientRequest, response: UpstreamResponse, since: int
    ) -> CachedEntry | None:
        entry = self._storable_entry(key, request, response, since)
        if entry is None:
            return None
        if self.cache.put(key, entry, entry.size):
            self.stats.stored += 1
        else:
            self.stats.not_stored += 1
        if self.l2 is not None:
            blob = Blob(entry.stored, entry.body, entry.request_headers)
            self._spawn(self.l2.put(key, blob, usable_until=entry.swr_until, now=self.clock()))
        return entry

    def _purged_since(self, key: CacheKey, since: int) -> bool:
        """Whether `key` was purged (or the feed reset) after purge number `since`."""
        return self._purged_at.get(key, self._purge_floor) > since

    def _spawn(self, job: Coroutine[Any, Any, None], *, droppable: bool = True) -> None:
        """Run work owned by the POP (second-level writes); droppable jobs are dropped when too much is pending."""
        if droppable and len(self._background) >= MAX_BACKGROUND_TASKS:
            job.close()
            self.stats.background_dropped += 1
            return
        task = asyncio.ensure_future(job)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _remember_item(self, entry: CachedEntry) -> bool:
        """Note which event an item document belongs to; False when it is older than the feed says."""
        path = _site_path(entry.key.url)
        if not path.startswith("v1/items/") or entry.stored.status != 200:
            return True
        try:
            doc = json.loads(entry.body)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
            return True
        if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
            return True
        item_id = doc["id"]
        version = doc.get("version")
        if isinstance(version, int) and version < self._announced.get(item_id, 0):
            return False
        if isinstance(doc.get("event_id"), str):
            entry.item_id, entry.event_id = item_id, doc["event_id"]
            if len(self._event_of_item) >= MAX_ITEM_EVENTS:
                self._event_of_item.clear()
            self._event_of_item[item_id] = doc["event_id"]
        return True

    def _serve(self, entry: CachedEntry, request: ClientRequest, now: float, x_cache: bytes) -> bytes:
        head_only = request.method == "HEAD"
        if client_not_modified(request.headers, entry.stored.headers, method=request.method,
                               stored_status=entry.stored.status, received_at=entry.stored.response_time):  # fmt: skip
            head = serialize_head(304, not_modified_headers(entry.stored.headers))
            return head + b"Age: %d\r\nX-Cache: %s\r\n" % (entry.age(now), x_cache) + end_of_head(request.keep_alive)
        return entry.render(now, head_only=head_only, keep_alive=request.keep_alive, x_cache=x_cache)

    def _relay(self, response: UpstreamResponse, head_only: bool, keep_alive: bool, x_cache: bytes) -> bytes:
        self.stats.by_status[response.status] = self.stats.by_status.get(response.status, 0) + 1
        head = serialize_head(response.status, response.headers)
        body = b"" if head_only or response.status in (204, 304) or response.status < 200 else response.body
        length = b"" if response.status in (204, 304) else b"Content-Length: %d\r\n" % len(response.body)
        return head + length + b"X-Cache: %s\r\n" % x_cache + end_of_head(keep_alive) + body

    def error(
        self,
        status: int,
        message: str,
        request: ClientRequest | None,
        *,
        retry_after: int | None = None,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> bytes:
        """A JSON error response, like the origin's."""
        self.stats.by_status[status] = self.stats.by_status.get(status, 0) + 1
        code = _ERROR_CODES.get(status, "error")
        body = json.dumps({"error": {"status": status, "code": code, "message": message}}).encode()
        fields = [("Content-Type", "application/json"), ("Cache-Control", "no-store"), *extra]
        if retry_after is not None:
            fields.append(("Retry-After", str(retry_after)))
        keep_alive = request is not None and request.keep_alive and status < 500
        send_body = request is None or request.method != "HEAD"  # RFC 9110 section 9.3.2
        return plain_response(status, Headers(fields), body, keep_alive=keep_alive, send_body=send_body)

    # Invalidation --------------------------------------------------------------
    def purge_url(self, url: str) -> bool:
        """Evict the cached response of an absolute URL on this site; True when one was cached."""
        prefix = f"http://{self.settings.site}"
        target = url[len(prefix) :] if url.startswith(prefix) else url
        if not target.startswith("/"):
            return False
        try:
            key = self.key_for(target)
        except PeerError:
            return False
        removed = self.cache.delete(key)
        self.stats.purged += removed
        self._purge_seq += 1
        if len(self._purged_at) >= MAX_ITEM_EVENTS:
            self._purged_at.clear()
            self._purge_floor = self._purge_seq
        self._purged_at[key] = self._purge_seq
        if self.l2 is not None:
            # Never dropped: a lost delete would let the purged response come back from Redis.
            self._spawn(self.l2.delete(key), droppable=False)
        return removed

    def on_item_changed(self, item_id: str, version: int, patch: dict[str, object]) -> None:
        """Change-feed callback: evict the item and its event page.

        An event record (an edit of an event's metadata, origin.changefeed
        ``op`` = ``event``; its patch carries ``metadata_stamps``) evicts the
        event's page and every cached event listing instead: its id is an
        event's, not an item's.
        """
        if is_event_patch(patch):
            self.on_event_changed(item_id)
            return
        if len(self._announced) >= MAX_ITEM_EVENTS:
            self._announced.clear()
        self._announced[item_id] = max(version, self._announced.get(item_id, 0))
        self.purge_url(f"/v1/items/{item_id}")
        event_id = self._event_of_item.get(item_id) or (
            patch.get("event_id") if isinstance(patch.get("event_id"), str) else None
        )
        if isinstance(event_id, str):
            self.purge_url(f"/v1/events/{event_id}")

    def on_event_changed(self, event_id: str) -> None:
        """Evict an event's page and the cached event listings (`/v1/events?…`), which show its metadata.

        Listings are found by walking the cache keys: metadata edits are rare,
        and a listing's query (region, after, limit) does not say which events it holds.
        """
        self.purge_url(f"/v1/events/{event_id}")
        for key in self.cache.snapshot_keys():
            if _is_listing(key):
                self.purge_url(key.url)
        # Listings held only in the shared second level (another worker fetched them) are not in our keys.
        self._l2_listing_floor = self.clock()
        # A listing fetched before the edit may still be in flight, under a key
        # not cached (so not purged above): nothing fetched before now is stored.
        self._purge_seq += 1
        self._purge_floor = self._purge_seq
        self._purged_at.clear()

    def on_feed_reset(self, reason: str) -> None:
        """Change-feed callback: changes may have been missed, so drop every item and event page."""
        log.warning("change feed reset (%s): evicting every item and event page", reason)
        for item_id in list(self._event_of_item):
            self.on_item_changed(item_id, 0, {})
        # Also the item and event pages never linked to an item id (no event_id,
        # not a 200, or forgotten when the table was cleared).
        for key in self.cache.snapshot_keys():
            path = _site_path(key.url)
            # Listings too: a missed event record may have edited the metadata they show.
            if path.startswith(("v1/items/", "v1/events/", "v1/events?")) or path == "v1/events":
                self.stats.purged += self.cache.delete(key)
        # Nothing fetched before now may be stored or taken from the second level.
        self._purge_seq += 1
        self._purge_floor = self._purge_seq
        self._purged_at.clear()
        self._l2_floor = self.clock()

    async def drain(self) -> None:
        await self.coalescer.drain()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _is_listing(key: CacheKey) -> bool:
    """True for an event listing (`/v1/events` with or without a query), which shows many events' metadata."""
    path = _site_path(key.url)
    return path == "v1/events" or path.startswith("v1/events?")


def _site_path(url: str) -> str:
    """The path and query of a cache key's absolute URL, without the leading slash ("" when it has none)."""
    return url.split("/", 3)[-1] if url.count("/") >= 3 else ""
