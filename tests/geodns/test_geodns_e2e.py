"""End to end: a real `python -m geodns serve` process, asked by dig and kdig.

One server process (module scope) is authoritative for ``boxoffice.test`` and
steers ``www`` over four POPs placed at Tokyo, New York, London and Sydney.
Each POP's ``health_url`` is a real aiohttp server in this test process whose
status the tests flip between 200 and 503, so failover is watched the way an
operator would see it: in dig's output and on the admin API. Client locations
come from a small MaxMind DB (tests/geodns/geodb.py); ``+subnet=`` (EDNS Client
Subnet) says where the client is. The resolver address 127.0.0.1 is not in that
DB, so queries without a subnet get the pool's default POPs.

Tests that change the server's settings or its life (SIGHUP reload, response
rate limiting, SIGTERM) start a scratch process of their own.

Every wait polls until a condition holds, with a bounded deadline, and then
asserts the condition; no test asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest
from aiohttp import web

from tests.geodns.dnsclient import (
    DIG_PACKAGE,
    KDIG_PACKAGE,
    LOOPBACK,
    DnsReply,
    RawHeader,
    dig,
    header,
    kdig,
    question,
    read_header,
    require_tool,
    udp_exchange,
    udp_socket,
)
from tests.geodns.geodb import PLACE_BY_CITY, build_city_database
from tests.support.servers import free_loopback_port, log_tail

SECOND = 1.0
REPO_ROOT = Path(__file__).resolve().parents[2]

# Importing aiohttp, dnslib and maxminddb and opening the DB takes about a
# second; a loaded CI machine is slower.
STARTUP_TIMEOUT = 30 * SECOND
# Health is checked every 200 ms and acted on after two results in a row, so
# any health-driven change shows within about half a second; 5 s is ample.
CONVERGE_TIMEOUT = 5 * SECOND
STOP_TIMEOUT = 10 * SECOND
POLL_INTERVAL = 0.05 * SECOND
ADMIN_TIMEOUT = 5 * SECOND
# After a burst, the rate-limit test stops reading once nothing arrives for this long.
BURST_QUIET = 1 * SECOND
PORT_RACE_ATTEMPTS = 3

ZONE = "boxoffice.test"
WWW = f"www.{ZONE}"
ADMIN_TOKEN = "e2e-admin-token"
NSID = "geodns-e2e-1"
ANSWER_COUNT = 2
STATIC_TTL = 300
NEGATIVE_TTL = 60  # the SOA minimum, below the zone TTL (RFC 2308 section 3)

# Longer than 512 bytes in total, so it cannot go out over UDP without EDNS.
BIG_TXT = [letter * 200 for letter in "abc"]


@dataclass(frozen=True, slots=True)
class PopSite:
    ipv4: str
    ipv6: str
    lat: float
    lon: float


def _site(city: str, ipv4: str, ipv6: str) -> PopSite:
    # Each POP sits on the database's city, so "the client in X is nearest POP X".
    place = PLACE_BY_CITY[city]
    assert place.lat is not None and place.lon is not None
    return PopSite(ipv4, ipv6, place.lat, place.lon)


POPS: dict[str, PopSite] = {
    "tokyo": _site("Tokyo", "127.0.0.11", "fd00::11"),
    "new-york": _site("New York", "127.0.0.12", "fd00::12"),
    "london": _site("London", "127.0.0.13", "fd00::13"),
    "sydney": _site("Sydney", "127.0.0.14", "fd00::14"),
}
# Queries without a location get these, in this order.
DEFAULT_POOL = ["new-york", "sydney"]
# Added at runtime through the admin API.
JOHANNESBURG = _site("Johannesburg", "127.0.0.15", "fd00::15")

# Client networks of tests/geodns/geodb.py.
TOKYO_CLIENT = "203.0.113.0/24"
NEW_YORK_CLIENT = "198.51.100.0/24"
LONDON_CLIENT = "192.0.2.0/25"
SYDNEY_CLIENT = "2001:db8:1::/56"
FRANKFURT_CLIENT = "100.66.0.0/24"  # the database network is a /20
JOHANNESBURG_CLIENT = "100.64.0.0/24"  # the database network is a /16


def v4(*pop_ids: str) -> list[str]:
    return [POPS[pop_id].ipv4 for pop_id in pop_ids]


# ---------------------------------------------------------------- health endpoints


class PopHealthEndpoint:
    """One POP's health URL: answers `status` with `{"load": load}` when a load is set."""

    def __init__(self) -> None:
        self.status = 200
        self.load: float | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/_edge/health"

    async def handle(self, request: web.Request) -> web.Response:
        body = {} if self.load is None else {"load": self.load}
        return web.json_response(body, status=self.status)


