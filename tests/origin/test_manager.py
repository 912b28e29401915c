"""The shard manager's rounds, against a real shard map service on loopback.

Most tests run shards as tiny in-process HTTP servers (a Backend whose shards
answer /v1/health with a status the test sets), so a round takes milliseconds
and health can be failed on purpose; the last tests run real `origin serve`
children through LocalProcessBackend.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from origin.backends import LocalProcessBackend, ShardSpec
from origin.forecast import parse_forecast
from origin.manager import HealthTracker, ShardManager, create_manager_app
from origin.manager_cli import main as manager_main
from origin.metadata import ShardMapService, add_shardmap_routes
from origin.placement import InvalidForecast, PlacementConfig
from origin.placement_state import STATE_FILE, StateError, load_placement

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 30.0  # seconds; bounds every wait (a loaded CI box is slow, never this slow)
TOKEN = "manager-token"
MINUTE = 60.0
EU = {"eu-west": "eu-central", "eu-central": "eu-west"}
CONFIG = PlacementConfig(
    create_threshold=50.0,
    retire_threshold=20.0,
    cool_down=timedelta(minutes=10),
    min_shard_lifetime=timedelta(minutes=30),
    max_events_per_shard=10,
    secondary_region=EU,
)

Server = TestServer
MakeServer = Callable[[web.Application], Awaitable[Server]]
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]


class Clock:
    def __init__(self) -> None:
        self.now = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class HttpShards:
    """A Backend whose shards are small aiohttp servers answering /v1/health with `status[shard_id]`."""

    name = "in-process"

    def __init__(self) -> None:
        self.status: dict[str, int] = {}
        self.servers: dict[str, tuple[web.AppRunner, str]] = {}
        self.started: list[str] = []
        self.stopped: list[str] = []

    async def start(self, shard: ShardSpec) -> str:
        if shard.shard_id in self.servers:
            return self.servers[shard.shard_id][1]
        self.status.setdefault(shard.shard_id, 200)

        async def health(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"}, status=self.status[shard.shard_id])

        app = web.Application()
        app.router.add_get("/v1/health", health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        self.servers[shard.shard_id] = (runner, url)
        self.started.append(shard.shard_id)
        return url

    async def stop(self, shard_id: str) -> None:
        entry = self.servers.pop(shard_id, None)
        if entry is not None:
            await entry[0].cleanup()
            self.stopped.append(shard_id)

    async def running(self) -> Mapping[str, str]:
        return {shard_id: url for shard_id, (_runner, url) in self.servers.items()}

    def url(self, shard_id: str) -> str | None:
        entry = self.servers.get(shard_id)
        return None if entry is None else entry[1]

    async def close(self) -> None:
        for shard_id in list(self.servers):
            await self.stop(shard_id)


def process_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def write_forecast(path: Path, rows: Mapping[tuple[str, str], float]) -> None:
    doc = {
        "generated_at": "2026-11-01T12:00:00Z",
        "horizon_s": 900,
        "forecast": [
            {"region": region, "event_id": event_id, "requests_per_s": rate}
            for (region, event_id), rate in rows.items()
        ],
    }
    path.write_text(json.dumps(doc))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def origin(tmp_path: Path, aiohttp_server: MakeServer) -> Server:
    """The metadata routes as the origin serves them."""
    app = web.Application()
    add_shardmap_routes(app, ShardMapService(tmp_path / "origin" / "shardmap.json", "http://origin", TOKEN, Clock()))
    return await aiohttp_server(app)


@pytest.fixture
async def shards() -> AsyncIterator[HttpShards]:
    backend = HttpShards()
    try:
        yield backend
    finally:
        await backend.close()


class Setup:
    def __init__(self, tmp_path: Path, origin: Server, session: aiohttp.ClientSession, backend: Any) -> None:
        self.forecast = tmp_path / "forecast.json"
        self.state_dir = tmp_path / "manager"
        self.origin_url = str(origin.make_url("/")).rstrip("/")
        self.session = session
        self.backend = backend
        self.clock = Clock()

    def manager(self, backend: Any = None, config: PlacementConfig = CONFIG) -> ShardManager:
        return ShardManager(
            forecast_source=str(self.forecast),
            origin_url=self.origin_url,
            token=TOKEN,
            state_path=self.state_dir / STATE_FILE,
            backend=backend or self.backend,
            session=self.session,
            config=config,
            unhealthy_after=3,
            healthy_after=2,
            http_timeout=5.0,
            clock=self.clock,
        )

    async def shard_map(self) -> dict[str, Any]:
        async with self.session.get(self.origin_url + "/v1/shardmap") as response:
            doc: dict[str, Any] = await response.json()
            return doc


@pytest.fixture
def setup(tmp_path: Path, origin: Server, session: aiohttp.ClientSession, shards: HttpShards) -> Setup:
    return Setup(tmp_path, origin, session, shards)


async def test_create_publish_then_retire_after_cool_down(setup: Setup, shards: HttpShards) -> None:
    manager = setup.manager()
    write_forecast(setup.forecast, {("eu-west", "evt-1"): 120, ("eu-west", "evt-2"): 60, ("eu-central", "evt-9"): 5})
    report = await manager.run_round()
    assert report.planned and report.created == ("eu-west-1",) and not report.errors
    assert report.published_version == 1
    shard_map = await setup.shard_map()
    assert shard_map["version"] == 1
    assert shard_map["shards"]["eu-west-1"]["events"] == ["evt-1", "evt-2"]
    assert shard_map["shards"]["eu-west-1"]["url"] == shards.url("eu-west-1")
    assert shard_map["events"]["evt-1"] == {"eu-central": ["eu-west-1", "origin"], "eu-west": ["eu-west-1", "origin"]}
    assert "evt-9" not in shard_map["events"]  # below the create threshold: the origin answers

    # evt-2 goes quiet: kept through the cool-down, dropped after it; the shard stays for evt-1.
    write_forecast(setup.forecast, {("eu-west", "evt-1"): 120, ("eu-west", "evt-2"): 5})
    setup.clock.advance(MINUTE)
    report = await manager.run_round()
    assert report.changed == () and report.published_version == 1
    setup.clock.advance(10 * MINUTE)
    report = await manager.run_round()
    assert report.changed == ("eu-west-1",) and report.published_version == 2
    assert (await setup.shard_map())["shards"]["eu-west-1"]["events"] == ["evt-1"]

    # Everything quiet: dropped after the cool-down, the empty shard retired after its lifetime.
    write_forecast(setup.forecast, {})
    setup.clock.advance(MINUTE)
    await manager.run_round()
    setup.clock.advance(10 * MINUTE)
    report = await manager.run_round()
    assert report.changed == ("eu-west-1",) and report.retired == ()
    assert shards.stopped == []
    setup.clock.advance(30 * MINUTE)
    report = await manager.run_round()
    assert report.retired == ("eu-west-1",) and shards.stopped == ["eu-west-1"]
    final = await setup.shard_map()
    assert final["shards"] == {} and final["events"] == {}
    assert load_placement(setup.state_dir / STATE_FILE).shards == ()
    assert shards.started == ["eu-west-1"]  # never re-created


async def test_a_failing_shard_moves_its_region_to_the_secondary_and_back(setup: Setup, shards: HttpShards) -> None:
    manager = setup.manager()
    write_forecast(setup.forecast, {("eu-west", "evt-1"): 200, ("eu-central", "evt-1"): 200})
    await manager.run_round()
    routes = (await setup.shard_map())["events"]["evt-1"]
    # One counter names every region's shards, so eu-west's first shard is eu-west-2.
    assert routes == {
        "eu-central": ["eu-central-1", "eu-west-2", "origin"],
        "eu-west": ["eu-west-2", "eu-central-1", "origin"],
    }

    shards.status["eu-west-2"] = 503
    for _ in range(2):  # two failures: below the threshold, nothing moves
        report = await manager.run_round()
        assert report.unhealthy == frozenset() and report.published_version == 1
    report = await manager.run_round()
    assert report.unhealthy == {"eu-west-2"} and report.published_version == 2
    shard_map = await setup.shard_map()
    assert shard_map["events"]["evt-1"] == {
        "eu-central": ["eu-central-1", "origin"],
        "eu-west": ["eu-central-1", "origin"],
    }
    assert shard_map["shards"]["eu-west-2"]["healthy"] is False
    assert manager.metrics.transitions.value("unhealthy") == 1

    shards.status["eu-west-2"] = 200
    assert (await manager.run_round()).unhealthy == {"eu-west-2"}  # one pass is not enough
    report = await manager.run_round()
    assert report.unhealthy == frozenset() and report.published_version == 3
    assert (await setup.shard_map())["events"]["evt-1"] == routes
    assert sorted(shards.started) == ["eu-central-1", "eu-west-2"]


async def test_no_flapping_around_the_thresholds(setup: Setup, shards: HttpShards) -> None:
    manager = setup.manager()
    # Between the thresholds after creation, and around the retire threshold within the cool-down.
    rates = [120, 45, 55, 45, 15, 25, 15, 25, 15, 25]
    versions = set()
    for rate in rates:
        write_forecast(setup.forecast, {("eu-west", "evt-1"): rate})
        report = await manager.run_round()
        versions.add(report.published_version)
        setup.clock.advance(5 * MINUTE)
    assert versions == {1}
    assert shards.started == ["eu-west-1"] and shards.stopped == []
    # Health that fails now and then, never three times in a row, never turns a shard unhealthy.
    for status in [503, 200, 503, 503, 200, 503]:
        shards.status["eu-west-1"] = status
        write_forecast(setup.forecast, {("eu-west", "evt-1"): 120})
        assert (await manager.run_round()).unhealthy == frozenset()
    assert manager.metrics.transitions.value("unhealthy") == 0


async def test_a_restarted_manager_keeps_its_shards(setup: Setup, shards: HttpShards) -> None:
    write_forecast(setup.forecast, {("eu-west", "evt-1"): 120})
    await setup.manager().run_round()
    assert shards.started == ["eu-west-1"]

    # Same backend (shards outlive the manager, as in Kubernetes): nothing is started again.
    report = await setup.manager().run_round()
    assert report.created == () and report.restarted == () and shards.started == ["eu-west-1"]

    # A new backend that runs nothing (local shards die with their manager): same ids, restarted.
    fresh = HttpShards()
    try:
        report = await setup.manager(backend=fresh).run_round()
        assert report.created == () and report.restarted == ("eu-west-1",) and fresh.started == ["eu-west-1"]
        assert (await setup.shard_map())["shards"]["eu-west-1"]["url"] == fresh.url("eu-west-1")
        # A stray shard the placement does not know is stopped.
        await fresh.start(ShardSpec("eu-central-7", "eu-central"))
        await setup.manager(backend=fresh).run_round()
        assert fresh.stopped == ["eu-central-7"]
    finally:
        await fresh.close()


async def test_an_unreadable_forecast_changes_no_placement(setup: Setup, shards: HttpShards) -> None:
    manager = setup.manager()
    write_forecast(setup.forecast, {("eu-west", "evt-1"): 120})
    await manager.run_round()
    setup.forecast.write_text('{"generated_at": "2026-11-01T12:00:00Z", "horizon_s": 900, "forecast": [{}]}')
    setup.clock.advance(60 * MINUTE)
    report = await manager.run_round()
    assert not report.planned and "forecast[0].region" in report.errors[0]
    assert report.published_version == 1 and shards.stopped == []
    setup.forecast.unlink()
    report = await manager.run_round()
    assert not report.planned and "cannot read forecast file" in report.errors[0]
    assert [shard.shard_id for shard in manager.placement.shards] == ["eu-west-1"]


async def test_the_forecast_can_come_from_the_predictor(
    setup: Setup, shards: HttpShards, aiohttp_server: MakeServer
) -> None:
    async def forecast(request: web.Request) -> web.Response:
        doc = {"generated_at": "2026-11-01T12:00:00+00:00", "horizon_s": 600,
               "forecast": [{"region": "eu-central", "event_id": "evt-5", "requests_per_s": 75}]}  # fmt: skip
        return web.json_response(doc)

    app = web.Application()
    app.router.add_get("/v1/forecast", forecast)
    predictor = await aiohttp_server(app)
    manager = setup.manager()
    manager.forecast_source = str(predictor.make_url("/v1/forecast"))
    report = await manager.run_round()
    assert report.created == ("eu-central-1",)
    manager.forecast_source = str(predictor.make_url("/v1/nothing"))
    report = await manager.run_round()
    assert not report.planned and "answered 404" in report.errors[0]


async def test_a_publish_failure_is_reported_and_retried(setup: Setup, shards: HttpShards) -> None:
    manager = setup.manager()
    write_forecast(setup.forecast, {("eu-west", "evt-1"): 120})
    manager._token = "wrong"
    report = await manager.run_round()
    assert report.published_version is None and "401" in report.errors[0]
    manager._token = TOKEN
    assert (await manager.run_round()).published_version == 1


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ([], "must be a JSON object"),
        ({"horizon_s": 1, "forecast": []}, "generated_at"),
        ({"generated_at": "yesterday", "horizon_s": 1, "forecast": []}, "generated_at"),
        ({"generated_at": "2026-11-01T12:00:00Z", "horizon_s": 0, "forecast": []}, "horizon_s"),
        ({"generated_at": "2026-11-01T12:00:00Z", "horizon_s": 60, "forecast": {}}, "forecast must be a list"),
        (
            {"generated_at": "2026-11-01T12:00:00Z", "horizon_s": 60,
             "forecast": [{"region": "mars", "event_id": "e", "requests_per_s": 1}]},
            "'mars' is not a region",
        ),
        (
            {"generated_at": "2026-11-01T12:00:00Z", "horizon_s": 60,
             "forecast": [{"region": "eu-west", "event_id": "e", "requests_per_s": -1}]},
            "requests_per_s",
        ),
        (
            {"generated_at": "2026-11-01T12:00:00Z", "horizon_s": 60,
             "forecast": [{"region": "eu-west", "event_id": "e", "requests_per_s": 1},
                          {"region": "eu-west", "event_id": "e", "requests_per_s": 2}]},
            "appears twice",
        ),
    ],
)  # fmt: skip
def test_bad_forecasts_are_refused_precisely(doc: Any, needle: str) -> None:
    with pytest.raises(InvalidForecast) as caught:
        parse_forecast(doc)
    assert needle in caught.value.message


def test_a_good_forecast_parses() -> None:
    doc = {"generated_at": "2026-11-01T12:00:00Z", "horizon_s": 60,
           "forecast": [{"region": "eu-west", "event_id": "e1", "requests_per_s": 3},
                        {"region": "na-east", "event_id": "e1", "requests_per_s": 0.5}]}  # fmt: skip
    assert parse_forecast(doc) == {"eu-west": {"e1": 3.0}, "na-east": {"e1": 0.5}}


def test_a_corrupt_state_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    assert load_placement(path).shards == ()
    path.write_text('{"format": 1, "shards": [{"shard_id": "x"}], "next_shard_number": 2}')
    with pytest.raises(StateError, match=r"placement\.json"):
        load_placement(path)
    path.write_text("[")
    with pytest.raises(StateError, match="not JSON"):
        load_placement(path)


def test_health_hysteresis_rules() -> None:
    tracker = HealthTracker(unhealthy_after=3, healthy_after=2)
    assert tracker.record("s", False, "x") is None  # H2
    assert tracker.record("s", True) is None  # H1 resets the count
    assert [tracker.record("s", False, "x") for _ in range(3)] == [None, None, "unhealthy"]  # H2, H2, H3
    assert tracker.record("s", False, "x") is None  # H4
    assert tracker.record("s", True) is None  # H5
    assert tracker.record("s", False, "x") is None  # H4 resets the pass count
    assert [tracker.record("s", True) for _ in range(2)] == [None, "healthy"]  # H5, H6
    assert tracker.unhealthy() == frozenset()
    assert tracker.failed_to_start("t", "boom") is True and tracker.unhealthy() == {"t"}
    tracker.started("n")  # H0: unhealthy until its first pass, however many failures come first
    assert [tracker.record("n", False, "bootstrapping") for _ in range(5)] == [None] * 5
    assert "n" in tracker.unhealthy()
    assert tracker.record("n", True) == "healthy" and "n" not in tracker.unhealthy()
    tracker.forget({"s"})
    assert set(tracker.shards) == {"s"}
    assert tracker.unhealthy() == frozenset() and set(tracker.shards) == {"s"}


async def test_the_manager_serves_its_metrics(setup: Setup, aiohttp_client: MakeClient) -> None:
    manager = setup.manager()
    write_forecast(setup.forecast, {("eu-west", "evt-1"): 120})
    await manager.run_round()
    client = await aiohttp_client(create_manager_app(manager))
    text = await (await client.get("/metrics")).text()
    assert 'manager_decisions_total{decision="created"} 1' in text and "manager_shards 1" in text
    health = await (await client.get("/v1/health")).json()
    assert health["status"] == "ok" and health["shards"] == ["eu-west-1"]


# Real `origin serve` children ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def primary(tmp_path: Path, session: aiohttp.ClientSession) -> AsyncIterator[str]:
    """A real `origin serve` primary with a small demo catalog: what the shards follow."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", "origin", "serve", "--port", str(port), "--seed-demo",
        "--demo-venues", "20", "--demo-events", "40", "--database", f"sqlite:{tmp_path / 'primary.db'}",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(int(DEADLINE / 0.1)):
            try:
                async with session.get(url + "/v1/health") as response:
                    if response.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert process.returncode is None, "the primary exited while starting"
            await asyncio.sleep(0.1)
        yield url
    finally:
        process.terminate()
        await process.wait()


