"""The origin's HTTP adapter: aiohttp routes over the store and the ledger.

Handlers parse and bound their input, call the store or ledger, and render
JSON. With the shard role (origin.shard) the same routes serve the shard's
copy: reads answer 503 + Retry-After until it is bootstrapped and within its
lag bound. Holds on items the shard holds a lease or allotment of are taken
locally (a retry with the same Idempotency-Key replays the first answer) and
become orders through fenced sale reports (origin.shardsales); every other
hold and order is forwarded to the upstream. The primary serves
the lease API (origin.leasing) and sweeps lapsed allotments back.

On shutdown every open ``/v1/changes`` long-poll is woken and answers what
it has (``_end_long_polls``), so a stop does not wait out their ``wait``.
Request readers and response writers are in origin.httpio.

Every error leaves as ``{"error": {"status", "code", "message"}}`` with the
right status, including aiohttp's own (404 for unknown routes, 405, 413).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from aiohttp import web

from ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ops.metrics import Registry
from origin.changefeed import Position, check_since
from origin.errors import BadRequest, NotFound, OriginError, PositionGone
from origin.hlc import Stamp
from origin.httpio import (  # moved out of this module; names kept
    NO_STORE,
    _cacheable,
    _error,
    _item_cache_control,
    _json,
    _json_body,
    _path_id,
    _query_float,
    _query_int,
    _query_text,
    _snapshot_filter,
)
from origin.leasing import SWEEP_BATCH as LEASE_SWEEP_BATCH
from origin.leasing import Leasing, add_lease_routes
from origin.ledger import Ledger, check_idempotency_key, parse_hold_request, parse_order_request
from origin.lww import STAMPS_KEY
from origin.metadata import ShardMapService, Unauthorized, add_shardmap_routes
from origin.metadata_edits import bearer_matches, edit_event
from origin.model import Event
from origin.settings import OriginSettings
from origin.shard import Shard, ShardNotReady, forward_write
from origin.shardsales import ShardSales, add_sales_routes
from origin.store.base import MAX_CHANGE_BATCH, MAX_PAGE_ROWS, Store
from origin.validators import item_etag

log = logging.getLogger("boxoffice.origin")

DEFAULT_CHANGE_BATCH: Final = 500
DEFAULT_PAGE_ROWS: Final = 100
# A long-poll re-reads the head this often, to see commits of other processes.
FEED_POLL_INTERVAL: Final = 0.5
# Holds released per sweep; the rest wait for the next tick instead of
# monopolising the writer after a long pause.
SWEEP_BATCH: Final = 500


@dataclass
class OriginMetrics:
    registry: Registry = field(default_factory=Registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = r.counter(
            "origin_http_requests_total", "HTTP requests by route and status", ("route", "status")
        )
        self.latency = r.histogram("origin_http_request_seconds", "HTTP request latency by route", ("route",))
        self.holds = r.counter("origin_holds_total", "Hold attempts by outcome", ("outcome",))
        self.orders = r.counter("origin_orders_total", "Order attempts by outcome", ("outcome",))
        self.expired = r.counter("origin_holds_expired_total", "Holds released by the expiry sweeper")
        self.pruned = r.counter("origin_changes_pruned_total", "Change records dropped by retention")
        self.feed_head = r.gauge("origin_feed_head", "Sequence number of the newest change record")


@dataclass
class Origin:
    settings: OriginSettings
    store: Store
    ledger: Ledger
    physical_time: Callable[[], float]
    metrics: OriginMetrics = field(default_factory=OriginMetrics)
    started_at: float = field(default_factory=time.monotonic)
    shard: Shard | None = None  # set with the shard role
    shard_map: ShardMapService | None = None  # set with the primary role: GET/PUT /v1/shardmap
    leasing: Leasing | None = None  # set with the primary role: /v1/leases
    sales: ShardSales | None = None  # set with the shard role: local holds within leases
    # Set when the server starts shutting down: open long-polls answer at once
    # instead of holding the shutdown for their whole `wait`.
    closing: asyncio.Event = field(default_factory=asyncio.Event)


ORIGIN: Final = web.AppKey("origin", Origin)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(origin: Origin, *, background: bool = True) -> web.Application:
    """The aiohttp application; with `background`, it also owns the sweeper and pruner tasks."""
    app = web.Application(client_max_size=origin.settings.max_body, middlewares=[_errors_and_metrics])
    app[ORIGIN] = origin
    app.on_shutdown.append(_end_long_polls)
    app.router.add_get("/v1/items/{item_id}", get_item)
    app.router.add_get("/v1/events", list_events)
    app.router.add_get("/v1/events/{event_id}", get_event)
    if origin.shard is None:
        # Metadata is edited on the primary only; its change record reaches every shard.
        app.router.add_patch("/v1/events/{event_id}", patch_event)
    app.router.add_post("/v1/holds", post_hold)
    app.router.add_get("/v1/holds/{hold_id}", get_hold)
    app.router.add_post("/v1/orders", post_order)
    app.router.add_get("/v1/orders/{order_id}", get_order)
    app.router.add_get("/v1/changes", get_changes)
    app.router.add_get("/v1/snapshot", get_snapshot)
    app.router.add_get("/v1/health", get_health)
    app.router.add_get("/metrics", get_metrics)
    if origin.shard_map is not None:
        add_shardmap_routes(app, origin.shard_map)
    if origin.leasing is not None:
        add_lease_routes(app, origin.leasing)
    if origin.sales is not None:
        add_sales_routes(app, origin.sales)
    if background:
        app.cleanup_ctx.append(_background_tasks)
        if origin.shard is not None:
            app.cleanup_ctx.append(_shard_follower)
        if origin.sales is not None:
            app.cleanup_ctx.append(_lease_loop)
    return app


# Reads ---------------------------------------------------------------------


async def get_item(request: web.Request) -> web.StreamResponse:
    origin = request.app[ORIGIN]
    _check_ready(origin)
    item_id = _path_id(request, "item_id")
    item = await origin.store.item(item_id)
    if item is None:
        _check_placed(origin, None)
        raise NotFound(f"no item {item_id}")
    return _cacheable(
        request,
        item.to_document(),
        etag=item_etag(item.id, item.version),
        modified=item.updated_at,
        cache_control=_item_cache_control(origin.settings),
    )


async def get_event(request: web.Request) -> web.StreamResponse:
    origin = request.app[ORIGIN]
    _check_ready(origin)
    event_id = _path_id(request, "event_id")
    _check_placed(origin, event_id)
    event = await origin.store.event(event_id)
    if event is None:
        raise NotFound(f"no event {event_id}")
    venue = await origin.store.venue(event.venue_id)
    items = await origin.store.event_items(event_id)
    doc = {
        "event": event.to_document(),
        "venue": None if venue is None else venue.to_document(),
        "items": [item.to_document() for item in items],
    }
    modified = max((item.updated_at for item in items), default=event.onsale_at)
    edited = _last_edited(event)
    if edited is not None and edited > modified:
        # A metadata edit changes the page: a cache revalidating with If-Modified-Since must not get a 304.
        modified = edited
    return _cacheable(request, doc, etag=None, modified=modified, cache_control=_item_cache_control(origin.settings))


async def list_events(request: web.Request) -> web.StreamResponse:
    origin = request.app[ORIGIN]
    _check_ready(origin)
    region = _query_text(request, "region")
    after = _query_text(request, "after")
    limit = _query_int(request, "limit", DEFAULT_PAGE_ROWS, 1, MAX_PAGE_ROWS)
    events = await origin.store.events(region, after, limit)
    doc = {
        "events": [event.to_document() for event in events],
        "next_after": events[-1].id if len(events) == limit else None,
    }
    cache_control = f"public, max-age={int(origin.settings.event_max_age)}"
    return _cacheable(request, doc, etag=None, modified=None, cache_control=cache_control)


async def get_hold(request: web.Request) -> web.StreamResponse:
    origin = request.app[ORIGIN]
    shard = origin.shard
    if shard is not None:
        local = None if origin.sales is None else origin.sales.hold_document(_path_id(request, "hold_id"))
        if local is not None:
            return _json(local, headers={"Cache-Control": NO_STORE})
        return await forward_write(shard, request, b"")
    hold = await request.app[ORIGIN].store.hold(_path_id(request, "hold_id"))
    if hold is None:
        raise NotFound(f"no hold {request.match_info['hold_id']}")
    return _json(hold.to_document(), headers={"Cache-Control": NO_STORE})


async def get_order(request: web.Request) -> web.StreamResponse:
    shard = request.app[ORIGIN].shard
    if shard is not None:
        return await forward_write(shard, request, b"")
    order = await request.app[ORIGIN].store.order(_path_id(request, "order_id"))
    if order is None:
        raise NotFound(f"no order {request.match_info['order_id']}")
    return _json(order.to_document(), headers={"Cache-Control": NO_STORE})


# Writes --------------------------------------------------------------------


async def post_hold(request: web.Request) -> web.StreamResponse:
    origin = request.app[ORIGIN]
    if origin.shard is not None:
        return await _shard_hold(origin, origin.shard, request)
    hold_request = parse_hold_request(await _json_body(request), origin.ledger.limits)
    key = check_idempotency_key(request.headers.get("Idempotency-Key"))
    try:
        result = await origin.ledger.place_hold(hold_request, key)
    except OriginError as exc:
        origin.metrics.holds.inc(exc.code)
        raise
    origin.metrics.holds.inc("replayed" if result.replayed else "created")
    headers = {"Cache-Control": NO_STORE, "Location": f"/v1/holds/{result.body['hold']['id']}"}
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return _json(result.body, status=result.status, headers=headers)


async def post_order(request: web.Request) -> web.StreamResponse:
    origin = request.app[ORIGIN]
    if origin.shard is not None:
        return await _shard_order(origin, origin.shard, request)
    hold_id = parse_order_request(await _json_body(request))
    key = check_idempotency_key(request.headers.get("Idempotency-Key"))
    try:
        result = await origin.ledger.place_order(hold_id, key)
    except OriginError as exc:
        origin.metrics.orders.inc(exc.code)
        raise
    origin.metrics.orders.inc("replayed" if result.replayed else "created")
    headers = {"Cache-Control": NO_STORE, "Location": f"/v1/orders/{result.body['order']['id']}"}
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return _json(result.body, status=result.status, headers=headers)


async def patch_event(request: web.Request) -> web.StreamResponse:
    """`PATCH /v1/events/{id}` (bearer token): a JSON merge patch of the event's metadata (origin.metadata_edits)."""
    origin = request.app[ORIGIN]
    if not bearer_matches(request.headers.get("Authorization"), origin.settings.admin_token):
        response = _error(401, Unauthorized.code, "send Authorization: Bearer <the admin token>")
        response.headers["WWW-Authenticate"] = 'Bearer realm="boxoffice"'
        return response
    event_id = _path_id(request, "event_id")
    now = datetime.fromtimestamp(origin.physical_time(), UTC)
    edit = await edit_event(origin.store, origin.ledger, event_id, await _json_body(request), now)
    doc = {"event": edit.event.to_document(), "hlc": edit.hlc, "changed": sorted(set(edit.patch) - {STAMPS_KEY})}
    return _json(doc, headers={"Cache-Control": NO_STORE})