class HealthEndpoints:
    """Real aiohttp servers, one per POP, on an event loop in a thread of their own.

    The tests themselves are synchronous (they run dig and wait on processes),
    so the endpoints live on a loop the tests never block. Flipping `status`
    or `load` is a plain attribute write the handler reads on the next check.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pop-health", daemon=True)
        self._runners: list[web.AppRunner] = []
        self.pops: dict[str, PopHealthEndpoint] = {}
        self._thread.start()

    def add(self, pop_id: str) -> PopHealthEndpoint:
        endpoint = PopHealthEndpoint()
        asyncio.run_coroutine_threadsafe(self._serve(endpoint), self._loop).result(ADMIN_TIMEOUT)
        self.pops[pop_id] = endpoint
        return endpoint

    async def _serve(self, endpoint: PopHealthEndpoint) -> None:
        app = web.Application()
        app.router.add_get("/_edge/health", endpoint.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, LOOPBACK, 0).start()
        endpoint.port = runner.addresses[0][1]

    def set_status(self, status: int, pop_ids: list[str] | None = None) -> None:
        for pop_id in pop_ids if pop_ids is not None else list(self.pops):
            self.pops[pop_id].status = status

    def close(self) -> None:
        async def cleanup() -> None:
            for runner in self._runners:
                await runner.cleanup()

        try:
            asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(STOP_TIMEOUT)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(STOP_TIMEOUT)
            self._loop.close()


# ---------------------------------------------------------------- config file


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string of ASCII text is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{key} = {_toml(item)}" for key, item in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def static_records() -> list[dict[str, object]]:
    records: list[dict[str, object]] = [
        {"name": "ns1", "type": "A", "value": "127.0.0.1"},
        {"name": "ns2", "type": "A", "value": "127.0.0.2"},
        {"name": "@", "type": "TXT", "value": "boxoffice test zone"},
        {"name": "@", "type": "MX", "value": "10 mail"},
        {"name": "mail", "type": "A", "value": "127.0.0.25"},
        {"name": "mail", "type": "AAAA", "value": "::1"},
        {"name": "tickets", "type": "CNAME", "value": "www"},
    ]
    records += [{"name": "big", "type": "TXT", "value": text} for text in BIG_TXT]
    return records


@dataclass
class GeoDNSConfig:
    """The server's TOML config file: [geodns] settings and the zone, pool and POPs it serves."""

    settings: dict[str, object]
    health: Mapping[str, PopHealthEndpoint]
    records: list[dict[str, object]] = field(default_factory=static_records)

    def render(self) -> str:
        soa = {"mname": "ns1", "rname": "hostmaster", "serial": 1, "refresh": 3600, "retry": 600,
               "expire": 86400, "minimum": NEGATIVE_TTL}  # fmt: skip
        lines = ["[geodns]"]
        lines += [f"{key} = {_toml(value)}" for key, value in self.settings.items()]
        lines += [
            "",
            f'[zones."{ZONE}"]',
            f"ttl = {STATIC_TTL}",
            f"soa = {_toml(soa)}",
            'ns = ["ns1", "ns2"]',
            f"records = {_toml(self.records)}",
            'geo = { www = "edge" }',
            "",
            "[pools.edge]",  # no `pops`: every registered POP, including ones added at runtime
            f"default = {_toml(DEFAULT_POOL)}",
        ]
        for pop_id, site in POPS.items():
            lines += [
                "",
                f"[pops.{pop_id}]",
                f"addresses = {_toml([site.ipv4, site.ipv6])}",
                f"lat = {site.lat!r}",
                f"lon = {site.lon!r}",
                "capacity = 1000",
                f"health_url = {_toml(self.health[pop_id].url)}",
            ]
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> None:
        path.write_text(self.render(), encoding="utf-8")


# ---------------------------------------------------------------- the server process

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
T = TypeVar("T")


def poll(probe: Callable[[], T], until: Callable[[T], bool], *, within: float = CONVERGE_TIMEOUT) -> T:
    """Call `probe` until `until(result)` holds or `within` seconds pass; return the last result.

    The caller asserts on what comes back, so a timeout fails with the real value.
    """
    deadline = time.monotonic() + within
    while True:
        result = probe()
        if until(result) or time.monotonic() >= deadline:
            return result
        time.sleep(POLL_INTERVAL)


