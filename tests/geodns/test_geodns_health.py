"""Health hysteresis (scripted), health bodies, and the checker against real loopback servers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from geodns.health import (
    HEALTH_PATH,
    MAX_HEALTH_BODY_BYTES,
    HealthChecker,
    HealthTracker,
    health_url,
    parse_health_body,
)
from geodns.model import Pop, PopHealth

MakeServer = Callable[[web.Application], Awaitable[TestServer]]

# Generous bounds for waits on loopback events; they only fail a broken test.
EVENT_WAIT = 10.0
# Short enough that the slow-handler test finishes quickly, long enough that a
# loopback 200 never trips it.
SHORT_TIMEOUT = 0.3

# ---------------------------------------------------------------- hysteresis table


def run_tracker(tracker: HealthTracker, results: str) -> tuple[str, str]:
    """Feed 'o'/'x' (ok/fail) results; return the verdicts ('H'/'u') and change marks ('!'/'.')."""
    verdicts, changes = [], []
    for result in results:
        health, changed = tracker.record("pop", result == "o", None)
        verdicts.append("H" if health.healthy else "u")
        changes.append("!" if changed else ".")
    return "".join(verdicts), "".join(changes)


@pytest.mark.parametrize(
    ("rise", "fall", "initially_healthy", "results", "verdicts", "changes"),
    [
        # Starts unhealthy; needs `rise` successes in a row.
        (2, 2, False, "oo", "uH", ".!"),
        (3, 2, False, "ooo", "uuH", "..!"),
        (1, 1, False, "oxo", "HuH", "!!!"),
        # Alternating results never flip either way with rise = fall = 2.
        (2, 2, False, "oxoxoxox", "uuuuuuuu", "........"),
        (2, 2, True, "xoxoxoxo", "HHHHHHHH", "........"),
        (2, 2, False, "ooxoxoxo", "uHHHHHHH", ".!......"),
        # A failure resets the success streak; a success resets the failure streak.
        (3, 2, False, "ooxooo", "uuuuuH", ".....!"),
        (2, 3, True, "xxoxxx", "HHHHHu", ".....!"),
        # Down after `fall` failures in a row, back after `rise` successes.
        (2, 2, False, "ooxxoo", "uHHuuH", ".!.!.!"),
        (2, 2, True, "xx", "Hu", ".!"),
        # Extra results in a state keep it without reporting a change.
        (2, 2, False, "ooooxxxx", "uHHHHuuu", ".!...!.."),
    ],
)
def test_hysteresis(rise: int, fall: int, initially_healthy: bool, results: str, verdicts: str, changes: str) -> None:
    tracker = HealthTracker(rise=rise, fall=fall, initially_healthy=initially_healthy)
    assert run_tracker(tracker, results) == (verdicts, changes)


def test_load_follows_successes_and_survives_failures() -> None:
    tracker = HealthTracker(rise=1, fall=3)
    assert tracker.record("a", True, 120.0) == (PopHealth(healthy=True, load=120.0), True)
    assert tracker.record("a", False, None) == (PopHealth(healthy=True, load=120.0), False)
    assert tracker.record("a", True, None) == (PopHealth(healthy=True, load=None), False)


def test_state_snapshot_and_forget() -> None:
    tracker = HealthTracker(rise=1, fall=1)
    assert tracker.state("never-seen") == PopHealth(healthy=False)
    assert tracker.snapshot() == {}
    tracker.record("a", True, 5.0)
    tracker.record("b", False, None)
    snapshot = tracker.snapshot()
    assert snapshot == {"a": PopHealth(healthy=True, load=5.0), "b": PopHealth(healthy=False)}
    tracker.forget("a")
    tracker.forget("unknown")
    assert tracker.state("a") == PopHealth(healthy=False)
    assert set(tracker.snapshot()) == {"b"}
    assert set(snapshot) == {"a", "b"}  # earlier snapshots are not views


def test_initially_healthy_applies_to_unseen_pops() -> None:
    assert HealthTracker(initially_healthy=True).state("x") == PopHealth(healthy=True)


@pytest.mark.parametrize(("rise", "fall"), [(0, 2), (2, 0), (-1, -1)])
def test_thresholds_must_be_positive(rise: int, fall: int) -> None:
    with pytest.raises(ValueError, match="rise and fall"):
        HealthTracker(rise=rise, fall=fall)


# ---------------------------------------------------------------- parse_health_body


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b"", (True, None)),
        (200, b"OK", (True, None)),
        (200, b'{"load": 120.5, "capacity": 1000}', (True, 120.5)),
        (200, b'{"load": 7}', (True, 7.0)),
        (200, b'{"load": "high"}', (True, None)),
        (200, b'{"load": true}', (True, None)),
        (200, b'{"load": -1}', (True, None)),
        (200, b'{"load": NaN}', (True, None)),
        (200, b'{"load": Infinity}', (True, None)),
        (200, b"[1, 2]", (True, None)),
        (200, b"\xff\xfe not utf-8", (True, None)),
        (200, b"[" * 100_000, (True, None)),  # deep nesting: RecursionError, not a crash
        (200, None, (True, None)),  # body too large to read
        (204, b"", (False, None)),
        (301, b"", (False, None)),
        (500, b'{"load": 1}', (False, None)),
        (503, b"", (False, None)),
    ],
)
def test_parse_health_body(status: int, body: bytes | None, expected: tuple[bool, float | None]) -> None:
    assert parse_health_body(status, body) == expected


def test_health_url() -> None:
    v4 = Pop("a", (IPv4Address("192.0.2.1"), IPv6Address("2001:db8::1")), 0, 0, 1)
    v6 = Pop("b", (IPv6Address("2001:db8::1"),), 0, 0, 1)
    own = Pop("c", (IPv4Address("192.0.2.1"),), 0, 0, 1, health_url="http://pop-c.test/health")
    assert health_url(v4) == "http://192.0.2.1:8080/_edge/health"
    assert health_url(v6, 9000) == "http://[2001:db8::1]:9000/_edge/health"
    assert health_url(own) == "http://pop-c.test/health"
    assert health_url(Pop("d", (), 0, 0, 1)) is None


# ---------------------------------------------------------------- HealthChecker on loopback


@dataclass
class FakeEdge:
    """A real aiohttp app standing in for an edge POP's health endpoint."""

    status: int = 200
    body: bytes = b'{"load": 50.0, "capacity": 100.0}'
    requests: int = 0
    release_slow: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    max_in_flight: int = 0
    overlap: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(HEALTH_PATH, self.health)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/huge", self.huge)
        app.router.add_get("/redirect", self.redirect)
        app.router.add_get("/concurrent/{n}", self.concurrent)
        return app

    async def health(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(status=self.status, body=self.body, content_type="application/json")

    async def slow(self, request: web.Request) -> web.Response:
        await self.release_slow.wait()  # set by the test, so the server shuts down promptly
        return web.Response(text="too late")

    async def huge(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"load": 1.0, "pad": "' + b"x" * MAX_HEALTH_BODY_BYTES + b'"}')

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(HEALTH_PATH)

    async def concurrent(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.in_flight >= 2:
            self.overlap.set()
        try:
            # Hold the request until a second one overlaps (or give up): proves
            # concurrency without depending on timing.
            await asyncio.wait_for(self.overlap.wait(), EVENT_WAIT)
            await asyncio.sleep(0.01)
        finally:
            self.in_flight -= 1
        return web.Response(text="ok")


@pytest.fixture
async def edge(aiohttp_server: MakeServer) -> AsyncIterator[tuple[FakeEdge, TestServer]]:
    fake = FakeEdge()
    server = await aiohttp_server(fake.app())
    try:
        yield fake, server
    finally:
        fake.release_slow.set()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it) but not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def pop_at(pop_id: str, url: str | None = None, *, drained: bool = False) -> Pop:
    return Pop(pop_id, (IPv4Address("127.0.0.1"),), 0.0, 0.0, 100.0, health_url=url, drained=drained)


def url_of(server: TestServer, path: str) -> str:
    return str(server.make_url(path))


async def test_checker_follows_a_pop_up_and_down_with_hysteresis(edge: tuple[FakeEdge, TestServer]) -> None:
    fake, server = edge
    changes: list[tuple[str, PopHealth]] = []
    checker = HealthChecker(
        lambda: [pop_at("a")],  # no health_url: the default URL on the test server's port
        HealthTracker(rise=2, fall=2),
        port=server.port or 0,
        timeout=EVENT_WAIT,
        on_change=lambda pop_id, health: changes.append((pop_id, health)),
    )
    assert await checker.check_once() == {"a": PopHealth(healthy=False, load=50.0)}
    assert await checker.check_once() == {"a": PopHealth(healthy=True, load=50.0)}
    fake.status = 500
    assert await checker.check_once() == {"a": PopHealth(healthy=True, load=50.0)}
    assert await checker.check_once() == {"a": PopHealth(healthy=False, load=50.0)}
    assert changes == [("a", PopHealth(healthy=True, load=50.0)), ("a", PopHealth(healthy=False, load=50.0))]
    assert fake.requests == 4


async def test_plain_200_counts_as_healthy_without_load(edge: tuple[FakeEdge, TestServer]) -> None:
    fake, server = edge
    fake.body = b"OK"
    checker = HealthChecker(lambda: [pop_at("a", url_of(server, HEALTH_PATH))], HealthTracker(rise=1))
    assert await checker.check_once() == {"a": PopHealth(healthy=True, load=None)}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/slow", PopHealth(healthy=False)),  # ClientTimeout
        ("/nowhere", PopHealth(healthy=False)),  # 404
        ("/redirect", PopHealth(healthy=False)),  # redirects are not followed: 302 is not 200
        ("/huge", PopHealth(healthy=True, load=None)),  # 200 with an oversized body: up, load unknown
    ],
)
async def test_bad_responses(edge: tuple[FakeEdge, TestServer], path: str, expected: PopHealth) -> None:
    _, server = edge
    checker = HealthChecker(
        lambda: [pop_at("a", url_of(server, path))], HealthTracker(rise=1, fall=1), timeout=SHORT_TIMEOUT
    )
    assert await checker.check_once() == {"a": expected}


