"""Review of `boxoffice up`'s supervisor, its synthetic traffic and `boxoffice status`, on real processes.

Each test drives the real code against real children (small Python programs
on this machine) or real HTTP servers on loopback: a child that ignores
SIGTERM and a second Ctrl-C, POP answers that are not of the API's shape,
health documents with fields of the wrong type, a service that accepts
connections and never answers, and a port that is already taken. Every wait
is a bounded poll; no test asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest
from aiohttp import web

from ops import status
from ops.up import cli as up_cli
from ops.up.plan import Secrets, ServiceSpec, plan_stack
from ops.up.settings import UpSettings
from ops.up.state import write_state
from ops.up.supervisor import RestartPolicy, Supervisor
from ops.up.traffic import Traffic

POLL = 0.05
DEADLINE = 30.0  # a fresh interpreter on a busy two-core host
HOUR = 3600.0  # a stop grace no test may wait out

# Ignores SIGTERM, then says so (a file), then sleeps: what a wedged service looks like to `up`.
STUBBORN = (
    "import pathlib, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "pathlib.Path(sys.argv[1]).write_text('ready')\n"
    "time.sleep(3600)\n"
)


async def poll(condition: Callable[[], bool], what: str) -> None:
    for _ in range(int(DEADLINE / POLL)):
        if condition():
            return
        await asyncio.sleep(POLL)
    raise AssertionError(f"not within {DEADLINE:g} s: {what}")


def spec(name: str, command: tuple[str, ...], url: str = "http://127.0.0.1:9/") -> ServiceSpec:
    return ServiceSpec(name=name, kind="pop", command=command, url=url, health_url=url, address="127.0.0.1", port=9)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rpartition(")")[2].split()[0] == "Z"


# Second Ctrl-C -------------------------------------------------------------------------------------


async def test_a_second_signal_kills_a_child_that_ignores_sigterm_instead_of_waiting_out_the_grace(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    marker = tmp_path / "ignoring-sigterm"
    async with aiohttp.ClientSession() as session:
        supervisor = Supervisor(
            session=session, cwd=tmp_path, log_dir=tmp_path / "logs", policy=RestartPolicy(0, 60.0),
            start_timeout=DEADLINE, stop_grace=HOUR, on_change=lambda: None, say=lines.append,
        )  # fmt: skip
        child = await supervisor.start(spec("stubborn", (sys.executable, "-c", STUBBORN, str(marker))))
        assert child.pid is not None
        pid = child.pid
        try:
            await poll(marker.exists, "the child installed its SIGTERM handler")
            stopping = asyncio.create_task(supervisor.stop_all([["stubborn"]]))
            await poll(lambda: child.state == "stopping", "stop_all sent SIGTERM")
            assert not stopping.done()  # it waits out the (hour-long) grace: the child ignores SIGTERM
            supervisor.hurry()  # the second Ctrl-C
            await asyncio.wait_for(stopping, DEADLINE)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        assert child.process is not None and child.process.returncode == -signal.SIGKILL
        assert child.state == "stopped"
        assert any("second signal" in line for line in lines), lines


def test_up_escalates_on_the_second_signal_only(tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        settings = UpSettings(data_dir=tmp_path, base_port=30_000, predictor=False)
        plan = plan_stack(settings, python=sys.executable, secrets=Secrets("a", "b", "c", "d"), with_predictor=False)
        async with aiohttp.ClientSession() as session:
            stack = up_cli._Stack(settings, plan, session, Secrets("a", "b", "c", "d"), False)
            stop = asyncio.Event()
            stack.on_signal(stop)
            after_first = (stop.is_set(), stack.supervisor.hurried)
            stack.on_signal(stop)
            return after_first[0], after_first[1], stack.supervisor.hurried

    stopped, hurried_after_first, hurried_after_second = asyncio.run(scenario())
    assert stopped and not hurried_after_first
    assert hurried_after_second


# Synthetic traffic against a POP that answers garbage ----------------------------------------------


ANSWERS: dict[str, dict[str, Any]] = {
    "an event without an id": {"events": {"events": [{"id": "evt-1"}, {"name": "no id"}]},
                               "event": {"items": [{"id": "itm-1"}]}},
    "events that are not a list": {"events": {"events": 5}, "event": {"items": [{"id": "itm-1"}]}},
    "items that are not a list": {"events": {"events": [{"id": "evt-1"}]}, "event": {"items": 7}},
    "an item id that is not a string": {"events": {"events": [{"id": "evt-1"}]}, "event": {"items": [{"id": 3}]}},
}  # fmt: skip


@pytest.fixture
async def garbage_pop(request: pytest.FixtureRequest) -> Any:
    answers = ANSWERS[request.param]
    seen: list[str] = []

    async def listing(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response(answers["events"])

    async def event(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response(answers["event"])

    async def hold(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"hold": None}, status=201)

    app = web.Application()
    app.router.add_get("/v1/events", listing)
    app.router.add_get("/v1/events/{event_id}", event)
    app.router.add_get("/v1/items/{item_id}", event)
    app.router.add_post("/v1/holds", hold)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("garbage_pop", sorted(ANSWERS), indirect=True)
async def test_traffic_counts_malformed_pop_answers_as_errors_and_keeps_running(garbage_pop: Any) -> None:
    url, seen = garbage_pop
    async with aiohttp.ClientSession() as session:
        pop = ServiceSpec(name="pop/eu-west", kind="pop", command=(), url=url, health_url=url,
                          address="127.0.0.1", port=0, region="eu-west")  # fmt: skip
        traffic = Traffic(session, [pop], 50.0, random.Random(7))
        running = asyncio.create_task(traffic.run(lambda line: None))
        await poll(lambda: len(seen) >= 20 or running.done(), "20 requests reached the POP")
        assert not running.done(), running.exception()  # a malformed answer must not end the traffic (and `up`)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert traffic.counts.errors > 0


async def test_a_hold_answer_without_a_hold_is_an_error_not_a_crash() -> None:
    app = web.Application()

    async def hold(request: web.Request) -> web.Response:
        return web.json_response({"hold": "held"}, status=201)

    app.router.add_post("/v1/holds", hold)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as session:
            pop = ServiceSpec(name="pop/eu-west", kind="pop", command=(), url=url, health_url=url,
                              address="127.0.0.1", port=0, region="eu-west")  # fmt: skip
            traffic = Traffic(session, [pop], 50.0, random.Random(7))
            await traffic._buy(pop, "itm-1")
    finally:
        await runner.cleanup()
    assert (traffic.counts.holds, traffic.counts.errors) == (0, 1)


# `boxoffice status` against services that misbehave ----------------------------------------------


class _Health(BaseHTTPRequestHandler):
    documents: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        body = json.dumps(self.documents.get(self.path, {"status": "ok"})).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    _Health.documents = {
        "/pop": {"status": "ok", "hit_ratio": "high", "requests": 3, "load": 1.0},
        "/shard": {"status": "ok", "lag": {"seconds": [1], "records": 0}, "events": []},
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def service(name: str, kind: str, health_url: str) -> dict[str, Any]:
    return {"name": name, "kind": kind, "pid": os.getpid(), "url": health_url, "health_url": health_url,
            "state": "running", "restarts": 0, "log": "-"}  # fmt: skip


def test_status_shows_health_fields_of_the_wrong_type_instead_of_crashing(
    tmp_path: Path, health_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_state(tmp_path, {"pid": os.getpid(), "state": "running", "services": [
        service("pop/eu-west", "pop", f"{health_server}/pop"),
        service("shard/eu-west-1", "shard", f"{health_server}/shard"),
    ]})  # fmt: skip
    code = status.main(["--data-dir", str(tmp_path), "--json"])
    rows = {row["SERVICE"]: row for row in json.loads(capsys.readouterr().out)}
    assert code == 0
    assert rows["pop/eu-west"]["HEALTH"] == "up"
    assert rows["pop/eu-west"]["DETAIL"].startswith("hit ratio ?")
    assert rows["shard/eu-west-1"]["DETAIL"].startswith("lag ?")


def test_status_reports_a_service_that_accepts_but_never_answers_as_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as stuck:  # listens (the kernel completes the handshake) and never reads
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(8)
        url = f"http://127.0.0.1:{stuck.getsockname()[1]}/_edge/health"
        write_state(tmp_path, {"pid": os.getpid(), "state": "running", "services": [service("pop/x", "pop", url)]})
        code = status.main(["--data-dir", str(tmp_path), "--json"])
    (row,) = json.loads(capsys.readouterr().out)
    assert code == 1
    assert row["HEALTH"] == "down"


# Ports in use --------------------------------------------------------------------------------------


def test_up_names_a_busy_port_and_its_service_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        base = taken.getsockname()[1]  # the origin's port of --base-port N is N
        if base > 65535 - 20:
            pytest.skip("the kernel picked a port too high to be a base port")
        code = up_cli.main(["--data-dir", str(tmp_path), "--base-port", str(base), "--no-predictor",
                            "--regions", "eu-west"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert f"127.0.0.1:{base}/tcp (origin) is in use" in err
    assert not (tmp_path / "logs").exists()  # nothing was started
    assert not (tmp_path / "stack.json").exists()


# A restarted child that runs but never becomes healthy ---------------------------------------------

# First run: crash at once. Every later run: keep running, never answer a health check.
CRASH_THEN_HANG = (
    "import pathlib, sys, time\n"
    "marker = pathlib.Path(sys.argv[1])\n"
    "if not marker.exists():\n"
    "    marker.write_text('crashed once')\n"
    "    sys.exit(3)\n"
    "time.sleep(3600)\n"
)


async def test_a_restart_that_never_becomes_healthy_counts_as_a_crash_and_is_given_up(tmp_path: Path) -> None:
    lines: list[str] = []
    with socket.socket() as closed:  # a port nothing listens on: every health probe is refused
        closed.bind(("127.0.0.1", 0))
        health = f"http://127.0.0.1:{closed.getsockname()[1]}/v1/health"
    async with aiohttp.ClientSession() as session:
        supervisor = Supervisor(
            session=session, cwd=tmp_path, log_dir=tmp_path / "logs", policy=RestartPolicy(1, HOUR),
            start_timeout=1.0, stop_grace=DEADLINE, on_change=lambda: None, say=lines.append,
        )  # fmt: skip
        child = await supervisor.start(spec("hangs", (sys.executable, "-c", CRASH_THEN_HANG, str(tmp_path / "m")),
                                            url=health))  # fmt: skip
        try:
            await asyncio.wait_for(supervisor.watch(child), DEADLINE)
        finally:
            await supervisor.stop_all([["hangs"]])
        assert child.state == "stopped"  # stop_all ran last; before it, the watcher gave up:
        assert any("left down" in line for line in lines), lines
        assert len(child.pids) == 2
        assert all(gone(pid) for pid in child.pids)


# The origin's event listing, as `up` pages through it before publishing the shard map ---------------


LISTINGS: dict[str, Any] = {
    "no events key": {"items": []},
    "an event without an id": {"events": [{"name": "x"}]},
    "events that are not objects": {"events": ["evt-1"]},
    "the same cursor again": {"events": [{"id": "evt-1"}], "next_after": "evt-1"},
    "a list, not an object": [1, 2],
}


@pytest.mark.parametrize("listing", sorted(LISTINGS))
async def test_a_malformed_event_listing_is_a_clear_start_error(tmp_path: Path, listing: str) -> None:
    async def events(request: web.Request) -> web.Response:
        return web.json_response(LISTINGS[listing])

    app = web.Application()
    app.router.add_get("/v1/events", events)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        settings = UpSettings(data_dir=tmp_path, base_port=runner.addresses[0][1], predictor=False,
                              regions=("eu-west",))  # fmt: skip
        plan = plan_stack(settings, python=sys.executable, secrets=Secrets("a", "b", "c", "d"), with_predictor=False)
        async with aiohttp.ClientSession() as session:
            stack = up_cli._Stack(settings, plan, session, Secrets("a", "b", "c", "d"), False)
            with pytest.raises(up_cli._PublishError, match=r"GET http://127\.0\.0\.1"):
                await asyncio.wait_for(stack.region_events("eu-west"), DEADLINE)
    finally:
        await runner.cleanup()


# A crashed child's workers -------------------------------------------------------------------------

# A main process that forks a worker (same process group, as an edge's --workers), then crashes.
CRASH_LEAVING_A_WORKER = (
    "import os, pathlib, sys, time\n"
    "worker = os.fork()\n"
    "if worker == 0:\n"
    "    time.sleep(3600)\n"
    "    os._exit(0)\n"
    "pathlib.Path(sys.argv[1]).write_text(str(worker))\n"
    "sys.exit(3)\n"
)


async def test_the_workers_of_a_crashed_child_are_killed_when_it_exits(tmp_path: Path) -> None:
    pid_file = tmp_path / "worker.pid"
    lines: list[str] = []
    async with aiohttp.ClientSession() as session:
        supervisor = Supervisor(
            session=session, cwd=tmp_path, log_dir=tmp_path / "logs", policy=RestartPolicy(0, HOUR),
            start_timeout=DEADLINE, stop_grace=DEADLINE, on_change=lambda: None, say=lines.append,
        )  # fmt: skip
        child = await supervisor.start(spec("crashes", (sys.executable, "-c", CRASH_LEAVING_A_WORKER, str(pid_file))))
        worker = 0
        try:
            await asyncio.wait_for(supervisor.watch(child), DEADLINE)  # returns once it gave up on the child
            assert child.state == "failed", lines
            worker = int(pid_file.read_text())
            await poll(lambda: gone(worker), f"worker {worker} of the crashed child was killed")
        finally:
            await supervisor.stop_all([["crashes"]])
            if worker:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker, signal.SIGKILL)