@dataclass
class GeoDNSProcess:
    process: subprocess.Popen[bytes]
    config: GeoDNSConfig
    config_path: Path
    log_path: Path
    log_file: IO[bytes]
    port: int
    admin_port: int

    def dig(self, *args: str) -> DnsReply:
        return dig(self.port, *args)

    def kdig(self, *args: str) -> DnsReply:
        return kdig(self.port, *args)

    def query(self, tool: str, *args: str) -> DnsReply:
        return self.dig(*args) if tool == "dig" else self.kdig(*args)

    def http(self, method: str, path: str, body: object = None, *, token: str | None = None) -> tuple[int, bytes]:
        """One admin request; `body` is sent as JSON, or as is when it is bytes."""
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = f"http://{LOOPBACK}:{self.admin_port}{path}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with _NO_PROXY.open(request, timeout=ADMIN_TIMEOUT) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()

    def admin(self, method: str, path: str, body: object = None, *, token: str | None = None) -> tuple[int, Any]:
        status, raw = self.http(method, path, body, token=token)
        return status, json.loads(raw) if raw else None

    def metric(self, name: str) -> float | None:
        _, text = self.http("GET", "/metrics")
        match = re.search(rf"^{re.escape(name)} (\S+)$", text.decode(), re.MULTILINE)
        return None if match is None else float(match.group(1))

    def pops(self) -> dict[str, Any]:
        status, document = self.admin("GET", "/v1/pops")
        assert status == 200, document
        return {pop["id"]: pop for pop in document["pops"]}

    def log(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self) -> bool:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(OSError):
                if self.http("GET", "/v1/health")[0] == 200:
                    return True  # the admin site starts after the DNS sockets are bound
            time.sleep(POLL_INTERVAL)
        return False

    def stop(self) -> int:
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait(STOP_TIMEOUT)
        finally:
            self.log_file.close()


def free_dns_port() -> int:
    """A loopback port free for both UDP and TCP a moment ago (DNS needs both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port


def start_geodns(workdir: Path, config: GeoDNSConfig) -> GeoDNSProcess:
    """Start `python -m geodns serve --config FILE` on free ports; wait until the admin API answers."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BOXOFFICE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    config_path = workdir / "geodns.toml"
    log_path = workdir / "geodns.log"
    for attempt in range(PORT_RACE_ATTEMPTS):
        port, admin_port = free_dns_port(), free_loopback_port()
        config.settings.update(host=LOOPBACK, port=port, admin_host=LOOPBACK, admin_port=admin_port)
        config.write(config_path)
        log_file = log_path.open("wb")
        command = [sys.executable, "-m", "geodns", "serve", "--config", str(config_path)]
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        server = GeoDNSProcess(process, config, config_path, log_path, log_file, port, admin_port)
        if server.wait_ready():
            return server
        server.stop()
        if "Address already in use" not in log_tail(log_path) or attempt == PORT_RACE_ATTEMPTS - 1:
            pytest.fail(f"geodns did not start (exit code {process.returncode}):\n{log_tail(log_path)}")
    raise AssertionError("unreachable")


def base_settings(geo_database: Path, **overrides: object) -> dict[str, object]:
    settings: dict[str, object] = {
        "geo_database": str(geo_database),
        "health_interval": "200ms",
        "health_timeout": "100ms",
        "health_rise": 1,
        # Two failed checks in a row: a single slow check on a busy CI machine
        # must not move a steering test's answer.
        "health_fall": 2,
        "admin_token": ADMIN_TOKEN,
        "nsid": NSID,
        "answer_count": ANSWER_COUNT,
        "log_level": "info",
    }
    settings.update(overrides)
    return settings


def all_healthy(server: GeoDNSProcess) -> dict[str, Any]:
    """Wait until every registered POP is healthy and return /v1/pops by id."""
    pops = poll(server.pops, lambda pops: all(pop["healthy"] for pop in pops.values()))
    assert all(pop["healthy"] for pop in pops.values()), pops
    return pops


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def dns_clients() -> None:
    """Fail (never skip) every test here when dig or kdig is missing."""
    require_tool("dig", DIG_PACKAGE)
    require_tool("kdig", KDIG_PACKAGE)


@pytest.fixture(scope="module")
def geo_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_city_database(tmp_path_factory.mktemp("geodns-db") / "city.mmdb")