def _last_edited(event: Event) -> datetime | None:
    """When the event's metadata was last edited, by its newest stamp's wall clock (None: never)."""
    newest = max(event.metadata_stamps.values(), default=None)
    if newest is None:
        return None
    try:
        wall_ms = Stamp.decode(newest).wall_ms
        return datetime.fromtimestamp(wall_ms / 1000, UTC)
    except (ValueError, OverflowError, OSError):
        return None


async def _shard_hold(origin: Origin, shard: Shard, request: web.Request) -> web.StreamResponse:
    """A hold on a shard: local within a lease or allotment, else forwarded to the owner.

    An Idempotency-Key is checked here whenever this shard sells (even before
    its first grant), so a key first forwarded keeps going to the owner and a
    retried local hold replays its first answer (origin.shardsales).
    """
    raw = await request.read()
    sales = origin.sales
    key = check_idempotency_key(request.headers.get("Idempotency-Key"))
    if sales is not None and (sales.escrows or key is not None):
        hold_request = parse_hold_request(await _json_body(request), origin.ledger.limits)
        try:
            answer = sales.hold_with_key(hold_request, key)
        except OriginError as exc:
            origin.metrics.holds.inc(exc.code)
            raise
        if answer is not None:
            body, replayed = answer
            origin.metrics.holds.inc("replayed" if replayed else "local")
            headers = {"Cache-Control": NO_STORE, "Location": f"/v1/holds/{body['hold']['id']}"}
            if replayed:
                headers["Idempotent-Replayed"] = "true"
            return _json(body, status=201, headers=headers)
    return await forward_write(shard, request, raw)


