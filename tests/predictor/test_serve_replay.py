"""`predictor serve --replay-workload`: the workload's log up to now is applied before the port opens.

The sidecar is built as `serve` builds it, on a clock held inside the shared tiny workload's window,
replayed with :func:`predictor.service.replay`, then served on loopback: an engaged, consenting human
of the workload has hints and the forecast has rows from the first request. `generate`'s demo users
and ``--catalog-start`` are checked on a workload of their own (small, generated in a second or two).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest
from aiohttp.test_utils import TestServer

from ops.settings import Seconds, SettingsError
from origin.catalog import build_catalog
from origin.forecast import parse_forecast
from predictor.api import Predictor, create_app
from predictor.cli import main
from predictor.errors import PredictorError
from predictor.serve_settings import ServeSettings
from predictor.service import build, replay
from predictor.traces import read_summary
from tests.support.trained import TrainedWorkload, engaged_humans

BOUND = 20.0  # seconds; only a broken sidecar waits this long
ENGAGED = 5  # the most engaged humans; the best of them must get hints


def _settings(trained: TrainedWorkload, workload: Path | None = None) -> ServeSettings:
    settings = ServeSettings(
        models=str(trained.models_dir),
        workload=str(workload or trained.workload_dir),
        replay_workload=True,
        reload_interval=Seconds(0),
    )
    settings.validate()
    return settings


def _replay_moment(trained: TrainedWorkload) -> int:
    """Late afternoon of the workload's last day (ms): most of the log lies behind, some ahead."""
    config = trained.workload.config
    return round((config.start + timedelta(days=config.days - 1, hours=17)).timestamp() * 1000)


@pytest.fixture
async def served(trained_workload: TrainedWorkload) -> AsyncIterator[tuple[Predictor, TestServer, int]]:
    now_ms = _replay_moment(trained_workload)
    predictor = await asyncio.to_thread(build, _settings(trained_workload), lambda: now_ms / 1000)
    try:
        await replay(predictor)
        server = TestServer(create_app(predictor, background=False), host="127.0.0.1")
        await server.start_server()
        try:
            yield predictor, server, now_ms
        finally:
            await server.close()
    finally:
        predictor.executor.shutdown(wait=True)


async def _get(server: TestServer, path: str) -> tuple[int, Any]:
    timeout = aiohttp.ClientTimeout(total=BOUND)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(str(server.make_url(path))) as response:
        return response.status, json.loads(await response.read())


async def test_replay_applies_the_log_up_to_now_so_engaged_humans_get_hints(
    trained_workload: TrainedWorkload, served: tuple[Predictor, TestServer, int]
) -> None:
    predictor, server, now_ms = served
    log = trained_workload.workload.event_log
    ts = pd.to_datetime(log["ts"], utc=True).astype("datetime64[ms, UTC]").astype(np.int64).to_numpy()
    assert 0 < int((ts <= now_ms).sum()) < len(log)  # the moment splits the log: the future stays out
    # every logged action up to now but the waiting-room entries (accepted and ignored) is applied once
    assert predictor.sidecar.events_applied == int((ts <= now_ms).sum())
    status, health = await _get(server, "/v1/health")
    assert status == 200 and health["events_applied"] == predictor.sidecar.events_applied
    humans = engaged_humans(trained_workload, now_ms, ENGAGED)
    assert humans, "the workload has no engaged consenting human before the replay moment"
    user, event = humans[0]
    status, document = await _get(server, f"/v1/hints/{user}")
    assert status == 200, document
    urls = [hint["url"] for hint in document["hints"]]
    assert urls, f"no hints for {user}, most engaged with {event}"


async def test_replay_gives_the_forecast_rows_from_the_first_request(
    served: tuple[Predictor, TestServer, int],
) -> None:
    _, server, _ = served
    status, document = await _get(server, "/v1/forecast")
    assert status == 200, document
    assert parse_forecast(document), document  # parses as the shard manager reads it, with entries


async def test_replay_counts_a_retried_log_as_duplicates(served: tuple[Predictor, TestServer, int]) -> None:
    predictor, _, _ = served
    applied = predictor.sidecar.events_applied
    again = await replay(predictor)
    assert (again.accepted, again.duplicates) == (0, applied)
    assert predictor.sidecar.events_applied == applied


async def test_a_log_event_the_sidecar_refuses_stops_the_replay_with_its_row(
    trained_workload: TrainedWorkload, tmp_path: Path
) -> None:
    workload = tmp_path / "workload"
    shutil.copytree(trained_workload.workload_dir, workload)
    log = pd.read_parquet(workload / "event_log.parquet")
    log["user_id"] = log["user_id"].astype(str)
    log.loc[0, "user_id"] = "not a user id"  # spaces are not in edge.usertoken's alphabet
    log.to_parquet(workload / "event_log.parquet", index=False)
    now_ms = _replay_moment(trained_workload)
    predictor = await asyncio.to_thread(build, _settings(trained_workload, workload), lambda: now_ms / 1000)
    try:
        with pytest.raises(PredictorError, match=r"event_log\.parquet cannot be replayed: .*user_id"):
            await replay(predictor)
    finally:
        predictor.executor.shutdown(wait=True)


def test_replay_needs_a_workload() -> None:
    with pytest.raises(SettingsError, match=r"predictor_serve\.replay_workload"):
        ServeSettings(models="m", replay_workload=True).validate()


def test_generate_names_demo_users_and_keeps_the_origins_catalog_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    first_day = start - timedelta(days=3)  # the origin seeded its catalog three days before the window
    out = tmp_path / "workload"
    code = main([
        "generate", "--out", str(out), "--workload-seed", "5", "--workload-start", start.isoformat(),
        "--workload-days", "2", "--workload-users", "600", "--sessions-per-day", "900", "--catalog-seed", "2026",
        "--catalog-venues", "30", "--catalog-events", "300", "--catalog-start", first_day.isoformat(),
        "--log-level", "warning",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    summary = read_summary(out)
    assert summary["catalog"]["start"] == first_day.isoformat().replace("+00:00", "Z")
    assert printed["demo_users"] == summary["demo_users"] and 1 <= len(summary["demo_users"]) <= 5
    users = pd.read_parquet(out / "users.parquet").set_index("user_id")
    for user in summary["demo_users"]:
        assert bool(users.loc[user, "consent"]) and not bool(users.loc[user, "is_bot"]), user
    plan = pd.read_parquet(out / "event_plan.parquet").set_index("event_id")
    origin = build_catalog(2026, venues=30, events=300, start=first_day)
    assert all(plan.loc[event.id, "starts_at"] == pd.Timestamp(event.starts_at) for event in origin.events[:20])


def test_generate_refuses_a_catalog_start_without_a_zone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "--out", str(tmp_path / "w"), "--catalog-start", "2026-03-01T00:00:00"])
    assert code == 2
    assert "--catalog-start" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