@pytest.fixture(scope="module")
def health() -> Iterator[HealthEndpoints]:
    endpoints = HealthEndpoints()
    try:
        for pop_id in POPS:
            endpoints.add(pop_id)
        yield endpoints
    finally:
        endpoints.close()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, geo_database: Path, health: HealthEndpoints
) -> Iterator[GeoDNSProcess]:
    config = GeoDNSConfig(base_settings(geo_database), health.pops)
    process = start_geodns(tmp_path_factory.mktemp("geodns"), config)
    try:
        all_healthy(process)
        yield process
    finally:
        process.stop()


@pytest.fixture
def healthy(server: GeoDNSProcess, health: HealthEndpoints) -> Iterator[GeoDNSProcess]:
    """The shared server with every POP healthy before the test and again after it."""
    health.set_status(200)
    all_healthy(server)
    try:
        yield server
    finally:
        health.set_status(200)
        for pop in health.pops.values():
            pop.load = None
        all_healthy(server)


@pytest.fixture
def scratch(tmp_path: Path, geo_database: Path, health: HealthEndpoints) -> Iterator[Callable[..., GeoDNSProcess]]:
    """Start a server of the test's own with settings overrides; stopped at the end of the test."""
    started: list[GeoDNSProcess] = []

    def start(**overrides: object) -> GeoDNSProcess:
        workdir = tmp_path / f"geodns-{len(started)}"
        workdir.mkdir()
        process = start_geodns(workdir, GeoDNSConfig(base_settings(geo_database, **overrides), health.pops))
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()


# ---------------------------------------------------------------- steering


@pytest.mark.parametrize("tool", ["dig", "kdig"])
@pytest.mark.parametrize(
    ("subnet", "echoed", "nearest"),
    [
        (TOKYO_CLIENT, "203.0.113.0/24/24", ["tokyo", "sydney"]),
        (NEW_YORK_CLIENT, "198.51.100.0/24/24", ["new-york", "london"]),
        (LONDON_CLIENT, "192.0.2.0/25/25", ["london", "new-york"]),
        # IPv6 client subnet; the answer holds for the database's whole /48.
        (SYDNEY_CLIENT, "2001:db8:1::/56/48", ["sydney", "tokyo"]),
        # A /24 inside a /20 database network: the answer holds for the /20.
        (FRANKFURT_CLIENT, "100.66.0.0/24/20", ["london", "new-york"]),
    ],
)
def test_client_subnet_steers_to_the_nearest_pops(
    healthy: GeoDNSProcess, tool: str, subnet: str, echoed: str, nearest: list[str]
) -> None:
    reply = healthy.query(tool, WWW, "A", f"+subnet={subnet}")
    assert reply.status == "NOERROR", reply.text
    assert reply.addresses == v4(*nearest), reply.text
    assert {record.ttl for record in reply.answer} == {30}  # the geo TTL, short so failover is quick
    assert reply.client_subnet == echoed, reply.text


@pytest.mark.parametrize("tool", ["dig", "kdig"])
def test_resolver_without_location_gets_the_default_pool(healthy: GeoDNSProcess, tool: str) -> None:
    reply = healthy.query(tool, WWW, "A")
    assert reply.status == "NOERROR", reply.text
    assert reply.addresses == v4(*DEFAULT_POOL), reply.text
    assert reply.client_subnet is None


def test_aaaa_answers_are_steered_too(healthy: GeoDNSProcess) -> None:
    reply = healthy.dig(WWW, "AAAA", f"+subnet={TOKYO_CLIENT}")
    assert reply.addresses == [POPS["tokyo"].ipv6, POPS["sydney"].ipv6], reply.text


# ---------------------------------------------------------------- authoritative answers


@pytest.mark.parametrize(
    ("name", "rtype", "expected"),
    [
        (f"ns1.{ZONE}", "A", ["127.0.0.1"]),
        (f"mail.{ZONE}", "AAAA", ["::1"]),
        (ZONE, "MX", [f"10 mail.{ZONE}."]),
        (ZONE, "TXT", ['"boxoffice test zone"']),
        (ZONE, "NS", [f"ns1.{ZONE}.", f"ns2.{ZONE}."]),
    ],
)
def test_static_records_are_answered_authoritatively(
    healthy: GeoDNSProcess, name: str, rtype: str, expected: list[str]
) -> None:
    reply = healthy.dig(name, rtype)
    assert reply.status == "NOERROR", reply.text
    assert "aa" in reply.flags
    assert [(record.rtype, record.data) for record in reply.answer] == [(rtype, data) for data in expected]
    assert {record.ttl for record in reply.answer} == {STATIC_TTL}