async def test_unreachable_pops_are_failures_not_exceptions(refused_port: int) -> None:
    tracker = HealthTracker(rise=1, fall=1, initially_healthy=True)
    pops = [
        pop_at("refused", f"http://127.0.0.1:{refused_port}{HEALTH_PATH}"),
        pop_at("bad-url", "not a url"),
        pop_at("bad-scheme", "gopher://127.0.0.1/"),
        Pop("no-address", (), 0.0, 0.0, 1.0),
    ]
    checker = HealthChecker(lambda: pops, tracker, timeout=EVENT_WAIT)
    snapshot = await checker.check_once()
    assert snapshot == {pop.id: PopHealth(healthy=False) for pop in pops}


async def test_drained_pops_are_checked_and_removed_pops_forgotten(edge: tuple[FakeEdge, TestServer]) -> None:
    _, server = edge
    registry = [pop_at("a", url_of(server, HEALTH_PATH), drained=True), pop_at("b", url_of(server, HEALTH_PATH))]
    checker = HealthChecker(lambda: registry, HealthTracker(rise=1))
    assert set(await checker.check_once()) == {"a", "b"}
    assert checker.tracker.state("a").healthy
    registry.pop()
    assert set(await checker.check_once()) == {"a"}


async def test_concurrency_is_bounded(edge: tuple[FakeEdge, TestServer]) -> None:
    fake, server = edge
    pops = [pop_at(f"p{n}", url_of(server, f"/concurrent/{n}")) for n in range(6)]
    checker = HealthChecker(lambda: pops, HealthTracker(rise=1), concurrency=2, timeout=EVENT_WAIT)
    snapshot = await checker.check_once()
    assert all(health.healthy for health in snapshot.values())
    assert fake.max_in_flight == 2