async def _shard_order(origin: Origin, shard: Shard, request: web.Request) -> web.StreamResponse:
    """An order on a shard: a fenced sale report for a local hold, else forwarded to the owner."""
    raw = await request.read()
    if origin.sales is not None:
        hold_id = parse_order_request(await _json_body(request))
        try:
            answer = await origin.sales.place_order(hold_id)
        except OriginError as exc:
            origin.metrics.orders.inc(exc.code)
            raise
        if answer is not None:
            body, replayed = answer
            origin.metrics.orders.inc("replayed" if replayed else "reported")
            headers = {"Cache-Control": NO_STORE, "Location": f"/v1/orders/{body['order']['id']}"}
            if replayed:
                headers["Idempotent-Replayed"] = "true"
            return _json(body, status=201, headers=headers)
    return await forward_write(shard, request, raw)


# Change feed ---------------------------------------------------------------


async def get_changes(request: web.Request) -> web.StreamResponse:
    """`GET /v1/changes?since=EPOCH:SEQ&limit=N&wait=S`: records after `since`, long-polling up to `wait`."""
    origin = request.app[ORIGIN]
    raw_since = request.query.get("since")
    if raw_since is None:
        raise BadRequest("since is required: start from the position of GET /v1/snapshot")
    since = Position.parse(raw_since)
    limit = _query_int(request, "limit", DEFAULT_CHANGE_BATCH, 1, MAX_CHANGE_BATCH)
    wait = _query_float(request, "wait", 0.0, 0.0, origin.settings.feed_max_wait)
    deadline = time.monotonic() + wait
    while True:
        bounds = await origin.store.feed_bounds()
        check_since(since, epoch=bounds.epoch, retained_after=bounds.retained_after, head=bounds.head)
        records = await origin.store.changes(since.seq, limit) if bounds.head > since.seq else []
        # A commit between the two reads may add records past the head we answer with;
        # leave them for the next poll so `next` never passes `head`.
        records = [record for record in records if record.pos.seq <= bounds.head]
        if bounds.head > since.seq and (not records or records[0].pos.seq != since.seq + 1):
            # Retention pruned past `since` after the bounds were read: the
            # records in between are gone, and skipping them would be a silent gap.
            raise PositionGone(f"position {since.seq} was pruned while reading: re-snapshot")
        remaining = deadline - time.monotonic()
        if records or remaining <= 0 or origin.closing.is_set():
            break
        await _head_watch_wait(origin.store, min(remaining, FEED_POLL_INTERVAL))
    next_position = records[-1].pos if records else since
    doc = {
        "changes": [record.to_document() for record in records],
        "next": next_position.encode(),
        "head": bounds.head_position.encode(),
    }
    response = _json(doc, headers={"Cache-Control": NO_STORE})
    response.enable_compression()
    return response


