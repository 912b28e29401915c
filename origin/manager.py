"""The shard manager: forecast in, shards started and stopped, shard map out.

Every ``interval`` the manager runs one round:

1. read the demand forecast (a file, or the predictor's ``GET /v1/forecast``);
   when it cannot be read or is invalid, the round plans nothing (placement and
   its quiet timers stay as they are) but still does steps 2, 4 and 5;
2. health-check every placed shard (``GET {url}/v1/health``, 200 passes); a
   shard the backend does not run fails its check;
3. call :func:`origin.placement.plan` and save the new placement to
   ``state_dir/placement.json`` *before* acting on it, so a manager restarted
   mid-round neither re-creates shards nor reuses a shard id;
4. converge the backend on the placement: start every placed shard that is not
   running (new ones, and ones that crashed);
5. PUT the shard map to the origin (every round: an unchanged map keeps its
   version, and a restarted origin gets it back), then stop every running
   shard that is no longer placed, so POPs have stopped routing to it first
   (when the PUT fails, they are stopped in a later round that publishes).

Health has hysteresis like placement (rules H1–H6): a shard becomes unhealthy
after ``unhealthy_after`` consecutive failed checks and healthy again after
``healthy_after`` consecutive passes; the map skips unhealthy shards, so their
regions fail over to the secondary region's shard, then to the origin.

====  ===================================  ===========================================
rule  state, check                         then
====  ===================================  ===========================================
H0    started, never passed yet            unhealthy until its first pass, then healthy
H1    healthy, passes                      healthy; failure count reset
H2    healthy, fails, count < threshold    healthy; count + 1
H3    healthy, fails, count = threshold    unhealthy (logged)
H4    unhealthy, fails                     unhealthy; pass count reset
H5    unhealthy, passes, count < recover   unhealthy; pass count + 1
H6    unhealthy, passes, count = recover   healthy (logged)
====  ===================================  ===========================================

A check passes when ``/v1/health`` answers 200 with ``"status": "ok"`` and,
when the answer lists the shard's loaded ``events``, every event placed on it
is among them (a shard that has not yet read the new map or bootstrapped an
added event would answer 404 for it); a shard
answers ``"degraded"`` while it bootstraps or lags beyond its bound, and its
reads answer 503 then. A shard (re)started by the backend is unhealthy until
its first pass (H0; it is checked once right after starting, and every round
after), so POPs are not routed to a shard that is still bootstrapping; it is
in the map's ``shards`` all the while, which is where it reads its events. A
shard whose start failed is unhealthy until it passes ``healthy_after`` checks.

The forecast document and its validation are in :mod:`origin.forecast`; the
placement state file is in :mod:`origin.placement_state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web

from ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ops.metrics import Registry
from origin.backends import HEALTH_PATH, Backend, BackendError, ShardSpec
from origin.forecast import ForecastUnavailable, read_forecast
from origin.metadata import SHARDMAP_PATH
from origin.placement import (
    Forecast,
    InvalidForecast,
    Placement,
    PlacementConfig,
    ShardPlacement,
    build_shard_map,
    plan,
)
from origin.placement_state import StateError, load_placement, save_placement

log = logging.getLogger("boxoffice.origin.manager")


# Health ------------------------------------------------------------------------------------


@dataclass(slots=True)
class ShardHealth:
    healthy: bool = True
    pending: bool = False  # started and not yet passed a check (H0)
    consecutive_failures: int = 0
    consecutive_passes: int = 0
    last_error: str = ""


@dataclass
class HealthTracker:
    """Per-shard health with hysteresis (rules H1–H6 in the module docstring); no I/O."""

    unhealthy_after: int
    healthy_after: int
    shards: dict[str, ShardHealth] = field(default_factory=dict)

    def record(self, shard_id: str, passed: bool, error: str = "") -> str | None:
        """Apply one check result; returns "unhealthy" or "healthy" when the state flips, else None."""
        health = self.shards.setdefault(shard_id, ShardHealth())
        if health.pending:  # H0
            if not passed:
                health.last_error = error
                return None
            self.shards[shard_id] = ShardHealth()
            return "healthy"
        if passed:
            health.consecutive_failures = 0
            health.last_error = ""
            if health.healthy:  # H1
                return None
            health.consecutive_passes += 1
            if health.consecutive_passes < self.healthy_after:  # H5
                return None
            health.healthy, health.consecutive_passes = True, 0  # H6
            return "healthy"
        health.consecutive_passes = 0
        health.last_error = error
        if not health.healthy:  # H4
            return None
        health.consecutive_failures += 1
        if health.consecutive_failures < self.unhealthy_after:  # H2
            return None
        health.healthy = False  # H3
        return "unhealthy"

    def started(self, shard_id: str) -> None:
        """`shard_id` was (re)started: unhealthy until its first passed check (H0)."""
        self.shards[shard_id] = ShardHealth(healthy=False, pending=True)

    def failed_to_start(self, shard_id: str, error: str) -> bool:
        """Mark `shard_id` unhealthy at once; True if it was healthy before."""
        health = self.shards.setdefault(shard_id, ShardHealth())
        was_healthy = health.healthy
        health.healthy, health.pending, health.consecutive_failures, health.consecutive_passes = False, False, 0, 0
        health.last_error = error
        return was_healthy

    def forget(self, keep: set[str]) -> None:
        for shard_id in set(self.shards) - keep:
            del self.shards[shard_id]

    def unhealthy(self) -> frozenset[str]:
        return frozenset(shard_id for shard_id, health in self.shards.items() if not health.healthy)


# The shard map the manager publishes --------------------------------------------------------


def shardmap_document(
    placement: Placement,
    config: PlacementConfig,
    unhealthy: frozenset[str],
    urls: Mapping[str, str],
    origin_url: str,
) -> dict[str, Any]:
    """The body of ``PUT /v1/shardmap``: shards with a known URL, and the routes of rules M1–M3."""
    skipped = unhealthy | {shard.shard_id for shard in placement.shards if shard.shard_id not in urls}
    routes = build_shard_map(placement, config, skipped)
    return {
        "origin": {"url": origin_url},
        "shards": {
            shard.shard_id: {
                "region": shard.region,
                "url": urls[shard.shard_id],
                "events": sorted(shard.events),
                "healthy": shard.shard_id not in skipped,
            }
            for shard in placement.shards
            if shard.shard_id in urls
        },
        "events": {
            event: {region: list(route) for region, route in regions.items()} for event, regions in routes.items()
        },
    }


# The loop ----------------------------------------------------------------------------------


@dataclass
class ManagerMetrics:
    registry: Registry = field(default_factory=Registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.rounds = r.counter("manager_rounds_total", "Manager rounds by outcome", ("outcome",))
        self.decisions = r.counter("manager_decisions_total", "Shards created, retired, changed", ("decision",))
        self.health_checks = r.counter("manager_health_checks_total", "Shard health checks by result", ("result",))
        self.transitions = r.counter("manager_health_transitions_total", "Shards turning (un)healthy", ("to",))
        self.backend_errors = r.counter("manager_backend_errors_total", "Failed backend calls", ("operation",))
        self.publishes = r.counter("manager_publishes_total", "PUT /v1/shardmap attempts by outcome", ("outcome",))
        self.shards = r.gauge("manager_shards", "Shards in the placement")
        self.unhealthy = r.gauge("manager_unhealthy_shards", "Placed shards that are unhealthy")
        self.placed = r.gauge("manager_placed_events", "(region, event) pairs mirrored by a shard")
        self.map_version = r.gauge("manager_shardmap_version", "Version the origin gave the last published map")


@dataclass(frozen=True, slots=True)
class RoundReport:
    planned: bool  # False when the forecast could not be read
    created: tuple[str, ...] = ()
    retired: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    unhealthy: frozenset[str] = frozenset()
    published_version: int | None = None  # None when the publish failed
    errors: tuple[str, ...] = ()


class ShardManager:
    """One manager: its placement, the shards' health, a backend and the origin to publish to.

    Args:
        forecast_source: a forecast file path or http(s) URL.
        origin_url: the primary; the map goes to ``{origin_url}/v1/shardmap``.
        token: the bearer token of that PUT.
        state_path: where the placement is kept between rounds and restarts.
        clock: seconds since the epoch.
    """

    def __init__(
        self,
        *,
        forecast_source: str,
        origin_url: str,
        token: str,
        state_path: Path,
        backend: Backend,
        session: aiohttp.ClientSession,
        config: PlacementConfig,
        unhealthy_after: int = 3,
        healthy_after: int = 2,
        http_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        metrics: ManagerMetrics | None = None,
    ) -> None:
        self.forecast_source = forecast_source
        self.origin_url = origin_url.rstrip("/")
        self._token = token
        self.state_path = state_path
        self.backend = backend
        self._session = session
        self.config = config
        self.http_timeout = http_timeout
        self.clock = clock
        self.metrics = metrics or ManagerMetrics()
        self.health = HealthTracker(unhealthy_after, healthy_after)
        self.placement = load_placement(state_path)
        self.last_report: RoundReport | None = None
        self.metrics.shards.set(len(self.placement.shards))

    async def run_round(self) -> RoundReport:
        """One round (module docstring, steps 1–5). Errors of one step are logged and reported, not raised."""
        now = datetime.fromtimestamp(self.clock(), UTC)
        errors: list[str] = []
        forecast: Forecast | None
        try:
            forecast = await read_forecast(self.forecast_source, self._session, self.http_timeout)
        except (ForecastUnavailable, InvalidForecast) as exc:
            log.warning("forecast: %s; placement unchanged this round", exc.message)
            errors.append(f"forecast: {exc.message}")
            forecast = None

        try:
            running = dict(await self.backend.running())
        except BackendError as exc:
            self._backend_failed("list", exc, errors)
            running = {}
        await self._check_health(running)

        before = self.placement
        created: tuple[str, ...] = ()
        retired: tuple[str, ...] = ()
        changed: tuple[str, ...] = ()
        if forecast is not None:
            regional = {region: rates for region, rates in forecast.items() if region in self.config.secondary_region}
            decided = plan(regional, before, self.config, now, self.health.unhealthy())
            # Kept only once saved: a round that cannot save leaves the placement (and what the
            # next round reports as created) as it was.
            await asyncio.to_thread(save_placement, self.state_path, decided.placement)
            self.placement = decided.placement
            for new in decided.create:
                log.info("created shard %s in %s for %d event(s): %s", new.shard_id, new.region, len(new.events),
                         _ids(new.events))  # fmt: skip
                self.metrics.decisions.inc("created")
            for change in decided.changes:
                log.info("changed shard %s: add %s, drop %s", change.shard_id, _ids(change.add), _ids(change.drop))
                self.metrics.decisions.inc("changed")
            for shard_id in decided.retire:
                log.info("retired shard %s (no events for its minimum lifetime)", shard_id)
                self.metrics.decisions.inc("retired")
            created = tuple(new.shard_id for new in decided.create)
            retired = decided.retire
            changed = tuple(change.shard_id for change in decided.changes)

        restarted = await self._start_missing(running, set(created), errors)
        published = await self._publish(errors)
        placed_ids = {shard.shard_id for shard in self.placement.shards}
        # Stop only once the origin holds a map without them: until then POPs may still route there.
        for shard_id in sorted(set(running) - placed_ids) if published is not None else ():
            try:
                await self.backend.stop(shard_id)
            except BackendError as exc:
                self._backend_failed("stop", exc, errors)
            else:
                if shard_id not in retired:
                    log.info("stopped shard %s: running but not in the placement", shard_id)
        self.health.forget(placed_ids)

        unhealthy = self.health.unhealthy() & placed_ids
        self.metrics.shards.set(len(self.placement.shards))
        self.metrics.unhealthy.set(len(unhealthy))
        self.metrics.placed.set(sum(len(shard.events) for shard in self.placement.shards))
        self.metrics.rounds.inc("planned" if forecast is not None and not errors else "degraded")
        report = RoundReport(forecast is not None, created, retired, changed, restarted, unhealthy, published,
                             tuple(errors))  # fmt: skip
        self.last_report = report
        return report

    async def run_forever(self, interval: float, stop: asyncio.Event) -> None:
        """Rounds every `interval` seconds until `stop` is set."""
        while not stop.is_set():
            try:
                await self.run_round()
            except (StateError, OSError) as exc:  # the state could not be saved: try again next round
                log.error("round failed: %s", exc)
                self.metrics.rounds.inc("failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def _check_health(self, running: Mapping[str, str], only: set[str] | None = None) -> None:
        placed = [shard.shard_id for shard in self.placement.shards if only is None or shard.shard_id in only]

        async def check(shard_id: str) -> tuple[str, bool, str]:
            url = running.get(shard_id)
            if url is None:
                return shard_id, False, "not running"
            try:
                timeout = aiohttp.ClientTimeout(total=self.http_timeout)
                async with self._session.get(url + HEALTH_PATH, timeout=timeout) as response:
                    if response.status != 200:
                        return shard_id, False, f"{HEALTH_PATH} answered {response.status}"
                    doc = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError) as exc:
                return shard_id, False, str(exc) or type(exc).__name__
            except ValueError:
                return shard_id, False, f"{HEALTH_PATH} did not answer JSON"
            status = doc.get("status") if isinstance(doc, dict) else None
            if status != "ok":
                return shard_id, False, f"{HEALTH_PATH} says {status!r}"
            missing = _not_loaded(doc, self.placement.shard(shard_id))
            if missing:
                return shard_id, False, f"has not loaded {len(missing)} placed event(s) yet, e.g. {missing[0]}"
            return shard_id, True, ""

        for shard_id, passed, error in await asyncio.gather(*(check(shard_id) for shard_id in placed)):
            self.metrics.health_checks.inc("pass" if passed else "fail")
            flipped = self.health.record(shard_id, passed, error)
            if flipped == "unhealthy":
                log.warning("shard %s unhealthy after %d failed checks (%s): its regions fail over", shard_id,
                            self.health.unhealthy_after, error)  # fmt: skip
            elif flipped == "healthy":
                log.info("shard %s healthy: it serves reads and is back in the routes", shard_id)
            if flipped:
                self.metrics.transitions.inc(flipped)

    async def _start_missing(self, running: Mapping[str, str], created: set[str], errors: list[str]) -> tuple[str, ...]:
        missing = [shard for shard in self.placement.shards if shard.shard_id not in running]

        async def start(shard: ShardPlacement) -> tuple[str, BackendError | None]:
            try:
                await self.backend.start(ShardSpec(shard.shard_id, shard.region))
            except BackendError as exc:
                return shard.shard_id, exc
            return shard.shard_id, None

        restarted: list[str] = []
        started: set[str] = set()
        for shard_id, failure in await asyncio.gather(*(start(shard) for shard in missing)):
            if failure is not None:
                self._backend_failed("start", failure, errors)
                if self.health.failed_to_start(shard_id, failure.message):
                    log.warning("shard %s unhealthy: it did not start", shard_id)
                    self.metrics.transitions.inc("unhealthy")
                continue
            self.health.started(shard_id)
            started.add(shard_id)
            if shard_id not in created:
                log.info("restarted shard %s: it was not running", shard_id)
                restarted.append(shard_id)
        if started:
            urls = {shard_id: url for shard_id in started if (url := self.backend.url(shard_id))}
            await self._check_health(urls, only=started)
        return tuple(restarted)

    async def _publish(self, errors: list[str]) -> int | None:
        urls = {shard.shard_id: url for shard in self.placement.shards if (url := self.backend.url(shard.shard_id))}
        doc = shardmap_document(self.placement, self.config, self.health.unhealthy(), urls, self.origin_url)
        target = self.origin_url + SHARDMAP_PATH
        try:
            async with self._session.put(
                target,
                json=doc,
                headers={"Authorization": f"Bearer {self._token}"},
                timeout=aiohttp.ClientTimeout(total=self.http_timeout),
            ) as response:
                body = await response.read()
                if response.status != 200:
                    raise _PublishFailed(
                        f"PUT {target} answered {response.status}: {body[:500].decode(errors='replace')}"
                    )
                answer = json.loads(body)
                version = answer.get("version") if isinstance(answer, dict) else None
                if not isinstance(version, int) or isinstance(version, bool) or version < 0:
                    raise _PublishFailed(f"PUT {target} answered no version: {body[:200].decode(errors='replace')}")
        except (aiohttp.ClientError, TimeoutError, _PublishFailed, ValueError, RecursionError) as exc:
            message = str(exc) or type(exc).__name__
            log.warning("shard map not published: %s; retrying next round", message)
            errors.append(f"publish: {message}")
            self.metrics.publishes.inc("failed")
            return None
        self.metrics.publishes.inc("ok")
        self.metrics.map_version.set(version)
        return version

    def _backend_failed(self, operation: str, exc: BackendError, errors: list[str]) -> None:
        log.error("backend %s %s failed: %s", self.backend.name, operation, exc.message)
        errors.append(f"{operation}: {exc.message}")
        self.metrics.backend_errors.inc(operation)


class _PublishFailed(Exception):
    pass


MANAGER: Final = web.AppKey("manager", ShardManager)


def create_manager_app(manager: ShardManager) -> web.Application:
    """``GET /metrics`` and ``GET /v1/health`` (the last round) of a running manager."""
    app = web.Application()
    app[MANAGER] = manager
    app.router.add_get("/metrics", _get_metrics)
    app.router.add_get(HEALTH_PATH, _get_health)
    return app


async def _get_metrics(request: web.Request) -> web.StreamResponse:
    registry = request.app[MANAGER].metrics.registry
    return web.Response(text=registry.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})


async def _get_health(request: web.Request) -> web.StreamResponse:
    manager = request.app[MANAGER]
    report = manager.last_report
    doc = {
        "status": "ok" if report is not None and not report.errors else "degraded",
        "role": "manager",
        "backend": manager.backend.name,
        "shards": [shard.shard_id for shard in manager.placement.shards],
        "unhealthy": sorted(manager.health.unhealthy()),
        "last_round_errors": [] if report is None else list(report.errors),
    }
    return web.json_response(doc, headers={"Cache-Control": "no-store"})


def _ids(ids: frozenset[str]) -> str:
    return ", ".join(sorted(ids)) or "-"


def _not_loaded(doc: dict[str, Any], placed: ShardPlacement | None) -> list[str]:
    """Placed events the shard's health answer does not list as loaded (none when it lists no events)."""
    loaded = doc.get("events")
    if placed is None or not isinstance(loaded, list):
        return []
    have = {event for event in loaded if isinstance(event, str)}
    return sorted(placed.events - have)