def test_cname_to_a_steered_name_is_followed(healthy: GeoDNSProcess) -> None:
    reply = healthy.dig(f"tickets.{ZONE}", "A", f"+subnet={TOKYO_CLIENT}")
    assert reply.status == "NOERROR", reply.text
    assert (reply.answer[0].rtype, reply.answer[0].data) == ("CNAME", f"{WWW}.")
    assert reply.addresses == v4("tokyo", "sydney"), reply.text


def _soa_only(reply: DnsReply) -> bool:
    return [record.rtype for record in reply.authority] == ["SOA"] and reply.authority[0].name == f"{ZONE}."


def test_unknown_name_is_nxdomain_with_the_soa(healthy: GeoDNSProcess) -> None:
    reply = healthy.dig(f"nope.{ZONE}", "A")
    assert reply.status == "NXDOMAIN", reply.text
    assert "aa" in reply.flags
    assert reply.answer == []
    assert _soa_only(reply), reply.text
    assert reply.authority[0].ttl == NEGATIVE_TTL


@pytest.mark.parametrize(("name", "rtype"), [(f"mail.{ZONE}", "TXT"), (WWW, "TXT"), (WWW, "MX")])
def test_existing_name_without_the_type_is_nodata_with_the_soa(healthy: GeoDNSProcess, name: str, rtype: str) -> None:
    reply = healthy.dig(name, rtype)
    assert reply.status == "NOERROR", reply.text
    assert "aa" in reply.flags
    assert reply.answer == []
    assert _soa_only(reply), reply.text


def test_name_outside_our_zones_is_refused(healthy: GeoDNSProcess) -> None:
    reply = healthy.dig("www.example.com", "A")
    assert reply.status == "REFUSED", reply.text
    assert "aa" not in reply.flags
    assert reply.answer == []


@pytest.mark.parametrize("name", [ZONE, WWW])
def test_any_gets_one_rrset(healthy: GeoDNSProcess, name: str) -> None:
    # RFC 8482 section 4.1: answer ANY with one RRset, never everything.
    reply = healthy.dig(name, "ANY")
    assert reply.status == "NOERROR", reply.text
    assert reply.answer, reply.text
    assert len({(record.name, record.rtype) for record in reply.answer}) == 1, reply.text


def test_query_name_case_is_echoed(healthy: GeoDNSProcess) -> None:
    reply = healthy.dig("WwW.BoxOffice.TEST", "A", f"+subnet={LONDON_CLIENT}")
    assert reply.status == "NOERROR", reply.text
    assert [record.name for record in reply.answer] == ["WwW.BoxOffice.TEST."] * ANSWER_COUNT, reply.text
    assert reply.addresses == v4("london", "new-york")


def test_query_without_recursion_desired_is_answered(healthy: GeoDNSProcess) -> None:
    reply = healthy.dig(WWW, "A", "+norec", f"+subnet={NEW_YORK_CLIENT}")
    assert reply.status == "NOERROR", reply.text
    assert "rd" not in reply.flags and "aa" in reply.flags
    assert reply.addresses == v4("new-york", "london")


@pytest.mark.parametrize("tool", ["dig", "kdig"])
def test_nsid_is_returned(healthy: GeoDNSProcess, tool: str) -> None:
    reply = healthy.query(tool, f"ns1.{ZONE}", "A", "+nsid")
    assert reply.status == "NOERROR", reply.text
    assert reply.nsid == NSID, reply.text
    assert healthy.dig(f"ns1.{ZONE}", "A").nsid is None  # only when asked (RFC 5001 section 2.1)


def test_unknown_edns_version_gets_badvers(healthy: GeoDNSProcess) -> None:
    reply = healthy.dig(WWW, "A", "+edns=1", "+noednsnegotiation")
    assert reply.status == "BADVERS", reply.text
    assert reply.answer == []
    assert re.search(r"EDNS: version: 0\b", reply.text), reply.text  # we name the version we speak
    # With negotiation, dig steps down to version 0 and is answered.
    retried = healthy.dig(WWW, "A", "+edns=1")
    assert "BADVERS, retrying with EDNS version 0" in retried.text, retried.text
    assert retried.status == "NOERROR"
    assert retried.addresses == v4(*DEFAULT_POOL)


