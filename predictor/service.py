"""`boxoffice predictor serve`: load the catalog and the models, then serve the API until SIGTERM.

Startup is synchronous and happens before the port opens: reading the
workload's tables, rebuilding its catalog (for the items of each event: the
warm lists' seat maps), seeding the consenting users' profiles and purchase
history, and loading the latest models. A missing or unreadable model is a
clear error and exit status 1; a bad setting, exit status 2. On SIGINT or
SIGTERM the server stops accepting, drains in-flight requests for
``shutdown_timeout``, stops its background tasks and exits 0.

With ``replay_workload`` the workload's event log up to the current time is
then fed to the sidecar, still before the port opens (so a health check
that passes means the replay is done): in time order, in batches, through
:func:`predictor.ingest.validate_events` and :meth:`Sidecar.ingest` like a
``POST /v1/events`` body, on the scoring executor's thread. Only the age
limit is lifted (the log reaches back a day or more); every other check
holds, and an event the sidecar would refuse stops the start with its
reason. What the replay sends is what a POP could report: the generator's
bot labels and the users' truth stay out, so bots are found by their pace.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
from aiohttp import web

from ops.runtime import configure_logging, run, until_signalled
from ops.settings import SettingsError, add_arguments, load
from origin.catalog import Catalog, build_catalog
from predictor.api import Predictor, create_app, rfc3339
from predictor.errors import PredictorError
from predictor.features import EventFacts
from predictor.ingest import ACTIONS, BatchLimits, validate_events
from predictor.scoring import Scorer
from predictor.serve_settings import ServeSettings
from predictor.sidecar import CatalogData, IngestResult, Sidecar
from predictor.traces import read_summary

log = logging.getLogger("boxoffice.predictor.service")

SECTION = "predictor_serve"
# Events validated and applied per step of the start-up replay: bounds the decoded objects held at
# once (about 1 KiB each) while keeping per-batch overhead negligible.
REPLAY_BATCH: Final = 10_000
EVENT_LOG: Final = "event_log.parquet"
_LOG_COLUMNS: Final = ("ts", "session_id", "user_id", "action", "event_id", "item_id", "user_region")
SERVE_DESCRIPTION = """\
Serve the predictor sidecar's HTTP API: ingest user events (POST /v1/events),
answer per-user hints (GET /v1/hints/{user_id}), POP warm lists (GET
/v1/warm/{pop_id}, also pushed to each --pops POP ahead of on-sales) and the
demand forecast (GET /v1/forecast). Settings come from flags, then
BOXOFFICE_PREDICTOR_SERVE_* environment variables, then the [predictor_serve]
table of the --config file (or $BOXOFFICE_CONFIG), then defaults.
"""


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, ServeSettings)


def run_serve(args: argparse.Namespace, prog: str) -> int:
    """The `serve` command: 0 after a signalled stop, 1 when it cannot start, 2 on a settings error."""
    try:
        settings = load(ServeSettings, SECTION, args=args)
    except SettingsError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        predictor = build(settings)
    except PredictorError as exc:
        print(f"{prog}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    try:
        run(serve(predictor))
    except PredictorError as exc:  # the start-up replay of the workload failed
        print(f"{prog}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:  # the port is taken, or the address is not ours
        print(f"{prog}: cannot listen on {settings.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        predictor.executor.shutdown(wait=True, cancel_futures=True)
    return 0


def build(settings: ServeSettings, clock: Callable[[], float] = time.time) -> Predictor:
    """Load the catalog, the consenting users and the latest models.

    Raises:
        PredictorError: no purchase model in ``models``, or an unreadable workload or model.
        OSError: a file cannot be read.
    """
    began = time.monotonic()
    scorer = Scorer.load(Path(settings.models))
    catalog = load_catalog(settings)
    sidecar = Sidecar(catalog, scorer, settings.hint_threshold, round(settings.hint_lifetime * 1000))
    log.info(
        "loaded purchase model v%d, demand model %s, %d events, %d consenting users in %.1f s",
        scorer.purchase.version,
        "none" if scorer.demand is None else f"v{scorer.demand.version}",
        len(catalog.facts.frame),
        len(sidecar.users),
        time.monotonic() - began,
    )
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predictor-sidecar")
    return Predictor(settings, sidecar, clock, executor)


def load_catalog(settings: ServeSettings) -> CatalogData:
    """The workload's catalog and consenting users, or the demo catalog of the ``catalog_*`` settings.

    Raises:
        PredictorError: the workload directory is incomplete or its catalog cannot be rebuilt.
    """
    if not settings.workload:
        start = _start(settings.catalog_start, "predictor_serve.catalog_start")
        catalog = build_catalog(
            settings.catalog_seed, venues=settings.catalog_venues, events=settings.catalog_events, start=start
        )
        return CatalogData(EventFacts.from_catalog(catalog.events), _items_by_event(catalog))
    directory = Path(settings.workload)
    try:
        summary = read_summary(directory)
    except (OSError, ValueError) as exc:
        raise PredictorError(
            f"no complete workload in {directory} (run `boxoffice predictor generate`): {exc}"
        ) from None
    tables: dict[str, Any] = {}
    for name in ("event_plan", "users", "purchase_history"):
        path = directory / f"{name}.parquet"
        try:
            tables[name] = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise PredictorError(f"cannot read {path}: {exc}") from None
    try:
        info = summary["catalog"]
        # the catalog's own start when `generate --catalog-start` moved it off the window's (older workloads: none)
        where, text = (
            ("catalog.start", info["start"]) if info.get("start") else ("config.start", summary["config"]["start"])
        )
        start = _start(str(text), f"{directory}/summary.json {where}")
        catalog = build_catalog(int(info["seed"]), venues=int(info["venues"]), events=int(info["events"]), start=start)
    except (KeyError, TypeError, ValueError) as exc:
        raise PredictorError(
            f"{directory}/summary.json does not say which catalog the workload ran over: {exc}"
        ) from None
    facts = EventFacts.from_plan(tables["event_plan"])
    items = _items_by_event(catalog)
    missing = facts.frame.index.difference(pd.Index(list(items)))
    if len(missing):
        raise PredictorError(f"the rebuilt catalog lacks event {missing[0]!r} of {directory}'s event plan")
    return CatalogData(facts, items, tables["users"], tables["purchase_history"])


async def serve(predictor: Predictor) -> None:
    """Serve until SIGINT or SIGTERM, then drain in-flight requests for ``shutdown_timeout``."""
    settings = predictor.settings
    runner = web.AppRunner(
        create_app(predictor),
        access_log=log if settings.access_log else None,
        shutdown_timeout=settings.shutdown_timeout,
    )
    if settings.replay_workload:
        await replay(predictor)
    await runner.setup()
    try:
        host, port = settings.bind_address()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
        print(f"boxoffice predictor listening on {base} (models {settings.models})")
        print(f"  try: curl {base}/v1/health; curl {base}/v1/forecast")
        print("  stop with Ctrl-C", flush=True)
        await until_signalled()
        log.info("shutting down: draining requests for up to %.0f s", settings.shutdown_timeout)
    finally:
        await runner.cleanup()


async def replay(predictor: Predictor) -> IngestResult:
    """Feed the workload's event log up to now into the sidecar, on its thread; log and count it.

    Raises:
        PredictorError: the log cannot be read or an event of it is refused.
    """
    settings = predictor.settings
    began = time.monotonic()
    now_ms = predictor.now_ms()
    result = await predictor.call(replay_workload, predictor.sidecar, Path(settings.workload), now_ms, settings)
    predictor.metrics.events.inc(amount=result.accepted)
    predictor.metrics.duplicates.inc(amount=result.duplicates)
    log.info(
        "replayed %d events of %s up to %s (%d duplicates) in %.1f s",
        result.accepted, settings.workload, rfc3339(now_ms), result.duplicates, time.monotonic() - began,
    )  # fmt: skip
    return result


def replay_workload(sidecar: Sidecar, directory: Path, now_ms: int, settings: ServeSettings) -> IngestResult:
    """Apply the workload's logged user activity up to `now_ms` (inclusive), oldest first.

    Runs on the sidecar's thread (it reads parquet and applies events). Each row becomes the event a
    POP reports: the request's region is the user's (their nearest POP's), ids are ``log-{row}``.

    Raises:
        PredictorError: the event log cannot be read, or an event is refused (the message names it).
    """
    path = directory / EVENT_LOG
    try:
        frame = pd.read_parquet(path, columns=list(_LOG_COLUMNS))
    except (OSError, ValueError, KeyError) as exc:
        raise PredictorError(f"cannot read {path}: {exc}") from None
    ts = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[ms, UTC]").astype(np.int64).to_numpy()
    rows = np.flatnonzero((ts <= now_ms) & frame["action"].astype(str).isin(ACTIONS).to_numpy())
    rows = rows[np.argsort(ts[rows], kind="stable")]
    # The age limit is the only one lifted: the log reaches back as far as the workload's window.
    limits = BatchLimits(
        REPLAY_BATCH, now_ms - int(ts[rows].min(initial=now_ms)) + 1, round(settings.max_clock_skew * 1000)
    )
    accepted = duplicates = 0
    for begin in range(0, len(rows), REPLAY_BATCH):
        chunk = rows[begin : begin + REPLAY_BATCH]
        documents = _log_documents(frame.iloc[chunk], ts[chunk], chunk)
        try:
            events = validate_events(documents, limits, sidecar.known_events, now_ms)
        except PredictorError as exc:
            raise PredictorError(f"{path} cannot be replayed: row {begin} of the replay on: {exc.message}") from None
        result = sidecar.ingest(events)
        accepted += result.accepted
        duplicates += result.duplicates
    return IngestResult(accepted, duplicates)


def _log_documents(rows: Any, ts_ms: Any, numbers: Any) -> list[dict[str, Any]]:
    """The ``POST /v1/events`` objects of event-log `rows` (``ts_ms``: their times; ``numbers``: row ids)."""
    return [
        {"id": f"log-{number}", "ts": int(when), "user_id": user, "action": action,
         "event_id": None if pd.isna(event) else str(event), "item_id": None if pd.isna(item) else str(item),
         "session_id": int(session), "region": None if pd.isna(region) else str(region)}
        for number, when, user, action, event, item, session, region in zip(
            numbers.tolist(), ts_ms.tolist(), rows["user_id"].astype(str), rows["action"].astype(str),
            rows["event_id"].astype(object), rows["item_id"].astype(object), rows["session_id"].tolist(),
            rows["user_region"].astype(object), strict=True,
        )
    ]  # fmt: skip


def _items_by_event(catalog: Catalog) -> dict[str, tuple[str, ...]]:
    grouped: dict[str, list[str]] = {event.id: [] for event in catalog.events}
    for item in catalog.items:
        grouped.setdefault(item.event_id, []).append(item.id)
    return {event: tuple(items) for event, items in grouped.items()}


def _start(text: str, key: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise PredictorError(f"{key}: expected an RFC 3339 time like 2026-01-05T00:00:00Z, got {text!r}") from None
    if moment.tzinfo is None:
        raise PredictorError(f"{key}: needs a timezone (end it with Z for UTC)")
    return moment
