"""`boxoffice pop deploy` and `retire` against real processes on loopback.

A real `python -m geodns serve` answers DNS for ``boxoffice.test`` with no
POPs of its own (its pool takes every POP registered at runtime). One small
stdlib HTTP server in this process stands in for the two peers a POP has that
are not started here: its upstream (it serves `/v1/health` and cacheable items,
and counts requests) and the predictor's `GET /v1/warm/{pop}` (the predictor
service is built separately; this speaks its contract). The deploy command
itself runs as a process, as an operator runs it, and starts a real `edge
serve` process. Clients are the real ones: `dig` with EDNS Client Subnet for
DNS, urllib for HTTP.

Every wait polls a condition with a bounded deadline and then asserts it; no
test asserts on elapsed time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from ops.pop import PopError, Step, process_alive, run_steps
from tests.geodns.dnsclient import DIG_PACKAGE, dig, require_tool
from tests.geodns.geodb import PLACE_BY_CITY, build_city_database
from tests.support.servers import free_loopback_port, log_tail

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 30.0  # a fresh interpreter importing aiohttp, dnslib and maxminddb on a busy machine
COMMAND_TIMEOUT = 120.0  # one whole deploy or retire, every step's own bound included
CONVERGE_TIMEOUT = 10.0
POLL_INTERVAL = 0.05
HTTP_TIMEOUT = 5.0
ADMIN_TOKEN = "pop-deploy-admin-token"
ZONE = "boxoffice.test"
WWW = f"www.{ZONE}"
LONDON = PLACE_BY_CITY["London"]
LONDON_CLIENT = "192.0.2.0/25"  # tests/geodns/geodb.py: a London network
WARM_URLS = ["/v1/items/itm-warm-1", "/v1/items/itm-warm-2"]

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str, *, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with _NO_PROXY.open(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def poll(probe: Callable[[], Any], until: Callable[[Any], bool], within: float = CONVERGE_TIMEOUT) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = probe()
        if until(result) or time.monotonic() >= deadline:
            return result
        time.sleep(POLL_INTERVAL)


# ---------------------------------------------------------------- upstream and predictor stand-in


class Peer:
    """The POP's upstream and the predictor's warm-list endpoint, on one loopback port."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.warm_lists: dict[str, Any] = {}
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                peer.counts[self.path] += 1
                if self.path == "/v1/health":
                    self._send(200, {"status": "ok"})
                elif self.path.startswith("/v1/warm/"):
                    pop_id = self.path.rsplit("/", 1)[1]
                    if pop_id in peer.warm_lists:
                        self._send(200, peer.warm_lists[pop_id])
                    else:
                        self._send(404, {"error": {"status": 404, "code": "not_found", "message": "no such POP"}})
                elif self.path.startswith("/v1/items/"):
                    self._send(200, {"id": self.path.rsplit("/", 1)[1]}, cache_control="public, max-age=600")
                else:
                    self._send(404, {"error": {"status": 404, "code": "not_found", "message": self.path}})

            def _send(self, status: int, document: Any, cache_control: str = "no-store") -> None:
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", cache_control)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="pop-peer", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(HTTP_TIMEOUT)


# ---------------------------------------------------------------- GeoDNS


@dataclass
class GeoDNS:
    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log_path: Path

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def pops(self) -> dict[str, Any]:
        status, _, body = get(f"{self.admin}/v1/pops")
        assert status == 200, body
        return {pop["id"]: pop for pop in json.loads(body)["pops"]}

    def steered(self, subnet: str) -> list[str]:
        return dig(self.port, WWW, "A", f"+subnet={subnet}").addresses


