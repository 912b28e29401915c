"""The GeoDNS admin HTTP API: the POP registry at runtime, health, and metrics.

    GET    /v1/pops              every POP with its health
    GET    /v1/pops/{id}         one POP
    PUT    /v1/pops/{id}         add or replace: {addresses, lat, lon, capacity, weight, health_url?, drained?}
    POST   /v1/pops/{id}/drain   stop answering with it (still health-checked); /undrain reverses
    DELETE /v1/pops/{id}         remove (409 while a config pool names it: drain it instead)
    GET    /v1/health            liveness and a summary
    GET    /metrics              Prometheus text

Writes need `Authorization: Bearer <geodns.admin_token>`; with no token
configured they are refused, so a default install cannot be re-steered by
anyone who can reach the port. Errors are JSON like the origin's.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from geodns.answer import Answerer
from geodns.config import ConfigError, parse_pop
from geodns.health import HealthTracker
from geodns.model import Pop
from geodns.ratelimit import RateLimiter
from geodns.registry import PopInUse, PopRegistry, UnknownPop
from geodns.server import TCPServerState, TransportStats
from geodns.settings import GeoDNSSettings
from ops.metrics import CONTENT_TYPE, Registry

log = logging.getLogger("boxoffice.geodns")

# A POP document is a few hundred bytes.
MAX_ADMIN_BODY: Final = 16 * 1024
QTYPE_NAMES: Final = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 15: "MX", 16: "TXT", 28: "AAAA", 255: "ANY", 0: "none"}
RCODE_NAMES: Final = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    16: "BADVERS",
}


@dataclass
class GeoDNS:
    """Everything the admin API and the transports share, built once by the service."""

    settings: GeoDNSSettings
    registry: PopRegistry
    answerer: Answerer
    tracker: HealthTracker
    limiter: RateLimiter
    stats: TransportStats
    tcp: TCPServerState | None = None
    metrics: Registry = field(default_factory=Registry)
    started_at: float = field(default_factory=time.monotonic)
    all_down_answers: int = 0

    def __post_init__(self) -> None:
        m = self.metrics
        m.family("geodns_queries_total", "Answered queries by type, rcode and first POP", "counter",
                 ("qtype", "rcode", "pop"), self._query_counts)  # fmt: skip
        self.latency = m.histogram("geodns_answer_seconds", "Time to answer one query", ("transport",))
        self.stats.latency_observe = self.latency.observe
        m.family("geodns_pop_healthy", "1 when the POP passes health checks", "gauge", ("pop",),
                 lambda: {(pop_id, ): float(h.healthy) for pop_id, h in self.tracker.snapshot().items()})  # fmt: skip
        m.family("geodns_pop_load", "Load the POP last reported", "gauge", ("pop",),
                 lambda: {(p, ): h.load for p, h in self.tracker.snapshot().items() if h.load is not None})  # fmt: skip
        m.family("geodns_pop_drained", "1 when the POP is drained", "gauge", ("pop",),
                 lambda: {(pop.id, ): float(pop.drained) for pop in self.registry.pops.values()})  # fmt: skip
        m.gauge("geodns_all_pops_down", "1 when no POP is healthy and answers fall back to the nearest",
                lambda: float(self.everything_down()))  # fmt: skip
        m.gauge("geodns_rrl_dropped_total", "UDP responses dropped by rate limiting", lambda: self.limiter.dropped)
        m.gauge("geodns_rrl_slipped_total", "UDP responses sent truncated by rate limiting",
                lambda: self.limiter.slipped)  # fmt: skip
        m.gauge("geodns_udp_queries_total", "UDP datagrams received", lambda: self.stats.udp_queries)
        m.gauge("geodns_tcp_queries_total", "TCP queries received", lambda: self.stats.tcp_queries)
        m.gauge("geodns_tcp_connections", "Open TCP connections",
                lambda: 0 if self.tcp is None else len(self.tcp.connections))  # fmt: skip
        m.gauge("geodns_tcp_refused_total", "TCP connections refused at the limit", lambda: self.stats.tcp_refused)

    def _query_counts(self) -> dict[tuple[str, ...], float]:
        counts: dict[tuple[str, ...], float] = {}
        for (qtype, rcode, pop), count in self.answerer.stats.items():
            key = (QTYPE_NAMES.get(qtype, str(qtype)), RCODE_NAMES.get(rcode, str(rcode)), pop)
            counts[key] = counts.get(key, 0) + count
        return counts

    def everything_down(self) -> bool:
        health = self.tracker.snapshot()
        live = [pop for pop in self.registry.pops.values() if not pop.drained]
        return bool(live) and not any(health.get(pop.id) is not None and health[pop.id].healthy for pop in live)

    def pop_document(self, pop: Pop) -> dict[str, Any]:
        health = self.tracker.snapshot().get(pop.id)
        return {
            "id": pop.id,
            "addresses": [str(address) for address in pop.addresses],
            "lat": pop.lat,
            "lon": pop.lon,
            "capacity": pop.capacity,
            "weight": pop.weight,
            "health_url": pop.health_url,
            "drained": pop.drained,
            "healthy": None if health is None else health.healthy,
            "load": None if health is None else health.load,
        }


GEODNS: Final = web.AppKey("geodns", GeoDNS)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_admin_app(state: GeoDNS) -> web.Application:
    app = web.Application(client_max_size=MAX_ADMIN_BODY, middlewares=[_errors])
    app[GEODNS] = state
    app.router.add_get("/v1/pops", list_pops)
    app.router.add_get("/v1/pops/{pop_id}", get_pop)
    app.router.add_put("/v1/pops/{pop_id}", put_pop)
    app.router.add_delete("/v1/pops/{pop_id}", delete_pop)
    app.router.add_post("/v1/pops/{pop_id}/drain", drain_pop)
    app.router.add_post("/v1/pops/{pop_id}/undrain", undrain_pop)
    app.router.add_get("/v1/health", get_health)
    app.router.add_get("/metrics", get_metrics)
    return app


async def list_pops(request: web.Request) -> web.StreamResponse:
    state = request.app[GEODNS]
    pops = [state.pop_document(pop) for pop in sorted(state.registry.pops.values(), key=lambda pop: pop.id)]
    return _json({"pops": pops, "all_down": state.everything_down()})


async def get_pop(request: web.Request) -> web.StreamResponse:
    state = request.app[GEODNS]
    return _json(state.pop_document(state.registry.get(request.match_info["pop_id"])))


async def put_pop(request: web.Request) -> web.StreamResponse:
    state = request.app[GEODNS]
    _authorize(request, state)
    pop_id = request.match_info["pop_id"]
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Problem(400, "bad_request", f"body is not valid JSON: {exc}") from None
    try:
        pop = parse_pop(pop_id, body, "pop")
    except ConfigError as exc:
        raise _Problem(400, "bad_request", str(exc)) from None
    created = state.registry.put(pop)
    log.info("admin: %s POP %s at %s", "added" if created else "updated", pop_id, ", ".join(map(str, pop.addresses)))
    return _json(state.pop_document(pop), status=201 if created else 200)


async def delete_pop(request: web.Request) -> web.StreamResponse:
    state = request.app[GEODNS]
    _authorize(request, state)
    pop_id = request.match_info["pop_id"]
    try:
        state.registry.remove(pop_id)
    except PopInUse as exc:
        raise _Problem(409, "pop_in_use", str(exc)) from None
    state.tracker.forget(pop_id)
    log.info("admin: removed POP %s", pop_id)
    return web.Response(status=204)


async def drain_pop(request: web.Request) -> web.StreamResponse:
    return await _set_drained(request, True)


async def undrain_pop(request: web.Request) -> web.StreamResponse:
    return await _set_drained(request, False)


async def _set_drained(request: web.Request, drained: bool) -> web.StreamResponse:
    state = request.app[GEODNS]
    _authorize(request, state)
    pop = state.registry.drain(request.match_info["pop_id"], drained)
    log.info("admin: %s POP %s", "drained" if drained else "undrained", pop.id)
    return _json(state.pop_document(pop))


async def get_health(request: web.Request) -> web.StreamResponse:
    state = request.app[GEODNS]
    health = state.tracker.snapshot()
    return _json({
        "status": "ok",
        "pops": len(state.registry.pops),
        "healthy_pops": sum(1 for pop_id in state.registry.pops if pop_id in health and health[pop_id].healthy),
        "all_down": state.everything_down(),
        "uptime_seconds": round(time.monotonic() - state.started_at, 3),
    })  # fmt: skip


async def get_metrics(request: web.Request) -> web.StreamResponse:
    return web.Response(text=request.app[GEODNS].metrics.render(), headers={"Content-Type": CONTENT_TYPE})


class _Problem(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _authorize(request: web.Request, state: GeoDNS) -> None:
    token = state.settings.admin_token
    if not token:
        raise _Problem(403, "admin_disabled", "admin writes are disabled: set geodns.admin_token")
    scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        offered.encode("utf-8", "surrogateescape"), token.encode()
    ):
        raise _Problem(401, "unauthorized", "send Authorization: Bearer <geodns.admin_token>")


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _Problem as exc:
        response = _json({"error": {"status": exc.status, "code": exc.code, "message": exc.message}}, status=exc.status)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="geodns"'
        return response
    except UnknownPop as exc:
        return _json({"error": {"status": 404, "code": "not_found", "message": f"no POP {exc.args[0]}"}}, status=404)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return _json({"error": {"status": exc.status, "code": code, "message": exc.reason}}, status=exc.status)


def _json(doc: Any, *, status: int = 200) -> web.Response:
    return web.json_response(doc, status=status, headers={"Cache-Control": "no-store"})