async def get_snapshot(request: web.Request) -> web.StreamResponse:
    """`GET /v1/snapshot?filter=region:R|event:E1,E2&after=ID&limit=N`: a page of rows and their position.

    Follow the feed from the position of the *first* page: later pages may hold
    newer rows, which replaying the feed leaves alone (a row only moves to a
    higher version).
    """
    origin = request.app[ORIGIN]
    region, event_ids = _snapshot_filter(request.query.get("filter"))
    after = _query_text(request, "after")
    limit = _query_int(request, "limit", MAX_PAGE_ROWS, 1, MAX_PAGE_ROWS)
    page = await origin.store.snapshot(region=region, event_ids=event_ids, after=after, limit=limit)
    doc: dict[str, Any] = {
        "position": page.position.encode(),
        "items": [item.to_document() for item in page.items],
        "next_after": page.next_after,
    }
    if after is None:
        # The first page also carries the event and venue documents of the
        # filter, so a follower can serve GET /v1/events without another call.
        events = await _filter_events(origin.store, region, event_ids)
        venue_ids = sorted({event.venue_id for event in events})
        venues = [venue for venue in [await origin.store.venue(venue_id) for venue_id in venue_ids] if venue]
        doc["events"] = [event.to_document() for event in events]
        doc["venues"] = [venue.to_document() for venue in venues]
    response = _json(doc, headers={"Cache-Control": NO_STORE})
    response.enable_compression()
    return response


