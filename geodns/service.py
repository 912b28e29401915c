"""Run the GeoDNS server: load config and database, serve UDP, TCP and admin HTTP, reload on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path

from aiohttp import web

from geodns.admin import GeoDNS, create_admin_app
from geodns.answer import Answerer, AnswerSettings
from geodns.config import ConfigError, ZoneConfig, load_zone_config
from geodns.geo import GeoDatabase
from geodns.health import HealthChecker, HealthTracker
from geodns.model import IPAddress, Location, PopHealth
from geodns.ratelimit import RateLimiter
from geodns.registry import PopRegistry
from geodns.server import TCPServerState, TransportStats, UDPProtocol, UDPSocketServer
from geodns.settings import GeoDNSSettings
from geodns.zone import ZoneIndex

log = logging.getLogger("boxoffice.geodns")


def _no_location(_: IPAddress) -> Location | None:
    return None


def build_state(settings: GeoDNSSettings, zone_config: ZoneConfig, geo: GeoDatabase | None) -> GeoDNS:
    registry = PopRegistry.from_config(zone_config)
    tracker = HealthTracker(rise=settings.health_rise, fall=settings.health_fall)
    answerer = Answerer(
        ZoneIndex(zone_config.zones),
        registry,
        tracker.snapshot,
        geo.lookup if geo is not None else _no_location,
        AnswerSettings(settings.answer_count, settings.geo_ttl, settings.nsid.encode() or None),
        clock=time.monotonic,
        cache_lifetime=settings.health_interval,
    )
    limiter = RateLimiter(
        settings.rrl_responses_per_second, settings.rrl_slip, settings.rrl_ipv4_prefix, settings.rrl_ipv6_prefix
    )
    return GeoDNS(settings, registry, answerer, tracker, limiter, TransportStats())


async def serve(settings: GeoDNSSettings, config_path: Path) -> None:
    """Serve until SIGINT/SIGTERM; SIGHUP reloads zones, pools and POPs from `config_path`."""
    loop = asyncio.get_running_loop()
    zone_config = await loop.run_in_executor(None, load_zone_config, config_path)
    geo = None
    if settings.geo_database:
        geo = await loop.run_in_executor(None, GeoDatabase.open, settings.geo_database)
    state = build_state(settings, zone_config, geo)

    def on_health_change(pop_id: str, health: PopHealth) -> None:
        state.answerer.invalidate()
        log.warning("POP %s is now %s", pop_id, "healthy" if health.healthy else "UNHEALTHY")
        if state.everything_down():
            log.error("every POP is down: answering with the nearest anyway")

    checker = HealthChecker(
        lambda: list(state.registry.pops.values()),
        state.tracker,
        interval=settings.health_interval,
        timeout=settings.health_timeout,
        on_change=on_health_change,
    )
    udp = UDPSocketServer(
        settings.host,
        settings.port,
        UDPProtocol(state.answerer, state.limiter, max_amplification=settings.max_amplification, stats=state.stats),
    )
    udp.start()
    state.tcp = TCPServerState(
        state.answerer, state.stats, settings.tcp_max_connections, settings.tcp_max_queries, settings.tcp_idle_timeout
    )
    tcp = await loop.create_server(state.tcp.protocol, settings.host, settings.port, backlog=256, reuse_address=True)
    runner = web.AppRunner(create_admin_app(state), access_log=None, shutdown_timeout=settings.shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.admin_host, settings.admin_port).start()
        zones = ", ".join(zone.origin for zone in zone_config.zones)
        print(f"boxoffice geodns answering for {zones} on udp+tcp {settings.host}:{settings.port} "
              f"(admin http://{settings.admin_host}:{settings.admin_port})")  # fmt: skip
        steered = next((name for zone in zone_config.zones for name in zone.geo), None)
        if steered is not None:
            print(f"  try: dig @{settings.host} -p {settings.port} {steered} A +subnet=203.0.113.0/24", flush=True)
        async with asyncio.TaskGroup() as tasks:
            health_task = tasks.create_task(checker.run())
            await _serve_until_stopped(state, config_path)
            health_task.cancel()
        log.info("shutting down")
    finally:
        udp.close()
        tcp.close()
        if state.tcp is not None:
            state.tcp.close_all()
        await runner.cleanup()
        if geo is not None:
            geo.close()


async def _serve_until_stopped(state: GeoDNS, config_path: Path) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload = asyncio.Event()
    handlers = {signal.SIGINT: stop.set, signal.SIGTERM: stop.set, signal.SIGHUP: reload.set}
    for sig, handler in handlers.items():
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, handler)
    try:
        while not stop.is_set():
            stop_wait = asyncio.ensure_future(stop.wait())
            reload_wait = asyncio.ensure_future(reload.wait())
            await asyncio.wait({stop_wait, reload_wait}, return_when=asyncio.FIRST_COMPLETED)
            for waiter in (stop_wait, reload_wait):
                waiter.cancel()
            if reload.is_set():
                reload.clear()
                await _reload(state, config_path)
    finally:
        for sig in handlers:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)


async def _reload(state: GeoDNS, config_path: Path) -> None:
    """Swap in a re-read config; queries keep being answered from the old one until the swap."""
    try:
        new = await asyncio.get_running_loop().run_in_executor(None, load_zone_config, config_path)
    except ConfigError as exc:
        log.error("SIGHUP: keeping the running config, %s", exc)
        return
    state.answerer.zones = ZoneIndex(new.zones)
    state.registry.replace(new)
    state.answerer.invalidate()
    log.info("SIGHUP: reloaded %d zone(s), %d POP(s) from %s", len(new.zones), len(new.pops), config_path)
