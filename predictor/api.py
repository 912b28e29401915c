"""The predictor sidecar's HTTP API (aiohttp): routes, errors, metrics and the background tasks.

    POST   /v1/events                  a batch of user activity (predictor.ingest) -> {"accepted", "duplicates"}
    GET    /v1/hints/{user_id}         edge/hints.py's contract; 404 for a user without consent on record
    PUT    /v1/users/{user_id}/consent {"consent": true|false, "region": "eu-west"?}
    DELETE /v1/users/{user_id}         204: profile, online features, pending hints and retry ids are gone
    GET    /v1/warm/{pop_id}           {"pop_id", "region", "generated_at", "urls": [{"url", "priority"}]}
    GET    /v1/forecast                origin/forecast.py's document (503 without a demand model)
    GET    /v1/health, GET /metrics

Every call into the :class:`predictor.sidecar.Sidecar` goes through one
single-thread executor (:meth:`Predictor.call`): batches apply whole and in
order, and pandas and xgboost never block the event loop. That executor's
queue has no bound of its own: a request that would wait behind
``max_queued_calls`` others is answered 503 with Retry-After before its body
is read. The app owns two background tasks (``cleanup_ctx``): the model
reloader, and the warm pusher that sends each configured POP its warm list
``warm_lead`` before every scheduled on-sale (``POST {pop}/_edge/warm``,
bearer token, retried with backoff, every outcome logged and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp
from aiohttp import web

from edge.hints import format_rfc3339
from edge.usertoken import is_valid_user_id
from ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ops.metrics import Registry
from origin.cities import REGIONS
from predictor.errors import PredictorError
from predictor.ingest import BatchLimits, BatchRefused, parse_batch
from predictor.models import DEMAND, PURCHASE, versions
from predictor.scoring import Scorer
from predictor.serve_settings import PopTarget, ServeSettings
from predictor.sidecar import IngestResult, Sidecar
from predictor.warmlist import WarmUrl, due_onsales, next_push_at

log = logging.getLogger("boxoffice.predictor.api")

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

JSON_TYPE: Final = "application/json"
NO_STORE: Final = "no-store"
# Per-user answers: never stored by a shared cache (edge.hints.HINTS_RESPONSE_HEADERS says the same).
PRIVATE: Final = "private, no-store"
MAX_PUSH_SLEEP: Final = 30.0  # the pusher re-reads the clock at least this often (seconds)
PUSH_BACKOFF: Final = 1.0  # seconds before the first retry of a warm push; doubles per attempt
# Seconds an overloaded sidecar asks a client to wait (Retry-After, RFC 9110 section 10.2.3): the queue
# drains in well under a second (a hint list takes milliseconds to score).
OVERLOAD_RETRY_AFTER: Final = 1
FORECAST_GAUGE_INTERVAL: Final = 60.0  # seconds between refreshes of the forecast gauge
SCORING_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ApiError(PredictorError):
    """An answer other than 2xx, with the status and a stable code."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after