async def test_end_to_end_with_local_processes(
    setup: Setup, session: aiohttp.ClientSession, tmp_path: Path, primary: str
) -> None:
    async with session.get(primary + "/v1/events?region=eu-west&limit=1") as response:
        event_id = (await response.json())["events"][0]["id"]
    backend = LocalProcessBackend(
        session=session, data_dir=tmp_path / "shards", upstream=primary,
        shardmap_url=setup.origin_url + "/v1/shardmap", base_port=free_port(), start_timeout=DEADLINE, stop_grace=5,
        extra_args=["--shardmap-interval", "200ms", "--follow-wait", "200ms"],
    )  # fmt: skip
    quick = PlacementConfig(50.0, 20.0, timedelta(0), timedelta(0), 10, EU)
    try:
        manager = setup.manager(backend=backend, config=quick)
        write_forecast(setup.forecast, {("eu-west", event_id): 120})
        report = await manager.run_round()
        assert report.created == ("eu-west-1",) and not report.errors
        shard_url = (await setup.shard_map())["shards"]["eu-west-1"]["url"]
        # The shard reads its event from the map, bootstraps it from the primary, then passes its check.
        for _ in range(int(DEADLINE / 0.2)):
            if "eu-west-1" not in (await manager.run_round()).unhealthy:
                break
            await asyncio.sleep(0.2)
        assert (await setup.shard_map())["events"][event_id]["eu-west"] == ["eu-west-1", "origin"]
        async with session.get(f"{shard_url}/v1/events/{event_id}") as response:
            assert response.status == 200 and (await response.json())["event"]["id"] == event_id

        pid = backend.pid("eu-west-1")
        assert pid is not None
        await backend.stop("eu-west-1")  # as if it had crashed: the next round starts it again
        report = await manager.run_round()
        restarted_pid = backend.pid("eu-west-1")
        assert report.restarted == ("eu-west-1",) and restarted_pid not in (None, pid)

        write_forecast(setup.forecast, {})
        report = await manager.run_round()  # no cool-down, no minimum lifetime: dropped and retired at once
        assert report.retired == ("eu-west-1",) and not report.errors
        assert (await backend.running()) == {} and (await setup.shard_map())["shards"] == {}
        assert backend.pid("eu-west-1") is None and restarted_pid is not None and not process_exists(restarted_pid)
    finally:
        await backend.close()


def test_manager_cli_prints_its_settings(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = manager_main(["config", "--forecast", str(tmp_path / "f.json"), "--backend", "kubernetes"], prog="m")
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("[manager]") and 'backend = "kubernetes"' in out
    assert manager_main(["config"], prog="m") == 2
    assert "manager.forecast" in capsys.readouterr().err
    assert manager_main(["config", "--forecast", "f", "--backend", "ec2"], prog="m") == 2
