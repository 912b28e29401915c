"""Run the origin: open the store, optionally seed it, serve HTTP, shut down cleanly.

With ``role = "shard"`` the same process serves a regional shard: its own store
(own epoch, own change feed) filled and kept current by origin.shard from the
``upstream`` URL, and local holds within the leases origin.shardsales asks for.
The primary serves the lease API (origin.leasing).

A clean stop (SIGINT, SIGTERM) drains in-flight requests, then a shard gives
its grants back (``ShardSales.return_all``) within what is left of
``shutdown_timeout``, so the origin can sell that stock at once; a crash
leaves it frozen until the lease expires plus the clock-skew margin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from ops.runtime import until_signalled
from origin.catalog import build_catalog, summarize
from origin.hlc import HybridClock
from origin.http import Origin, OriginMetrics, create_app
from origin.lease import LeasePolicy
from origin.leasing import Leasing
from origin.ledger import Ledger
from origin.metadata import ShardMapService
from origin.settings import OriginSettings
from origin.shard import Shard, ShardMetrics, upstream_session
from origin.shardsales import ShardSales
from origin.store.base import Store
from origin.store.factory import store_from_url

log = logging.getLogger("boxoffice.origin")

# A shard whose request drain used up shutdown_timeout still gets this long
# to return its grants: about one round trip to the origin with its retry.
MIN_SHUTDOWN_RETURN: Final = 1.0


def open_store(settings: OriginSettings) -> Store:
    return store_from_url(
        settings.database_url(), pool_size=settings.db_pool_size, statement_timeout=settings.db_timeout
    )


async def seed_demo_catalog(store: Store, settings: OriginSettings, *, only_if_empty: bool) -> dict[str, Any] | None:
    """Load the deterministic demo catalog; returns its summary, or None if skipped."""
    if only_if_empty and await store.events(None, None, 1):
        return None
    now = datetime.now(UTC)
    # Events start from today so on-sale times stay meaningful; the seed fixes the rest.
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    stamp = HybridClock(settings.node_id, time.time).now().encode()
    catalog = await asyncio.get_running_loop().run_in_executor(
        None,
        lambda: build_catalog(
            settings.demo_seed, venues=settings.demo_venues, events=settings.demo_events, start=start, hlc=stamp
        ),
    )
    await store.load_catalog(catalog.venues, catalog.events, catalog.items, now)
    return summarize(catalog)


async def serve(settings: OriginSettings) -> None:
    """Serve until SIGINT or SIGTERM, then drain in-flight requests for `shutdown_timeout`."""
    store = open_store(settings)
    await store.open()
    try:
        if settings.seed_demo:
            summary = await seed_demo_catalog(store, settings, only_if_empty=True)
            if summary is not None:
                log.info("seeded the demo catalog: %s", _short(summary))
        async with contextlib.AsyncExitStack() as stack:
            origin = await build_origin(settings, store, stack)
            await _serve_app(settings, store, origin)
    finally:
        await store.close()


async def build_origin(settings: OriginSettings, store: Store, stack: contextlib.AsyncExitStack) -> Origin:
    """The Origin of either role; a shard's upstream HTTP session is closed with `stack`."""
    ledger = Ledger(store, HybridClock(settings.node_id, time.time), time.time, settings.ledger_limits())
    metrics = OriginMetrics()
    shard = None
    shard_map = None
    leasing = None
    sales = None
    if settings.role == "shard":
        session = await stack.enter_async_context(upstream_session())
        shard = Shard(settings, store, session, ShardMetrics(metrics.registry))
        if settings.shard_token:  # without the token the primary refuses every lease call
            sales = ShardSales(settings, store, session)
    else:
        shard_map = ShardMapService(_shardmap_path(settings), _public_url(settings), settings.shardmap_token, time.time)
        shard_map.load()
        leasing = Leasing(store, ledger, lease_policy(settings), settings.shard_token)
    return Origin(
        settings,
        store,
        ledger,
        time.time,
        metrics=metrics,
        shard=shard,
        shard_map=shard_map,
        leasing=leasing,
        sales=sales,
    )


def lease_policy(settings: OriginSettings) -> LeasePolicy:
    return LeasePolicy(
        lease_duration=timedelta(seconds=settings.lease_duration),
        clock_skew_margin=timedelta(seconds=settings.clock_skew_margin),
    )


def _shardmap_path(settings: OriginSettings) -> Path:
    if settings.shardmap_file:
        return Path(settings.shardmap_file)
    return Path(settings.data_dir or "var") / "shardmap.json"


def _public_url(settings: OriginSettings) -> str:
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host, port = settings.bind_address()
    return f"http://{_url_host(host)}:{port}"


async def _serve_app(settings: OriginSettings, store: Store, origin: Origin) -> None:
    runner = web.AppRunner(
        create_app(origin),
        access_log=log if settings.access_log else None,
        shutdown_timeout=settings.shutdown_timeout,
    )
    await runner.setup()
    try:
        host, port = settings.bind_address()
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        await site.start()
        base = f"http://{_url_host(host)}:{port}"
        role = "origin" if settings.role == "primary" else f"shard {settings.shard_id or settings.region}".rstrip()
        print(f"boxoffice {role} listening on {base} (database {settings.database_url()}, epoch {store.epoch})")
        if settings.role == "shard":
            print(f"  following {settings.upstream}; health: curl {base}/v1/health")
        else:
            sample = await store.events(None, None, 1)
            if sample:
                items = await store.event_items(sample[0].id)
                if items:
                    print(f"  try: curl -i {base}/v1/items/{items[0].id}")
                print(f"       curl {base}/v1/events/{sample[0].id}")
        print("  stop with Ctrl-C", flush=True)
        await until_signalled()
        deadline = time.monotonic() + settings.shutdown_timeout
        log.info("shutting down: draining requests for up to %.0f s", settings.shutdown_timeout)
    finally:
        await runner.cleanup()  # stops the lease loop too (cleanup_ctx), so nothing is granted anew
    if origin.sales is not None:
        await return_grants(origin.sales, deadline - time.monotonic())


async def return_grants(sales: ShardSales, budget: float) -> None:
    """Give a stopping shard's grants back within `budget` seconds (at least MIN_SHUTDOWN_RETURN)."""
    try:
        async with asyncio.timeout(max(budget, MIN_SHUTDOWN_RETURN)):
            await sales.return_all()
    except TimeoutError:
        log.warning("shutdown timeout: grants not yet returned stay frozen at the origin until they expire")


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _short(summary: dict[str, Any]) -> str:
    keys = ("venues", "events", "items")
    return ", ".join(f"{summary[key]} {key}" for key in keys if key in summary) or str(summary)