@pytest.mark.parametrize("tool", ["dig", "kdig"])
def test_tcp_is_answered(healthy: GeoDNSProcess, tool: str) -> None:
    reply = healthy.query(tool, WWW, "A", "+tcp", f"+subnet={SYDNEY_CLIENT}")
    assert reply.over_tcp, reply.text
    assert reply.status == "NOERROR"
    assert reply.addresses == v4("sydney", "tokyo")
    assert reply.client_subnet == "2001:db8:1::/56/48"


def test_large_answer_over_udp_is_truncated_then_answered_over_tcp(healthy: GeoDNSProcess) -> None:
    name = f"big.{ZONE}"
    # +ignore: show the truncated UDP answer itself rather than retrying.
    truncated = healthy.dig(name, "TXT", "+notcp", "+noedns", "+ignore")
    assert truncated.status == "NOERROR", truncated.text
    assert "tc" in truncated.flags and "aa" in truncated.flags
    assert truncated.answer == []
    assert not truncated.over_tcp
    full = healthy.dig(name, "TXT", "+notcp", "+noedns")
    assert "Truncated, retrying in TCP mode" in full.text, full.text
    assert full.over_tcp
    assert "tc" not in full.flags
    assert sorted(record.data for record in full.answer) == [f'"{text}"' for text in BIG_TXT]


def test_malformed_queries_get_formerr_or_nothing(healthy: GeoDNSProcess) -> None:
    www_question = question(WWW)
    for query_id, packet in [
        (0x1234, header(0x1234, qdcount=2) + www_question + www_question),  # two questions
        (0x2345, header(0x2345) + b"\x03ww"),  # the name stops inside its first label
        (0x3456, header(0x3456) + www_question[:-2]),  # no class
    ]:
        reply = read_header(udp_exchange(healthy.port, packet))
        assert reply.id == query_id
        assert reply.is_response
        assert reply.rcode == 1  # FORMERR
    # Five bytes carry no header to answer: nothing comes back. A good query sent
    # after it on the same socket is the first (and only) datagram to arrive.
    with udp_socket() as sock:
        sock.sendto(b"\x12\x34\x01\x00\x00", (LOOPBACK, healthy.port))
        sock.sendto(header(0x4567) + www_question, (LOOPBACK, healthy.port))
        data, _ = sock.recvfrom(65535)
        first = read_header(data)
        assert (first.id, first.rcode, first.counts[1]) == (0x4567, 0, ANSWER_COUNT)
        # The server is still answering.
        assert healthy.dig(WWW, "A").status == "NOERROR"


# ---------------------------------------------------------------- health failover


def test_unhealthy_pop_fails_over_to_the_next_nearest_and_returns(
    healthy: GeoDNSProcess, health: HealthEndpoints
) -> None:
    def london_client() -> DnsReply:
        return healthy.dig(WWW, "A", f"+subnet={LONDON_CLIENT}")

    assert london_client().addresses == v4("london", "new-york")
    health.set_status(503, ["london"])
    reply = poll(london_client, lambda reply: POPS["london"].ipv4 not in reply.addresses)
    assert reply.addresses == v4("new-york", "tokyo"), reply.text
    assert healthy.pops()["london"]["healthy"] is False
    assert healthy.metric('geodns_pop_healthy{pop="london"}') == 0
    assert healthy.metric("geodns_all_pops_down") == 0

    health.set_status(200, ["london"])
    reply = poll(london_client, lambda reply: reply.addresses[:1] == v4("london"))
    assert reply.addresses == v4("london", "new-york"), reply.text


def test_all_pops_down_still_answers_with_the_nearest(healthy: GeoDNSProcess, health: HealthEndpoints) -> None:
    health.set_status(503)
    down = poll(lambda: healthy.metric("geodns_all_pops_down"), lambda value: value == 1)
    assert down == 1
    assert healthy.admin("GET", "/v1/health")[1]["all_down"] is True
    # A possibly-dead nearest POP beats no answer.
    tokyo = healthy.dig(WWW, "A", f"+subnet={TOKYO_CLIENT}")
    assert tokyo.status == "NOERROR", tokyo.text
    assert tokyo.addresses == v4("tokyo", "sydney")
    unknown = healthy.dig(WWW, "A")
    assert unknown.addresses == v4(*DEFAULT_POOL), unknown.text

    health.set_status(200)
    up = poll(lambda: healthy.metric("geodns_all_pops_down"), lambda value: value == 0)
    assert up == 0


