"""Review tests of the shard map service, the shard manager, its forecast reader and its backends.

Each test pins a bug found in review: input from a peer (an HTTP client, the
predictor, the origin, kubectl) that crashed instead of being refused, and
round steps that acted when an earlier step had failed. Servers are real, on
loopback; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from origin.backends import BackendError, KubernetesBackend, LocalProcessBackend, ShardSpec
from origin.forecast import read_forecast
from origin.manager import ShardManager
from origin.metadata import ShardMapService, add_shardmap_routes
from origin.placement import InvalidForecast, PlacementConfig
from origin.placement_state import STATE_FILE

TOKEN = "review-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MINUTE = 60.0
DEADLINE = 30.0  # seconds; bounds every wait (never a figure we measure)
CONFIG = PlacementConfig(
    create_threshold=50.0,
    retire_threshold=20.0,
    cool_down=timedelta(minutes=10),
    min_shard_lifetime=timedelta(minutes=30),
    max_events_per_shard=10,
    secondary_region={"eu-west": "eu-central", "eu-central": "eu-west"},
)

MakeServer = Callable[..., Awaitable[TestServer]]
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]


class Clock:
    def __init__(self) -> None:
        self.now = 1_790_000_000.0

    def __call__(self) -> float:
        return self.now


class Shards:
    """A Backend whose shards are in-process aiohttp servers that always pass their health check."""

    name = "in-process"

    def __init__(self) -> None:
        self.servers: dict[str, tuple[web.AppRunner, str]] = {}
        self.started: list[str] = []
        self.stopped: list[str] = []

    async def start(self, shard: ShardSpec) -> str:
        if shard.shard_id in self.servers:
            return self.servers[shard.shard_id][1]

        async def health(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        app = web.Application()
        app.router.add_get("/v1/health", health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.SockSite(runner, _loopback_socket())
        await site.start()
        url = site.name
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


def _loopback_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def write_forecast(path: Path, rows: Mapping[tuple[str, str], Any]) -> None:
    forecast = [{"region": r, "event_id": e, "requests_per_s": rate} for (r, e), rate in rows.items()]
    path.write_text(json.dumps({"generated_at": "2026-11-01T12:00:00Z", "horizon_s": 900, "forecast": forecast}))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def shards() -> AsyncIterator[Shards]:
    backend = Shards()
    try:
        yield backend
    finally:
        await backend.close()


def shardmap_app(path: Path) -> web.Application:
    app = web.Application()
    add_shardmap_routes(app, ShardMapService(path, "http://origin", TOKEN, Clock()))
    return app


def manager_for(tmp_path: Path, origin_url: str, backend: Any, session: aiohttp.ClientSession) -> ShardManager:
    return ShardManager(
        forecast_source=str(tmp_path / "forecast.json"),
        origin_url=origin_url,
        token=TOKEN,
        state_path=tmp_path / "manager" / STATE_FILE,
        backend=backend,
        session=session,
        config=CONFIG,
        clock=Clock(),
    )


# The shard map service: a PUT from anyone gets a 4xx, never a 500 ---------------------------


async def test_a_non_utf8_authorization_header_is_401_not_500(tmp_path: Path, aiohttp_server: MakeServer) -> None:
    server = await aiohttp_server(shardmap_app(tmp_path / "shardmap.json"))
    reader, writer = await asyncio.wait_for(asyncio.open_connection(server.host, server.port), DEADLINE)
    try:
        writer.write(
            b"PUT /v1/shardmap HTTP/1.1\r\nHost: origin\r\nAuthorization: Bearer \xff\xfe\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), DEADLINE)
    finally:
        writer.close()
        await writer.wait_closed()
    assert status_line.split()[1] == b"401", status_line


def route_doc(route: list[Any], url: str = "http://127.0.0.1:8110") -> dict[str, Any]:
    return {
        "shards": {"eu-west-1": {"region": "eu-west", "url": url, "events": ["evt-1"], "healthy": True}},
        "events": {"evt-1": {"eu-west": route}},
    }


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(route_doc([["eu-west-1"], "origin"])),  # an unhashable shard id in a route
        json.dumps(route_doc([{"id": 1}, "origin"])),
        json.dumps(route_doc(["eu-west-1", "origin"], url="http://[::1")),  # urlsplit: Invalid IPv6 URL
        json.dumps(route_doc(["eu-west-1", "origin"], url="http://shard\n.example")),  # a newline in a URL
        json.dumps(route_doc(["eu-west-1", "origin"], url="http://127.0.0.1:99999")),  # no such port
        '{"shards": {}, "events": {}, "origin": {"url": "http://[bad"}}',
        '{"shards": {}, "events": {}, "version": ' + "9" * 5000 + "}",  # int() refuses > 4300 digits
        "[" * 100_000 + "]" * 100_000,  # nesting deeper than the recursion limit
    ],
    ids=[
        "list-in-route",
        "object-in-route",
        "bad-ipv6-url",
        "newline-in-url",
        "bad-port",
        "bad-origin-url",
        "huge-int",
        "deep",
    ],
)
async def test_a_malformed_put_is_400_not_500(tmp_path: Path, aiohttp_client: MakeClient, body: str) -> None:
    client = await aiohttp_client(shardmap_app(tmp_path / "shardmap.json"))
    response = await client.put("/v1/shardmap", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status == 400, await response.text()
    assert (await response.json())["error"]["code"] == "invalid_shardmap"
    assert (await (await client.get("/v1/shardmap")).json())["version"] == 0


# The forecast: read whole, and numbers that do not fit a float are invalid -------------------


async def test_a_large_forecast_over_http_is_read_whole(aiohttp_server: MakeServer) -> None:
    rows = [{"region": "eu-west", "event_id": f"evt-{n}", "requests_per_s": 1.5} for n in range(40_000)]
    body = json.dumps({"generated_at": "2026-11-01T12:00:00Z", "horizon_s": 900, "forecast": rows}).encode()
    assert len(body) > 1024 * 1024

    async def forecast(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        for start in range(0, len(body), 16 * 1024):  # many writes: the client sees many chunks
            await response.write(body[start : start + 16 * 1024])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v1/forecast", forecast)
    predictor = await aiohttp_server(app)
    async with aiohttp.ClientSession() as client:
        demand = await read_forecast(str(predictor.make_url("/v1/forecast")), client, DEADLINE)
    assert len(demand["eu-west"]) == 40_000


@pytest.mark.parametrize("number", ["9" * 400, "9" * 5000], ids=["beyond-float", "beyond-int-digits"])
async def test_a_number_too_large_for_a_float_is_an_invalid_forecast(
    tmp_path: Path, session: aiohttp.ClientSession, number: str
) -> None:
    path = tmp_path / "forecast.json"
    path.write_text(
        '{"generated_at": "2026-11-01T12:00:00Z", "horizon_s": 900, "forecast": '
        '[{"region": "eu-west", "event_id": "evt-1", "requests_per_s": ' + number + "}]}"
    )
    with pytest.raises(InvalidForecast):
        await read_forecast(str(path), session, DEADLINE)
    path.write_text('{"generated_at": "2026-11-01T12:00:00Z", "horizon_s": ' + number + ', "forecast": []}')
    with pytest.raises(InvalidForecast):
        await read_forecast(str(path), session, DEADLINE)


# The manager's round ------------------------------------------------------------------------


@pytest.mark.parametrize("answer", [b"[1]", b"7", b'{"version": "seven"}', b'{"version": null}'])
async def test_an_origin_answering_garbage_to_the_publish_is_a_round_error(
    tmp_path: Path, aiohttp_server: MakeServer, session: aiohttp.ClientSession, shards: Shards, answer: bytes
) -> None:
    async def put(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=answer, content_type="application/json")

    app = web.Application()
    app.router.add_put("/v1/shardmap", put)
    origin = await aiohttp_server(app)
    manager = manager_for(tmp_path, str(origin.make_url("")), shards, session)
    write_forecast(tmp_path / "forecast.json", {("eu-west", "evt-1"): 120})
    report = await manager.run_round()
    assert report.published_version is None
    assert any(error.startswith("publish:") for error in report.errors)
    assert manager.metrics.publishes.value("failed") == 1


async def test_an_event_id_the_shard_map_refuses_is_an_invalid_forecast(
    tmp_path: Path, aiohttp_server: MakeServer, session: aiohttp.ClientSession, shards: Shards
) -> None:
    origin = await aiohttp_server(shardmap_app(tmp_path / "origin" / "shardmap.json"))
    manager = manager_for(tmp_path, str(origin.make_url("")), shards, session)
    write_forecast(tmp_path / "forecast.json", {("eu-west", "evt-1"): 120})
    assert (await manager.run_round()).published_version == 1
    # A control character in one id: the origin would refuse every map naming it, so publishing
    # would stop for good; the forecast is refused instead and the last placement stays published.
    write_forecast(tmp_path / "forecast.json", {("eu-west", "evt-1"): 120, ("eu-west", "evt\n2"): 120})
    report = await manager.run_round()
    assert not report.planned and "event_id" in report.errors[0]
    assert report.published_version == 1 and len(report.errors) == 1


async def test_a_retired_shard_keeps_running_until_a_map_without_it_is_published(
    tmp_path: Path, aiohttp_server: MakeServer, session: aiohttp.ClientSession, shards: Shards
) -> None:
    map_file = tmp_path / "origin" / "shardmap.json"
    origin = await aiohttp_server(shardmap_app(map_file))
    port = origin.port
    manager = manager_for(tmp_path, str(origin.make_url("")), shards, session)
    clock = manager.clock
    assert isinstance(clock, Clock)
    forecast = tmp_path / "forecast.json"
    write_forecast(forecast, {("eu-west", "evt-1"): 120})
    assert (await manager.run_round()).created == ("eu-west-1",)
    write_forecast(forecast, {})
    clock.now += MINUTE
    await manager.run_round()
    clock.now += 10 * MINUTE
    assert (await manager.run_round()).changed == ("eu-west-1",)  # emptied, kept for its lifetime

    await origin.close()  # the origin is down when the shard is retired
    clock.now += 30 * MINUTE
    report = await manager.run_round()
    assert report.retired == ("eu-west-1",) and report.published_version is None
    # The origin still serves a map routing to eu-west-1 (POPs follow it): the shard must keep answering.
    assert shards.stopped == [] and "eu-west-1" in shards.servers

    origin = await aiohttp_server(shardmap_app(map_file), port=port)
    report = await manager.run_round()
    assert report.published_version is not None and not report.errors
    assert shards.stopped == ["eu-west-1"]
    async with session.get(origin.make_url("/v1/shardmap")) as response:
        assert (await response.json())["shards"] == {}


async def test_a_placement_that_cannot_be_saved_is_not_acted_on_nor_kept(
    tmp_path: Path, aiohttp_server: MakeServer, session: aiohttp.ClientSession, shards: Shards
) -> None:
    origin = await aiohttp_server(shardmap_app(tmp_path / "origin" / "shardmap.json"))
    manager = manager_for(tmp_path, str(origin.make_url("")), shards, session)
    good_path = manager.state_path
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    manager.state_path = blocker / STATE_FILE
    write_forecast(tmp_path / "forecast.json", {("eu-west", "evt-1"): 120})
    with pytest.raises(OSError, match="not-a-directory"):
        await manager.run_round()
    assert manager.placement.shards == () and shards.started == []

    manager.state_path = good_path
    report = await manager.run_round()
    assert report.created == ("eu-west-1",) and report.restarted == ()
    assert manager.metrics.decisions.value("created") == 1


# Backends -----------------------------------------------------------------------------------


async def test_a_local_shard_whose_directory_cannot_be_made_is_a_backend_error(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    blocker = tmp_path / "shards"
    blocker.write_text("")
    backend = LocalProcessBackend(
        session=session, data_dir=blocker, upstream="http://127.0.0.1:9", shardmap_url="http://127.0.0.1:9/v1/shardmap",
        flags=frozenset(), start_timeout=5.0,
    )  # fmt: skip
    try:
        with pytest.raises(BackendError, match="eu-west-1"):
            await backend.start(ShardSpec("eu-west-1", "eu-west"))
        assert await backend.running() == {}
    finally:
        await backend.close()


LISTING_KUBECTL = textwrap.dedent(
    """\
    #!/bin/sh
    # `kubectl get` lists one of ours and one deployment whose instance label cannot name a shard.
    printf '%s' '{"items": [
      {"metadata": {"labels": {"app.kubernetes.io/instance": "eu-west-1"}}},
      {"metadata": {"labels": {"app.kubernetes.io/instance": "Hand_Made"}}}]}'
    """
)


async def test_a_foreign_deployment_does_not_hide_the_shards_that_run(tmp_path: Path) -> None:
    fake = tmp_path / "kubectl"
    fake.write_text(LISTING_KUBECTL)
    fake.chmod(0o755)
    backend = KubernetesBackend(namespace="boxoffice", image="boxoffice:test", upstream="http://origin:8100",
                                shardmap_url="http://origin:8100/v1/shardmap", kubectl=str(fake))  # fmt: skip
    assert await backend.running() == {"eu-west-1": backend.url("eu-west-1")}


SLOW_KUBECTL = textwrap.dedent(
    """\
    #!PYTHON
    import os, pathlib, sys, time
    pathlib.Path(sys.argv[0]).with_name("kubectl.pid").write_text(str(os.getpid()))
    time.sleep(120)
    """
)


async def test_a_cancelled_kubectl_call_leaves_no_kubectl_running(tmp_path: Path) -> None:
    fake = tmp_path / "kubectl"
    fake.write_text(SLOW_KUBECTL.replace("PYTHON", sys.executable))
    fake.chmod(0o755)
    backend = KubernetesBackend(namespace="boxoffice", image="boxoffice:test", upstream="http://origin:8100",
                                shardmap_url="http://origin:8100/v1/shardmap", kubectl=str(fake))  # fmt: skip
    listing = asyncio.create_task(backend.running())
    pid_file = tmp_path / "kubectl.pid"
    for _ in range(int(DEADLINE / 0.05)):
        if pid_file.exists() and pid_file.read_text():
            break
        await asyncio.sleep(0.05)
    pid = int(pid_file.read_text())
    listing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await listing
    try:
        assert "zombie" in _proc_state(pid)  # gone, or at most not yet reaped by init
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def test_a_shard_that_has_not_loaded_its_placed_events_does_not_pass() -> None:
    from datetime import UTC, datetime

    from origin.manager import _not_loaded
    from origin.placement import ShardPlacement

    placed = ShardPlacement("eu-west-1", "eu-west", datetime(2026, 1, 1, tzinfo=UTC), frozenset({"evt-000001"}))
    assert _not_loaded({"status": "ok", "events": []}, placed) == ["evt-000001"]
    assert _not_loaded({"status": "ok", "events": ["evt-000001", "evt-000002"]}, placed) == []
    assert _not_loaded({"status": "ok"}, placed) == []  # a shard that does not list events is not judged on them