async def test_a_failing_listener_does_not_stop_checking(edge: tuple[FakeEdge, TestServer]) -> None:
    _, server = edge

    def explode(pop_id: str, health: PopHealth) -> None:
        raise RuntimeError("listener bug")

    pops = [pop_at("a", url_of(server, HEALTH_PATH)), pop_at("b", url_of(server, HEALTH_PATH))]
    checker = HealthChecker(lambda: pops, HealthTracker(rise=1), on_change=explode)
    snapshot = await checker.check_once()
    assert snapshot == {"a": PopHealth(healthy=True, load=50.0), "b": PopHealth(healthy=True, load=50.0)}


async def test_run_checks_every_interval_until_cancelled(edge: tuple[FakeEdge, TestServer]) -> None:
    fake, server = edge
    became_healthy = asyncio.Event()
    checker = HealthChecker(
        lambda: [pop_at("a", url_of(server, HEALTH_PATH))],
        HealthTracker(rise=3),
        interval=0.01,
        on_change=lambda pop_id, health: became_healthy.set(),
    )
    task = asyncio.create_task(checker.run())
    try:
        await asyncio.wait_for(became_healthy.wait(), EVENT_WAIT)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert fake.requests >= 3
    assert checker.tracker.state("a").healthy


@pytest.mark.parametrize(
    "kwargs",
    [{"interval": 0}, {"timeout": -1}, {"timeout": float("inf")}, {"concurrency": 0}],
)
def test_checker_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        HealthChecker(list, HealthTracker(), **kwargs)  # type: ignore[arg-type]