# ---------------------------------------------------------------- admin API


def test_admin_lists_pops_with_health_and_reported_load(healthy: GeoDNSProcess, health: HealthEndpoints) -> None:
    pops = healthy.pops()
    assert sorted(pops) == sorted(POPS)
    for pop_id, site in POPS.items():
        assert pops[pop_id]["addresses"] == [site.ipv4, site.ipv6]
        assert pops[pop_id]["healthy"] is True
        assert pops[pop_id]["health_url"] == health.pops[pop_id].url
    health.pops["tokyo"].load = 42
    tokyo = poll(lambda: healthy.admin("GET", "/v1/pops/tokyo")[1], lambda pop: pop["load"] == 42)
    assert tokyo["load"] == 42
    assert healthy.metric('geodns_pop_load{pop="tokyo"}') == 42
    status, missing = healthy.admin("GET", "/v1/pops/atlantis")
    assert status == 404
    assert missing["error"]["code"] == "not_found"


def test_admin_adds_drains_and_removes_a_pop(healthy: GeoDNSProcess, health: HealthEndpoints) -> None:
    endpoint = health.pops.get("johannesburg") or health.add("johannesburg")
    document = {
        "addresses": [JOHANNESBURG.ipv4, JOHANNESBURG.ipv6],
        "lat": JOHANNESBURG.lat,
        "lon": JOHANNESBURG.lon,
        "capacity": 500,
        "health_url": endpoint.url,
    }

    def johannesburg_client() -> DnsReply:
        return healthy.dig(WWW, "A", f"+subnet={JOHANNESBURG_CLIENT}")

    assert johannesburg_client().addresses == v4("london", "sydney")
    try:
        status, error = healthy.admin("PUT", "/v1/pops/johannesburg", document)
        assert status == 401
        assert error["error"]["code"] == "unauthorized"
        assert healthy.admin("PUT", "/v1/pops/johannesburg", document, token="wrong")[0] == 401
        status, error = healthy.admin("PUT", "/v1/pops/johannesburg", {**document, "lat": 200}, token=ADMIN_TOKEN)
        assert status == 400
        assert "pop.lat" in error["error"]["message"]
        assert "johannesburg" not in healthy.pops()

        status, created = healthy.admin("PUT", "/v1/pops/johannesburg", document, token=ADMIN_TOKEN)
        assert status == 201, created
        assert created["addresses"] == [JOHANNESBURG.ipv4, JOHANNESBURG.ipv6]
        added = poll(lambda: healthy.pops()["johannesburg"], lambda pop: pop["healthy"] is True)
        assert added["healthy"] is True
        reply = poll(johannesburg_client, lambda reply: reply.addresses[:1] == [JOHANNESBURG.ipv4])
        assert reply.addresses == [JOHANNESBURG.ipv4, POPS["london"].ipv4], reply.text

        assert healthy.admin("POST", "/v1/pops/johannesburg/drain")[0] == 401
        status, drained = healthy.admin("POST", "/v1/pops/johannesburg/drain", token=ADMIN_TOKEN)
        assert status == 200
        assert drained["drained"] is True
        reply = poll(johannesburg_client, lambda reply: JOHANNESBURG.ipv4 not in reply.addresses)
        assert reply.addresses == v4("london", "sydney"), reply.text

        # A POP the config's pool names cannot be removed at runtime, only drained.
        status, conflict = healthy.admin("DELETE", "/v1/pops/sydney", token=ADMIN_TOKEN)
        assert status == 409
        assert conflict["error"]["code"] == "pop_in_use"
        assert "sydney" in healthy.pops()

        assert healthy.http("DELETE", "/v1/pops/johannesburg")[0] == 401
        assert healthy.http("DELETE", "/v1/pops/johannesburg", token=ADMIN_TOKEN) == (204, b"")
        assert healthy.admin("GET", "/v1/pops/johannesburg")[0] == 404
        assert johannesburg_client().addresses == v4("london", "sydney")
    finally:
        healthy.http("DELETE", "/v1/pops/johannesburg", token=ADMIN_TOKEN)