def free_dns_port() -> int:
    """A loopback port free for both UDP and TCP a moment ago."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise AssertionError("no port free for both UDP and TCP")


def clean_environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BOXOFFICE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="module")
def geodns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GeoDNS]:
    require_tool("dig", DIG_PACKAGE)
    workdir = tmp_path_factory.mktemp("pop-geodns")
    database = build_city_database(workdir / "city.mmdb")
    port, admin_port = free_dns_port(), free_loopback_port()
    config = workdir / "geodns.toml"
    config.write_text(
        "\n".join(
            [
                "[geodns]",
                f'host = "127.0.0.1"\nport = {port}\nadmin_host = "127.0.0.1"\nadmin_port = {admin_port}',
                f'admin_token = "{ADMIN_TOKEN}"\ngeo_database = "{database}"',
                'health_interval = "200ms"\nhealth_timeout = "150ms"\nhealth_rise = 1\nhealth_fall = 2',
                "answer_count = 2\ngeo_ttl = 1",
                f'[zones."{ZONE}"]',
                'ttl = 300\nns = ["ns1"]\ngeo = { www = "edge" }',
                'soa = { mname = "ns1", rname = "hostmaster", serial = 1, refresh = 3600, retry = 600, '
                "expire = 86400, minimum = 60 }",
                'records = [ { name = "ns1", type = "A", value = "127.0.0.1" } ]',
                "[pools.edge]",  # no `pops`: every POP registered at runtime
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    log_path = workdir / "geodns.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "geodns", "serve", "--config", str(config)], cwd=REPO_ROOT,
                                   env=clean_environment(), stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    server = GeoDNS(process, port, admin_port, log_path)
    try:
        status = poll(lambda: _admin_status(server), lambda s: s == 200 or process.poll() is not None, STARTUP_TIMEOUT)
        assert status == 200, f"geodns did not start:\n{log_tail(log_path)}"
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(CONVERGE_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(CONVERGE_TIMEOUT)


def _admin_status(server: GeoDNS) -> int | None:
    with contextlib.suppress(OSError):
        return get(f"{server.admin}/v1/health")[0]
    return None


@pytest.fixture
def peer() -> Iterator[Peer]:
    server = Peer()
    try:
        yield server
    finally:
        server.close()


# ---------------------------------------------------------------- the command


@dataclass
class Pop:
    name: str
    address: str
    port: int
    run_dir: Path

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def state_file(self) -> Path:
        return self.run_dir / self.name / "pop.json"


_NEXT_ADDRESS = iter(range(61, 250))


@pytest.fixture
def pop(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Pop]:
    """A fresh POP name and a free 127.0.0.x:port; any edge process left behind is killed at teardown."""
    address = f"127.0.0.{next(_NEXT_ADDRESS)}"
    with socket.socket() as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
    spec = Pop(f"test-{request.node.name[5:25].replace('_', '-')}", address, port, tmp_path / "pops")
    try:
        yield spec
    finally:
        for pid in _pids_in(spec):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _pids_in(spec: Pop) -> list[int]:
    with contextlib.suppress(OSError, ValueError, KeyError):
        pid = json.loads(spec.state_file.read_text())["pid"]
        return [pid] if isinstance(pid, int) else []
    return []


def boxoffice_pop(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops.pop", *args], cwd=REPO_ROOT, env=clean_environment(),
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)  # fmt: skip


def deploy(
    spec: Pop, geodns: GeoDNS, upstream: str, *extra: str, token: str = ADMIN_TOKEN
) -> subprocess.CompletedProcess[str]:
    return boxoffice_pop(
        "deploy", "--name", spec.name, "--region", "eu-west", "--address", spec.address, "--port", str(spec.port),
        "--lat", str(LONDON.lat), "--lon", str(LONDON.lon), "--upstream", upstream, "--geodns-admin", geodns.admin,
        "--token", token, "--run-dir", str(spec.run_dir), "--health-timeout", "20s", *extra,
    )  # fmt: skip


def started_pid(output: str) -> int:
    match = re.search(r"ok: pid (\d+)", output)
    assert match, output
    return int(match.group(1))


def gone(pid: int) -> bool:
    return bool(poll(lambda: not process_alive(pid), bool))


# ---------------------------------------------------------------- tests


def test_deploy_puts_a_warm_pop_in_dns_and_retire_takes_it_out(geodns: GeoDNS, peer: Peer, pop: Pop) -> None:
    peer.warm_lists[pop.name] = {"urls": [{"url": WARM_URLS[0], "priority": 0.9}, WARM_URLS[1]]}
    result = deploy(pop, geodns, peer.url, "--predictor", peer.url)
    assert result.returncode == 0, result.stdout + result.stderr
    for number in range(1, 6):
        assert f"[{number}/5]" in result.stdout
    assert "2 URLs: warmed 2" in result.stdout
    pid = started_pid(result.stdout)
    assert process_alive(pid)

    registered = geodns.pops()[pop.name]
    assert registered["healthy"] is True
    assert registered["addresses"] == [pop.address]
    assert registered["health_url"] == f"{pop.url}/_edge/health"
    # A London client is steered to the POP just deployed in London (the only POP in the zone).
    assert geodns.steered(LONDON_CLIENT)[:1] == [pop.address]
    # Warmed: the first client read is a hit, and the upstream saw only the warm fetch.
    status, headers, _ = get(pop.url + WARM_URLS[0])
    assert status == 200
    assert headers.get("X-Cache") == "HIT"
    assert peer.counts[WARM_URLS[0]] == 1

    listing = boxoffice_pop("list", "--run-dir", str(pop.run_dir))
    assert re.search(rf"{pop.name}\s+eu-west\s+{re.escape(pop.address)}:{pop.port}\s+pid {pid} running\s+ok",
                     listing.stdout), listing.stdout  # fmt: skip

    # A retire that cannot deregister stops nothing: the POP is still in DNS.
    refused = boxoffice_pop("retire", "--name", pop.name, "--token", "not-the-token", "--run-dir", str(pop.run_dir),
                            "--dns-ttl", "0")  # fmt: skip
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "FAILED: GeoDNS refused (401)" in refused.stdout
    assert "[2/4]" not in refused.stdout
    assert process_alive(pid)
    assert pop.name in geodns.pops()

    result = boxoffice_pop("retire", "--name", pop.name, "--token", ADMIN_TOKEN, "--run-dir", str(pop.run_dir),
                           "--dns-ttl", "1s", "--drain-timeout", "10s")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DELETE" in result.stdout and "→ 204" in result.stdout
    assert f"pid {pid} exited after SIGTERM" in result.stdout
    assert pop.name not in geodns.pops()
    assert pop.address not in geodns.steered(LONDON_CLIENT)
    assert gone(pid)
    assert not pop.state_file.exists()


def test_a_refused_token_rolls_back_and_leaves_no_process(geodns: GeoDNS, peer: Peer, pop: Pop) -> None:
    result = deploy(pop, geodns, peer.url, token="not-the-token")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "skipped: no --predictor given" in result.stdout
    assert "FAILED: GeoDNS refused the registration (401)" in result.stdout
    assert "rolling back:" in result.stdout
    assert "was not deployed (rolled back)" in result.stderr
    pid = started_pid(result.stdout)
    assert gone(pid)
    assert pop.name not in geodns.pops()
    assert not pop.state_file.exists()
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind; TIME_WAIT is no owner
        probe.bind((pop.address, pop.port))  # the port is free again


def test_a_predictor_that_does_not_answer_fails_the_deploy(geodns: GeoDNS, peer: Peer, pop: Pop) -> None:
    result = deploy(pop, geodns, peer.url, "--predictor", f"http://127.0.0.1:{free_loopback_port()}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"\[2/5\] warm from .*\n\s+FAILED: no answer from GET", result.stdout), result.stdout
    assert "[3/5]" not in result.stdout
    assert gone(started_pid(result.stdout))
    assert pop.name not in geodns.pops()


def test_a_malformed_warm_list_fails_the_deploy(geodns: GeoDNS, peer: Peer, pop: Pop) -> None:
    peer.warm_lists[pop.name] = {"urls": ["http://elsewhere.example/v1/items/x"]}
    result = deploy(pop, geodns, peer.url, "--predictor", peer.url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "urls[0] is not a path starting with /" in result.stdout
    assert gone(started_pid(result.stdout))


def test_rollback_of_an_attached_pop_does_not_stop_it(geodns: GeoDNS, peer: Peer, pop: Pop) -> None:
    with (pop.run_dir.parent / "own-edge.log").open("wb") as log:
        edge = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "edge", "serve", "--pop", pop.name, "--host", pop.address,
             "--port", str(pop.port), "--upstream", peer.url, "--no-follow-feed"],
            cwd=REPO_ROOT, env=clean_environment(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        answering = poll(lambda: _status(pop.url + "/_edge/health"), lambda s: s == 200, STARTUP_TIMEOUT)
        assert answering == 200
        result = deploy(pop, geodns, peer.url, "--attach", token="not-the-token")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "attach to the POP already running" in result.stdout
        assert "rolling back:" not in result.stdout  # attaching has nothing to undo
        assert edge.poll() is None
        assert _status(pop.url + "/_edge/health") == 200
    finally:
        edge.send_signal(signal.SIGTERM)
        try:
            edge.wait(CONVERGE_TIMEOUT)
        except subprocess.TimeoutExpired:
            edge.kill()
            edge.wait(CONVERGE_TIMEOUT)


def _status(url: str) -> int | None:
    with contextlib.suppress(OSError):
        return get(url)[0]
    return None


def test_retire_of_an_unknown_pop_names_the_run_directory(tmp_path: Path) -> None:
    result = boxoffice_pop("retire", "--name", "nowhere", "--run-dir", str(tmp_path))
    assert result.returncode == 2
    assert f"no POP nowhere in {tmp_path}" in result.stderr


def test_bad_arguments_are_named() -> None:
    result = boxoffice_pop("deploy", "--name", "eu", "--region", "eu-west", "--address", "127.0.0.300",
                           "--lat", "1", "--lon", "2", "--upstream", "http://127.0.0.1:1",
                           "--geodns-admin", "http://127.0.0.1:2")  # fmt: skip
    assert result.returncode == 2
    assert "--address: '127.0.0.300' is not an IP address" in result.stderr


# ---------------------------------------------------------------- the step runner (no processes)


def test_a_failed_step_undoes_the_finished_ones_in_reverse() -> None:
    log: list[str] = []

    def fail() -> str:
        raise PopError("boom")

    steps = [
        Step("one", lambda: log.append("one") or "1", lambda: log.append("undo one") or "undone 1"),
        Step("two", lambda: log.append("two") or "2"),  # nothing to undo
        Step("three", lambda: log.append("three") or "3", lambda: log.append("undo three") or "undone 3"),
        Step("four", fail, lambda: log.append("undo four") or "never"),
        Step("five", lambda: log.append("five") or "5"),
    ]
    out = StringIO()
    assert run_steps(steps, out, rollback=True) is False
    assert log == ["one", "two", "three", "undo three", "undo one"]
    assert (
        "[4/5] four\n      FAILED: boom\nrolling back:\n  undo three: undone 3\n  undo one: undone 1\n"
        in out.getvalue()
    )


def test_a_failed_undo_is_reported_and_the_rest_still_run() -> None:
    log: list[str] = []

    def broken_undo() -> str:
        raise PopError("cannot")

    def fail() -> str:
        raise PopError("boom")

    steps = [
        Step("one", lambda: "1", lambda: log.append("undo one") or "undone"),
        Step("two", lambda: "2", broken_undo),
        Step("three", fail),
    ]
    out = StringIO()
    assert run_steps(steps, out, rollback=True) is False
    assert log == ["undo one"]
    assert "undo two: FAILED: cannot" in out.getvalue()


def test_without_rollback_nothing_is_undone() -> None:
    undone: list[str] = []

    def fail() -> str:
        raise PopError("boom")

    steps = [Step("one", lambda: "1", lambda: undone.append("one") or ""), Step("two", fail)]
    assert run_steps(steps, StringIO(), rollback=False) is False
    assert undone == []
