"""A tiny generated workload with real models trained on it, built at most once per test process.

The predictor's serving tests and the headless-browser test both need what
`boxoffice predictor generate` and `train` write: a workload directory
(event plan, consenting profiles, purchase history) and a models directory.
Generating and training take seconds, so :func:`trained_workload` keeps what
it built in a per-process cache keyed by everything that decides the output
(the workload config, the catalog and the boosting rounds); a second caller
with the same inputs gets the same directories back. A plain function rather
than a fixture, so that test folders share it without importing each other's
conftest (which pytest would load twice, under two module names).

The cache is the one piece of module-level state in the test support: its
values are immutable and it only grows, so the order in which tests ask
cannot change what they get. The test suite runs in one process (no
xdist), so no file lock is needed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from origin.catalog import Catalog, build_catalog
from predictor.features import PRESALE_ACTIONS, REQUEST_ACTIONS
from predictor.modelcli import train
from predictor.settings import PredictorSettings
from predictor.traces import write_workload
from predictor.workload import Workload, WorkloadConfig, generate

BOOST_ROUNDS: Final = 60  # enough for a useful model of 3,000 users; ~5 s for both models on a laptop


@dataclass(frozen=True, slots=True)
class CatalogSpec:
    """How a workload's catalog is built (origin.catalog.build_catalog's arguments besides ``start``)."""

    seed: int
    venues: int
    events: int

    def build(self, start: datetime) -> Catalog:
        return build_catalog(self.seed, venues=self.venues, events=self.events, start=start)

    def summary(self) -> dict[str, int]:
        """The ``catalog`` member of the workload's summary.json (what `predictor serve` rebuilds it from)."""
        return {"seed": self.seed, "venues": self.venues, "events": self.events}


# The tiny workload of the predictor's tests: two days, 3,000 users, over a 300-event catalog.
SERVE_WORKLOAD: Final = WorkloadConfig(seed=3, days=2, users=3000, sessions_per_day=4000)
SERVE_CATALOG: Final = CatalogSpec(seed=2026, venues=30, events=300)


@dataclass(frozen=True)
class TrainedWorkload:
    workload: Workload
    catalog: Catalog  # the catalog the workload ran over, as the origin would load it
    workload_dir: Path
    models_dir: Path


_BUILT: dict[tuple[WorkloadConfig, CatalogSpec, int], TrainedWorkload] = {}


def trained_workload(
    root: Path,
    config: WorkloadConfig = SERVE_WORKLOAD,
    catalog: CatalogSpec = SERVE_CATALOG,
    boost_rounds: int = BOOST_ROUNDS,
) -> TrainedWorkload:
    """Generate the workload of `config` over `catalog`, write it and train both models on it; cached.

    Args:
        root: a directory that outlives the caller's tests (a session temp dir); the files go in a
            subdirectory named after the inputs. Ignored when the same inputs were built before.
        config: the workload; its ``start`` is also the catalog's start.
        catalog: the catalog the workload runs over.
        boost_rounds: the models' boosting rounds (``predictor.boost_rounds``).

    Raises:
        PredictorError: the workload is too small to train on.
        OSError: `root` cannot be written.
    """
    key = (config, catalog, boost_rounds)
    built = _BUILT.get(key)
    if built is not None:
        return built
    directory = root / f"trained-{_digest(config, catalog, boost_rounds)}"
    the_catalog = catalog.build(config.start)
    workload = generate(config, the_catalog)
    write_workload(workload, directory / "workload", catalog.summary())
    settings = dataclasses.replace(
        PredictorSettings(),
        workload_dir=directory / "workload",
        models_dir=directory / "models",
        boost_rounds=boost_rounds,
    )
    train(settings)
    built = TrainedWorkload(workload, the_catalog, directory / "workload", directory / "models")
    _BUILT[key] = built
    return built