# Operations ----------------------------------------------------------------


async def get_health(request: web.Request) -> web.StreamResponse:
    origin = request.app[ORIGIN]
    bounds = await origin.store.feed_bounds()
    doc: dict[str, Any] = {
        "status": "ok",
        "role": "primary",
        "node_id": origin.settings.node_id,
        "epoch": bounds.epoch,
        "head": bounds.head_position.encode(),
        "uptime_seconds": round(time.monotonic() - origin.started_at, 3),
    }
    if origin.shard is not None:
        # 503 while reads are refused, so readiness probes and POPs route around it.
        doc.update(origin.shard.health())
        if origin.sales is not None:
            doc["sales"] = origin.sales.health()
        doc["status"] = "ok" if doc["serving"] else "degraded"
        return _json(doc, status=200 if doc["serving"] else 503, headers={"Cache-Control": NO_STORE})
    return _json(doc, headers={"Cache-Control": NO_STORE})


async def get_metrics(request: web.Request) -> web.StreamResponse:
    origin = request.app[ORIGIN]
    with contextlib.suppress(OriginError):
        origin.metrics.feed_head.set((await origin.store.feed_bounds()).head)
    return web.Response(text=origin.metrics.registry.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})


# Middleware and helpers ----------------------------------------------------


@web.middleware
async def _errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    origin = request.app[ORIGIN]
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    started = time.perf_counter()
    try:
        response = await handler(request)
    except OriginError as exc:
        if exc.status >= 500:
            log.error("%s %s failed: %s", request.method, request.path, exc.message)
        response = _error(exc.status, exc.code, exc.message)
        if isinstance(exc, ShardNotReady):
            response.headers["Retry-After"] = str(exc.retry_after)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        response = _error(exc.status, code, message)
        if isinstance(exc, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
    except Exception:
        log.exception("%s %s crashed", request.method, request.path)
        response = _error(500, "internal_error", "the origin failed to answer; see its log")
    origin.metrics.requests.inc(route, str(response.status))
    origin.metrics.latency.observe(time.perf_counter() - started, route)
    return response


def _check_ready(origin: Origin) -> None:
    """On a shard, refuse reads (503) until bootstrapped and within max_lag, so POPs fail over."""
    if origin.shard is not None:
        error = origin.shard.ready_error()
        if error is not None:
            raise error


def _check_placed(origin: Origin, event_id: str | None) -> None:
    """On a shard, 503 for an event placed here but not copied yet (None: a miss whose event is unknown)."""
    if origin.shard is not None:
        error = origin.shard.placement_error(event_id)
        if error is not None:
            raise error


async def _end_long_polls(app: web.Application) -> None:
    """on_shutdown: answer every open `/v1/changes` long-poll now, so shutdown does not wait out `wait`."""
    origin = app[ORIGIN]
    origin.closing.set()
    watch = getattr(origin.store, "head_watch", None)
    if watch is not None:
        watch.notify()  # wakes the waiting polls; each sees `closing` and answers what it has


async def _filter_events(store: Store, region: str | None, event_ids: list[str] | None) -> list[Event]:
    if event_ids is not None:
        found = [await store.event(event_id) for event_id in sorted(set(event_ids))]
        return [event for event in found if event is not None]
    events: list[Event] = []
    after: str | None = None
    while True:
        page = await store.events(region, after, MAX_PAGE_ROWS)
        events.extend(page)
        if len(page) < MAX_PAGE_ROWS:
            return events
        after = page[-1].id


async def _shard_follower(app: web.Application) -> AsyncIterator[None]:
    """Run the shard's follower for the life of the app (cleanup_ctx owns the task)."""
    shard = app[ORIGIN].shard
    assert shard is not None
    task = asyncio.create_task(shard.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _lease_loop(app: web.Application) -> AsyncIterator[None]:
    """Run the shard's lease loop (restart, renew, refill, return) for the life of the app."""
    sales = app[ORIGIN].sales
    assert sales is not None
    task = asyncio.create_task(sales.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _head_watch_wait(store: Store, seconds: float) -> None:
    watch = getattr(store, "head_watch", None)
    if watch is None:
        await asyncio.sleep(seconds)
    else:
        await watch.wait(seconds)


async def _background_tasks(app: web.Application) -> AsyncIterator[None]:
    """Run the hold sweeper and the feed pruner for the life of the app (cleanup_ctx owns them)."""
    origin = app[ORIGIN]
    tasks = [
        asyncio.create_task(_every(origin.settings.hold_sweep_interval, lambda: _sweep(origin), "hold sweeper")),
        asyncio.create_task(_every(origin.settings.prune_interval, lambda: _prune(origin), "feed pruner")),
    ]
    if origin.leasing is not None:
        leasing = origin.leasing
        tasks.append(
            asyncio.create_task(
                _every(origin.settings.lease_sweep_interval, lambda: _sweep_leases(leasing), "lease sweeper")
            )
        )
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _every(interval: float, job: Callable[[], Awaitable[None]], name: str) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except OriginError as exc:
            log.warning("%s: %s", name, exc.message)
        except Exception:
            log.exception("%s failed; retrying in %.1f s", name, interval)


async def _sweep(origin: Origin) -> None:
    released = await origin.ledger.expire_due_holds(SWEEP_BATCH)
    if released:
        origin.metrics.expired.inc(amount=released)
        log.info("released %d expired hold(s)", released)


async def _sweep_leases(leasing: Leasing) -> None:
    ended = await leasing.expire_lapsed(LEASE_SWEEP_BATCH)
    if ended:
        log.info("took back %d lapsed allotment(s)", ended)


async def _prune(origin: Origin) -> None:
    now = datetime.fromtimestamp(origin.physical_time(), UTC)
    dropped = await origin.store.prune(
        keep_changes=origin.settings.feed_retention_changes,
        changes_before=now - timedelta(seconds=origin.settings.feed_retention),
        idempotency_before=now - timedelta(seconds=origin.settings.idempotency_retention),
    )
    if dropped:
        origin.metrics.pruned.inc(amount=dropped)
        log.info("pruned %d change record(s) past retention", dropped)