@pytest.mark.parametrize(
    ("number", "key"),
    [
        ('"weight": 1e999', "pop.weight"),  # valid JSON, an infinite float
        ('"lat": NaN', "pop.lat"),  # Python's json module reads it
        ('"capacity": 1' + "0" * 400, "pop.capacity"),  # JSON integers are unbounded
    ],
)
def test_admin_rejects_non_finite_numbers(healthy: GeoDNSProcess, number: str, key: str) -> None:
    # Regression: these were accepted, and an infinite weight then made every
    # steered query SERVFAIL (steering refuses non-finite weights).
    valid = {"addresses": ["127.0.0.50"], "lat": 0, "lon": 0, "capacity": 10}
    fields = [f"{json.dumps(name)}: {json.dumps(value)}" for name, value in valid.items() if f"pop.{name}" != key]
    body = "{" + ", ".join([*fields, number]) + "}"  # written out: json.dumps cannot spell these numbers
    try:
        status, error = healthy.admin("PUT", "/v1/pops/bad-numbers", body.encode(), token=ADMIN_TOKEN)
        assert status == 400, error
        assert error["error"]["message"].startswith(f"{key}: "), error
        assert "bad-numbers" not in healthy.pops()
        reply = healthy.dig(WWW, "A", f"+subnet={TOKYO_CLIENT}")
        assert reply.status == "NOERROR", reply.text
        assert reply.addresses == v4("tokyo", "sydney")
    finally:
        healthy.http("DELETE", "/v1/pops/bad-numbers", token=ADMIN_TOKEN)


# ---------------------------------------------------------------- process life


def test_sighup_reloads_the_config_without_restarting(scratch: Callable[..., GeoDNSProcess]) -> None:
    server = scratch()
    name = f"new.{ZONE}"
    assert server.dig(name, "A").status == "NXDOMAIN"
    pid = server.process.pid

    server.config.records.append({"name": "new", "type": "A", "value": "127.0.0.99"})
    server.config.write(server.config_path)
    os.kill(pid, signal.SIGHUP)
    reply = poll(lambda: server.dig(name, "A"), lambda reply: reply.status == "NOERROR")
    assert reply.addresses == ["127.0.0.99"], reply.text
    assert server.process.poll() is None
    assert server.process.pid == pid

    typo: dict[str, object] = {"name": "typo", "type": "AAA", "value": "127.0.0.98"}
    broken_configs = [
        "[zones\nthis is not TOML\n",
        GeoDNSConfig(server.config.settings, server.config.health, [*server.config.records, typo]).render(),
    ]
    kept = "SIGHUP: keeping the running config"
    for count, text in enumerate(broken_configs, start=1):
        server.config_path.write_text(text, encoding="utf-8")
        os.kill(pid, signal.SIGHUP)
        log = poll(server.log, lambda log: log.count(kept) >= count)  # noqa: B023 (used before count changes)
        assert log.count(kept) == count, log
        assert server.process.poll() is None
        assert server.dig(name, "A").addresses == ["127.0.0.99"]
        assert server.dig(WWW, "A", f"+subnet={TOKYO_CLIENT}").addresses[:1] == v4("tokyo")
    assert "unknown type 'AAA'" in server.log()


def test_response_rate_limiting_drops_and_slips(scratch: Callable[..., GeoDNSProcess]) -> None:
    server = scratch(rrl_responses_per_second=5, rrl_slip=2)
    burst = 50
    replies: list[RawHeader] = []
    with udp_socket(timeout=BURST_QUIET) as sock:
        for query_id in range(1, burst + 1):
            sock.sendto(header(query_id) + question(WWW), (LOOPBACK, server.port))
        with contextlib.suppress(TimeoutError):
            while len(replies) < burst:
                data, _ = sock.recvfrom(65535)
                replies.append(read_header(data))
    assert {reply.id for reply in replies} <= set(range(1, burst + 1))
    truncated = [reply for reply in replies if reply.truncated]
    answered = [reply for reply in replies if not reply.truncated and reply.counts[1] == ANSWER_COUNT]
    assert len(replies) < burst
    assert truncated, replies
    assert answered, replies
    assert all(reply.counts[1] == 0 for reply in truncated)
    assert server.metric("geodns_rrl_slipped_total") == len(truncated)
    assert server.metric("geodns_rrl_dropped_total") == burst - len(replies)
    # TCP is not rate limited: the truncated answer's advice works.
    assert server.dig(WWW, "A", "+tcp").addresses == v4(*DEFAULT_POOL)


def test_sigterm_stops_the_server_cleanly(scratch: Callable[..., GeoDNSProcess]) -> None:
    server = scratch()
    assert server.dig(WWW, "A").status == "NOERROR"
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(STOP_TIMEOUT) == 0
    assert "shutting down" in server.log()