def window_around(now: datetime, config: WorkloadConfig = SERVE_WORKLOAD) -> WorkloadConfig:
    """`config` moved so that `now` falls on its last day: start at midnight UTC, ``days - 1`` days before.

    A predictor serving on the real clock (as a POP and a browser need: hint lists expire by it)
    then sees the workload's on-sales and its users' purchases around now, as it would in production.
    """
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return dataclasses.replace(config, start=midnight - timedelta(days=config.days - 1))


def _digest(config: WorkloadConfig, catalog: CatalogSpec, boost_rounds: int) -> str:
    inputs: dict[str, Any] = {
        "config": dataclasses.asdict(config),
        "catalog": catalog.summary(),
        "boost_rounds": boost_rounds,
    }
    return hashlib.sha256(json.dumps(inputs, default=str, sort_keys=True).encode()).hexdigest()[:12]


def log_events(workload: Workload, before_ms: int) -> list[dict[str, Any]]:
    """The workload's activity before `before_ms`, oldest first, as ``POST /v1/events`` bodies' events.

    Requests inside sessions and presale registrations and invitations (what the features count), each
    with the region whose POP served it; ids are the log's row numbers, so a replay retried is deduplicated.
    """
    log = workload.event_log
    ts = _epoch_ms(log["ts"])
    keep = (ts < before_ms) & (
        ((log["session_id"] >= 0) & log["action"].isin(REQUEST_ACTIONS)) | log["action"].isin(PRESALE_ACTIONS)
    ).to_numpy()
    rows = log.loc[keep]
    return [
        {
            "id": f"log-{index}",
            "ts": int(when),
            "user_id": user,
            "action": action,
            "event_id": None if pd.isna(event) else str(event),
            "session_id": int(session),
            "region": region,
        }
        for index, when, user, action, event, session, region in zip(
            rows.index, ts[keep], rows["user_id"].astype(str), rows["action"].astype(str),
            rows["event_id"].astype(object), rows["session_id"], rows["user_region"].astype(str), strict=True,
        )
    ]  # fmt: skip


def engaged_humans(trained: TrainedWorkload, before_ms: int, limit: int) -> list[tuple[str, str]]:
    """(user, event) pairs of consenting humans most engaged, before `before_ms`, with an event still to come.

    Ranked by holds, then requests, then the latest request: the users the purchase model scores
    highest (heavy, recent interest in one event; see the feature medians of tests/predictor).
    """
    log = trained.workload.event_log
    ts = _epoch_ms(log["ts"])
    users = trained.workload.users.set_index("user_id")
    starts = {event.id: int(event.starts_at.timestamp() * 1000) for event in trained.catalog.events}
    before = (ts < before_ms) & (log["session_id"] >= 0).to_numpy() & log["event_id"].notna().to_numpy()
    rows = log.loc[before]
    user_ids = rows["user_id"].astype(str)
    event_ids = rows["event_id"].astype(str)
    wanted = (
        users["consent"].reindex(user_ids).to_numpy(dtype=np.bool_)
        & ~users["is_bot"].reindex(user_ids).to_numpy(dtype=np.bool_)
        & (event_ids.map(starts).to_numpy(dtype=np.float64) > before_ms)
    )
    chosen = pd.DataFrame(
        {
            "user": user_ids.to_numpy()[wanted],
            "event": event_ids.to_numpy()[wanted],
            "hold": (rows["action"].astype(str) == "hold").to_numpy()[wanted],
            "ts": ts[before][wanted],
        }
    )
    ranked = (
        chosen.groupby(["user", "event"], sort=True)
        .agg(holds=("hold", "sum"), requests=("hold", "size"), last=("ts", "max"))
        .sort_values(["holds", "requests", "last"], ascending=False, kind="stable")
    )
    return [(str(user), str(event)) for user, event in ranked.index[:limit]]


def _epoch_ms(column: Any) -> Any:
    return pd.to_datetime(column, utc=True).astype("datetime64[ms, UTC]").astype(np.int64).to_numpy()