@dataclass
class PredictorMetrics:
    registry: Registry = field(default_factory=Registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = r.counter(
            "predictor_http_requests_total", "HTTP requests by route and status", ("route", "status")
        )
        self.events = r.counter("predictor_events_ingested_total", "Events applied to the online features")
        self.duplicates = r.counter("predictor_events_duplicate_total", "Events skipped as already applied (retries)")
        self.refused = r.counter(
            "predictor_batches_refused_total", "Event batches refused whole, by status", ("status",)
        )
        self.scoring = r.histogram(
            "predictor_scoring_seconds", "Time in the scoring executor, by answer", ("answer",), SCORING_BUCKETS
        )
        self.hints = r.counter("predictor_hints_served_total", "Hint answers by result", ("result",))
        self.pushes = r.counter("predictor_warm_pushes_total", "Warm pushes to POPs by outcome", ("pop", "outcome"))
        self.reloads = r.counter("predictor_model_reloads_total", "Newer models loaded while serving")


@dataclass
class Predictor:
    settings: ServeSettings
    sidecar: Sidecar
    clock: Callable[[], float]  # POSIX seconds; tests pass their own
    executor: ThreadPoolExecutor
    metrics: PredictorMetrics = field(default_factory=PredictorMetrics)
    started_at: float = field(default_factory=time.monotonic)
    pushed: set[int] = field(default_factory=set)  # on-sale times whose warm lists went out
    # region → forecast requests/s summed over its events: the shard autoscalers' external metric
    forecast_by_region: dict[str, float] = field(default_factory=dict)
    # Calls submitted to the executor and not finished: its own queue has no bound, so `admit` keeps one.
    _queued: int = 0
    _queued_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def models_dir(self) -> Path:
        return Path(self.settings.models)

    def now_ms(self) -> int:
        return round(self.clock() * 1000)

    @property
    def queued_calls(self) -> int:
        """Calls waiting for or running on the sidecar's thread."""
        return self._queued

    def admit(self) -> None:
        """Refuse a request that would wait behind ``max_queued_calls`` others for the sidecar's thread.

        Raises:
            ApiError: 503 with Retry-After; nothing was read or queued for the request.
        """
        if self._queued >= self.settings.max_queued_calls:
            raise ApiError(
                503, "overloaded", f"{self._queued} requests are waiting for the scoring thread; retry later",
                retry_after=OVERLOAD_RETRY_AFTER,
            )  # fmt: skip

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the sidecar's one thread (counted in `queued_calls` until it is done)."""
        with self._queued_lock:
            self._queued += 1
        try:
            job = self.executor.submit(fn, *args)
        except BaseException:
            self._call_done(None)
            raise
        # counted down when the job ends or is cancelled unstarted, not when an awaiting request goes away
        job.add_done_callback(self._call_done)
        return await asyncio.wrap_future(job)

    def _call_done(self, _job: Future[Any] | None) -> None:
        with self._queued_lock:  # runs on the executor's thread, or on the one that cancelled the job
            self._queued -= 1

    async def timed(self, answer: str, fn: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        try:
            return await self.call(fn, *args)
        finally:
            self.metrics.scoring.observe(time.perf_counter() - started, answer)

    def model_versions(self) -> dict[str, int | None]:
        scorer = self.sidecar.scorer
        return {PURCHASE: scorer.purchase.version, DEMAND: None if scorer.demand is None else scorer.demand.version}

    def pop_region(self, pop_id: str) -> str | None:
        for target in self.settings.pop_targets():
            if target.pop_id == pop_id:
                return target.region
        return pop_id if pop_id in REGIONS else None


PREDICTOR: Final = web.AppKey("predictor", Predictor)
SESSION: Final = web.AppKey("session", aiohttp.ClientSession)


def create_app(predictor: Predictor, *, background: bool = True) -> web.Application:
    """The aiohttp application; with `background`, it also owns the reloader and the warm pusher."""
    app = web.Application(client_max_size=predictor.settings.max_body, middlewares=[_errors_and_metrics])
    app[PREDICTOR] = predictor
    app.router.add_post("/v1/events", post_events)
    app.router.add_get("/v1/hints/{user_id}", get_hints)
    app.router.add_put("/v1/users/{user_id}/consent", put_consent)
    app.router.add_delete("/v1/users/{user_id}", delete_user)
    app.router.add_get("/v1/warm/{pop_id}", get_warm)
    app.router.add_get("/v1/forecast", get_forecast)
    app.router.add_get("/v1/health", get_health)
    app.router.add_get("/metrics", get_metrics)
    m = predictor.metrics.registry
    m.gauge("predictor_users", "Consenting users remembered", lambda: len(predictor.sidecar.users))
    for kind in (PURCHASE, DEMAND):
        m.gauge(f"predictor_{kind}_model_version", f"Version of the {kind} model served (0: none)",
                functools.partial(lambda k: float(predictor.model_versions()[k] or 0), kind))  # fmt: skip
    m.family(
        "boxoffice_forecast_requests_per_second",
        "Forecast requests per second for the next horizon, by region (refreshed every minute; HPA external metric)",
        "gauge",
        ("region",),
        lambda: {(region,): value for region, value in predictor.forecast_by_region.items()},
    )
    if background:
        app.cleanup_ctx.append(_background_tasks)
    return app


def regional_totals(doc: dict[str, Any]) -> dict[str, float]:
    """Sum a forecast document's requests/s per region."""
    totals: dict[str, float] = {}
    for row in doc.get("forecast", []):
        totals[row["region"]] = totals.get(row["region"], 0.0) + float(row["requests_per_s"])
    return totals


async def refresh_forecast_gauge(predictor: Predictor, interval: float = FORECAST_GAUGE_INTERVAL) -> None:
    """Keep `forecast_by_region` current (in the scoring executor); failures keep the last values."""
    while True:
        if predictor.sidecar.demand is not None:
            try:
                doc = await predictor.call(predictor.sidecar.forecast, predictor.now_ms())
                predictor.forecast_by_region = regional_totals(doc)
            except Exception:
                log.warning("could not refresh the forecast gauge", exc_info=True)
        await asyncio.sleep(interval)


# Events and users ------------------------------------------------------------------


async def post_events(request: web.Request) -> web.StreamResponse:
    predictor = request.app[PREDICTOR]
    predictor.admit()
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        predictor.metrics.refused.inc("413")
        raise ApiError(413, "batch_too_large", f"the body is larger than {predictor.settings.max_body} bytes") from None
    settings = predictor.settings
    limits = BatchLimits(
        settings.max_batch_events, round(settings.max_event_age * 1000), round(settings.max_clock_skew * 1000)
    )
    try:
        result = await predictor.call(
            _ingest, predictor.sidecar, body, request.content_type, limits, predictor.now_ms()
        )
    except BatchRefused as exc:
        predictor.metrics.refused.inc(str(exc.status))
        raise ApiError(exc.status, "batch_too_large" if exc.status == 413 else "bad_batch", exc.message) from None
    predictor.metrics.events.inc(amount=result.accepted)
    predictor.metrics.duplicates.inc(amount=result.duplicates)
    return _json({"accepted": result.accepted, "duplicates": result.duplicates})


def _ingest(sidecar: Sidecar, body: bytes, content_type: str, limits: BatchLimits, now_ms: int) -> IngestResult:
    """Validate the whole batch, then apply it (on the sidecar's thread: nothing interleaves)."""
    return sidecar.ingest(parse_batch(body, content_type, limits, sidecar.known_events, now_ms))


async def put_consent(request: web.Request) -> web.StreamResponse:
    predictor = request.app[PREDICTOR]
    predictor.admit()
    user_id = _user_id(request)
    doc = await _json_body(request)
    consent, region = doc.get("consent"), doc.get("region")
    if not isinstance(consent, bool):
        raise ApiError(400, "bad_request", f"consent: true or false, got {consent!r}")
    if region is not None and region not in REGIONS:
        raise ApiError(400, "bad_request", f"region: {region!r} is not one of {', '.join(REGIONS)}")
    await predictor.call(predictor.sidecar.set_consent, user_id, consent, region)
    return _json({"user_id": user_id, "consent": consent}, cache_control=PRIVATE)


async def delete_user(request: web.Request) -> web.StreamResponse:
    predictor = request.app[PREDICTOR]
    predictor.admit()
    user_id = _user_id(request)
    await predictor.call(predictor.sidecar.erase, user_id)
    return web.Response(status=204, headers={"Cache-Control": NO_STORE})


# Answers ---------------------------------------------------------------------------


async def get_hints(request: web.Request) -> web.StreamResponse:
    predictor = request.app[PREDICTOR]
    predictor.admit()
    user_id = request.match_info["user_id"]
    answer = None
    if is_valid_user_id(user_id):
        answer = await predictor.timed("hints", predictor.sidecar.hints, user_id, predictor.now_ms())
    if answer is None:
        predictor.metrics.hints.inc("unknown")
        raise ApiError(404, "unknown_user", "no consenting user with this id")
    predictor.metrics.hints.inc("hints" if answer.hints else "bot" if answer.bot else "empty")
    doc = {
        "user_id": user_id,
        "hints": [{"url": url, "score": score} for url, score in answer.hints],
        "expires_at": rfc3339(answer.expires_ms),
    }
    return _json(doc, cache_control=PRIVATE)


async def get_warm(request: web.Request) -> web.StreamResponse:
    predictor = request.app[PREDICTOR]
    pop_id = request.match_info["pop_id"]
    region = predictor.pop_region(pop_id)
    if region is None:
        raise ApiError(
            404, "unknown_pop", f"no POP {pop_id!r}: name a configured POP or a region ({', '.join(REGIONS)})"
        )
    predictor.admit()
    now = predictor.now_ms()
    urls = await predictor.timed(
        "warm", predictor.sidecar.warm, region, now, round(predictor.settings.warm_lookahead * 1000)
    )
    return _json(_warm_document(pop_id, region, now, urls), cache_control=NO_STORE)


async def get_forecast(request: web.Request) -> web.StreamResponse:
    predictor = request.app[PREDICTOR]
    predictor.admit()
    if predictor.sidecar.demand is None:
        raise ApiError(
            503, "no_demand_model", "no demand model in the models directory (run `boxoffice predictor train`)"
        )
    try:
        doc = await predictor.timed("forecast", predictor.sidecar.forecast, predictor.now_ms())
        predictor.forecast_by_region = regional_totals(doc)
    except PredictorError as exc:  # a reload dropped the demand model while this request waited
        raise ApiError(503, "no_demand_model", exc.message) from None
    return _json(doc, cache_control=NO_STORE)


async def get_health(request: web.Request) -> web.StreamResponse:
    predictor = request.app[PREDICTOR]
    doc = {
        "status": "ok",
        "models": predictor.model_versions(),
        "users": len(predictor.sidecar.users),
        "events_applied": predictor.sidecar.events_applied,
        "pops": [target.pop_id for target in predictor.settings.pop_targets()],
        "uptime_seconds": round(time.monotonic() - predictor.started_at, 3),
    }
    return _json(doc, cache_control=NO_STORE)


async def get_metrics(request: web.Request) -> web.StreamResponse:
    registry = request.app[PREDICTOR].metrics.registry
    return web.Response(text=registry.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})


def _warm_document(pop_id: str, region: str, now_ms: int, urls: list[WarmUrl]) -> dict[str, Any]:
    """The warm list; ``urls`` is exactly the body the POP's ``POST /_edge/warm`` takes."""
    return {
        "pop_id": pop_id,
        "region": region,
        "generated_at": rfc3339(now_ms),
        "urls": [{"url": entry.url, "priority": entry.priority} for entry in urls],
    }


# Background tasks ------------------------------------------------------------------


async def _background_tasks(app: web.Application) -> AsyncIterator[None]:
    predictor = app[PREDICTOR]
    async with aiohttp.ClientSession() as session:
        app[SESSION] = session
        tasks = []
        if predictor.settings.reload_interval > 0:
            tasks.append(asyncio.create_task(reload_models(predictor), name="predictor-reload"))
        if predictor.settings.pops:
            tasks.append(asyncio.create_task(push_warm_lists(predictor, session), name="predictor-warm-push"))
        tasks.append(asyncio.create_task(refresh_forecast_gauge(predictor), name="predictor-forecast-gauge"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def reload_models(predictor: Predictor) -> None:
    """Every ``reload_interval``, serve the newest complete model versions if they changed.

    A model file is data from another process (`train`): whatever is wrong with it is logged (once
    while the same versions keep failing the same way: no log line every round) and the loop goes on
    serving the current models and trying again (the file may have been caught half-written). An
    exception escaping here would end the reloader for good, and only show at shutdown.
    """
    last_failure = ""
    while True:
        await asyncio.sleep(predictor.settings.reload_interval)
        latest: dict[str, int | None] | None = None
        try:
            latest = await asyncio.to_thread(_latest_versions, predictor.models_dir)
            if latest == predictor.model_versions() or latest[PURCHASE] is None:
                continue
            scorer = await asyncio.to_thread(Scorer.load, predictor.models_dir)
            # what serving reads of a model, checked before the swap so a bad file never gets served
            _ = scorer.purchase.version, None if scorer.demand is None else (scorer.demand.version, scorer.horizon_ms)
            reset = await predictor.call(predictor.sidecar.use_scorer, scorer)
        except Exception as exc:  # see the docstring; CancelledError is not an Exception and still ends the loop
            failure = f"{latest}: {type(exc).__name__}: {exc}"
            if failure != last_failure:
                log.warning("model reload of %s failed, still serving %s", failure, predictor.model_versions())
            last_failure = failure
            continue
        last_failure = ""
        predictor.metrics.reloads.inc()
        log.info("serving models %s%s", predictor.model_versions(),
                 " (the demand horizon changed: demand counters restarted)" if reset else "")  # fmt: skip


def _latest_versions(models_dir: Path) -> dict[str, int | None]:
    return {kind: max(versions(models_dir, kind), default=None) for kind in (PURCHASE, DEMAND)}


async def push_warm_lists(predictor: Predictor, session: aiohttp.ClientSession) -> None:
    """Push every POP its warm list ``warm_lead`` before each scheduled on-sale (once per on-sale time)."""
    onsale = predictor.sidecar.facts.frame["onsale_ms"].to_numpy()
    lead_ms = round(predictor.settings.warm_lead * 1000)
    while True:
        now = predictor.now_ms()
        for onsale_ms in due_onsales(onsale, now, lead_ms, predictor.pushed):
            predictor.pushed.add(onsale_ms)
            log.info("on-sale at %s: pushing warm lists to %d POPs", rfc3339(onsale_ms), len(predictor.settings.pops))
            try:
                async with asyncio.TaskGroup() as group:
                    for target in predictor.settings.pop_targets():
                        group.create_task(push_one(predictor, session, target))
            except Exception:  # a bug in one push must not stop the next on-sale's
                log.exception("warm pushes for the on-sale at %s crashed", rfc3339(onsale_ms))
        due = next_push_at(onsale, predictor.now_ms(), lead_ms)
        wait = MAX_PUSH_SLEEP if due is None else (due - predictor.now_ms()) / 1000
        await asyncio.sleep(min(MAX_PUSH_SLEEP, max(wait, 0.0)))


async def push_one(predictor: Predictor, session: aiohttp.ClientSession, target: PopTarget) -> str:
    """POST the POP's warm list to its ``/_edge/warm``; retried on network errors and 5xx. Returns the outcome."""
    settings = predictor.settings
    now = predictor.now_ms()
    urls = await predictor.timed(
        "warm", predictor.sidecar.warm, target.region, now, round(settings.warm_lookahead * 1000)
    )
    if not urls:
        predictor.metrics.pushes.inc(target.pop_id, "empty")
        return "empty"
    body = {"urls": _warm_document(target.pop_id, target.region, now, urls)["urls"]}
    headers = {"Authorization": f"Bearer {settings.warm_token}"}
    timeout = aiohttp.ClientTimeout(total=settings.warm_push_timeout)
    problem = ""
    for attempt in range(settings.warm_push_attempts):
        if attempt:
            await asyncio.sleep(PUSH_BACKOFF * 2 ** (attempt - 1))
        try:
            async with session.post(
                f"{target.url}/_edge/warm", json=body, headers=headers, timeout=timeout
            ) as response:
                text = (await response.content.read(4096)).decode("utf-8", "replace")
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
            log.warning("warm push to %s (attempt %d) failed: %s", target.pop_id, attempt + 1, problem)
            continue
        if status == 200:
            log.info("warm push to %s: %d URLs, POP answered %s", target.pop_id, len(urls), text)
            predictor.metrics.pushes.inc(target.pop_id, "ok")
            return "ok"
        problem = f"HTTP {status}: {text[:200]}"
        if status < 500:  # our request is wrong (token, body): retrying cannot help
            log.error("warm push to %s refused: %s", target.pop_id, problem)
            predictor.metrics.pushes.inc(target.pop_id, "refused")
            return "refused"
        log.warning("warm push to %s (attempt %d) failed: %s", target.pop_id, attempt + 1, problem)
    log.error("warm push to %s gave up after %d attempts: %s", target.pop_id, settings.warm_push_attempts, problem)
    predictor.metrics.pushes.inc(target.pop_id, "failed")
    return "failed"


# Middleware and helpers ------------------------------------------------------------


@web.middleware
async def _errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    predictor = request.app[PREDICTOR]
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    try:
        response = await handler(request)
    except ApiError as exc:
        response = _error(exc.status, exc.code, exc.message)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
        if isinstance(exc, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
    except Exception:
        log.exception("%s %s crashed", request.method, request.path)
        response = _error(500, "internal_error", "the predictor failed to answer; see its log")
    predictor.metrics.requests.inc(route, str(response.status))
    return response


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"error": {"status": status, "code": code, "message": message}}, status=status, cache_control=NO_STORE)


def _json(doc: Any, *, status: int = 200, cache_control: str = NO_STORE) -> web.Response:
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    return web.Response(body=body, status=status, content_type=JSON_TYPE, headers={"Cache-Control": cache_control})


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()  # HTTPRequestEntityTooLarge past client_max_size
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # deep nesting is garbage too; UnicodeDecodeError is a ValueError
        raise ApiError(400, "bad_request", f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    return doc


def _user_id(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    if not is_valid_user_id(user_id):
        raise ApiError(400, "bad_user_id", "user ids are 1-128 letters, digits and ._:@~- (edge.usertoken)")
    return user_id


def rfc3339(ms: int) -> str:
    """POSIX milliseconds in the hint contract's time format (edge.hints.format_rfc3339: UTC, whole seconds)."""
    return format_rfc3339(ms / 1000)
