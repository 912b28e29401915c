"""Benchmark of boxoffice GeoDNS against gdnsd on the same POPs and the same location database.

    .venv/bin/python tests/bench/bench_geodns.py [--quick]

Both servers run on loopback, each pinned to CPU 1 (dnsperf gets CPU 0), and
answer ``www.boxoffice.test A`` steered over six POPs at real coordinates
(boxoffice: nearest healthy POP by great-circle distance; gdnsd: the geoip
plugin's city-auto-mode with ``auto_dc_coords``). Both read one .mmdb written
here with mmdb-writer (the test cities of tests/geodns/geodb.py plus a few
hundred generated networks at the real coordinates of origin/cities.py).

1. Steering agreement: a few subnets with dig (printed), then a sample of the
   query file sent to both servers, compared answer by answer.
2. Throughput: dnsperf with a binary query file (-B) whose queries carry EDNS
   Client Subnet options for thousands of client networks, half in the
   database and half random; two alternating 10 s rounds per server (one of
   3 s with --quick). Prints queries per second, queries per server
   CPU-second (utime + stime from /proc/PID/stat) and boxoffice/gdnsd ratios.
3. Failover: tiny HTTP health servers per POP; under a light query loop one
   POP's health server is stopped and the time until answers stop naming the
   POP is measured (boxoffice: interval 500 ms, timeout 250 ms, fall 2;
   gdnsd: http_status, interval 2 s, down_thresh 2).
4. A cProfile of the boxoffice per-datagram path (UDPProtocol.datagram_received
   with a no-op transport) over the same query file, top functions by own time.

Results: docs/benchmarks.md ("GeoDNS").
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ipaddress
import json
import os
import platform
import pstats
import random
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import dnslib  # noqa: E402

from origin.cities import CITIES, REGION_BY_ID  # noqa: E402
from tests.geodns.geodb import PLACES, Place, build_city_database  # noqa: E402

PYTHON: Final = REPO / ".venv" / "bin" / "python"
LOOPBACK: Final = "127.0.0.1"
ZONE: Final = "boxoffice.test"
QNAME: Final = f"www.{ZONE}."
SERVER_CPU: Final = "1"  # both DNS servers are pinned here ...
LOAD_CPU: Final = "0"  # ... and dnsperf here
HEALTH_PATH: Final = "/_edge/health"

# POP id -> (region whose hub coordinates it uses, loopback address). na-east
# is first: the default for clients the database does not place, in both servers.
POPS: Final = {
    "na-east": "127.0.1.1",
    "eu-west": "127.0.1.2",
    "ap-northeast": "127.0.1.3",
    "ap-southeast": "127.0.1.4",
    "sa-east": "127.0.1.5",
    "af-south": "127.0.1.6",
}
DEFAULT_POP: Final = "na-east"
FAILOVER_SUBNET: Final = "203.0.113.0/24"  # Tokyo in the test database
FAILOVER_POP: Final = "ap-northeast"
DIG_SUBNETS: Final = (
    "203.0.113.0/24",  # Tokyo
    "198.51.100.0/24",  # New York
    "192.0.2.0/25",  # London
    "192.0.2.128/25",  # a record with a country and no coordinates
    "100.64.7.0/24",  # Johannesburg
    "2001:db8:1::/48",  # Sydney
    "2001:db8:2:100::/56",  # Sao Paulo
    "8.8.4.0/24",  # not in the database
)


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    seconds: int  # dnsperf -l
    rounds: int  # alternating boxoffice, gdnsd runs (a shared machine drifts)
    failover_repeats: int
    gdnsd_failover_repeats: int
    profile_queries: int


FULL: Final = Profile("full", 10, 2, 3, 3, 100_000)
QUICK: Final = Profile("quick", 3, 1, 3, 1, 30_000)


# ---------------------------------------------------------------- data


def generated_places() -> tuple[Place, ...]:
    """Four IPv4 /24s (in 100.80.0.0/12) and one IPv6 /48 (in 2001:db8:1000::/36) per demo city."""
    places = []
    for index, city in enumerate(CITIES):
        for block in range(4):
            n = index * 4 + block
            places.append(Place(f"100.{80 + n // 256}.{n % 256}.0/24", city.name, city.lat, city.lon, city.country))
        places.append(Place(f"2001:db8:{0x1000 + index:x}::/48", city.name, city.lat, city.lon, city.country))
    return tuple(places)


def ecs_query(subnet: str, qname: str = QNAME) -> bytes:
    """A wire-format A query (id 0, RD clear) with an OPT record carrying ECS for `subnet`."""
    network = ipaddress.ip_network(subnet, strict=False)
    family = 1 if network.version == 4 else 2
    prefix = network.prefixlen
    address = network.network_address.packed[: (prefix + 7) // 8]
    ecs = struct.pack("!HBB", family, prefix, 0) + address
    option = struct.pack("!HH", 8, len(ecs)) + ecs
    header = struct.pack("!HHHHHH", 0, 0, 1, 0, 0, 1)
    question = b"".join(bytes([len(label)]) + label.encode() for label in qname.rstrip(".").split(".")) + b"\0"
    question += struct.pack("!HH", 1, 1)
    opt = b"\0" + struct.pack("!HHIH", 41, 1232, 0, len(option)) + option
    return header + question + opt


def query_subnets(places: tuple[Place, ...], count: int, seed: int = 7) -> list[str]:
    """Client subnets: 50 % inside database networks (IPv4 /24 or IPv6 /56), 50 % random IPv4 /24s."""
    rng = random.Random(seed)
    v4 = [ipaddress.ip_network(p.network) for p in places if ":" not in p.network]
    v6 = [ipaddress.ip_network(p.network) for p in places if ":" in p.network]
    subnets = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.4:
            net = rng.choice(v4)
            host = net.network_address + rng.randrange(net.num_addresses)
            subnets.append(str(ipaddress.ip_network((host, 24), strict=False)))
        elif roll < 0.5:
            net = rng.choice(v6)
            host = net.network_address + (rng.randrange(256) << 72)
            subnets.append(str(ipaddress.ip_network((host, 56), strict=False)))
        else:
            while True:
                host = ipaddress.IPv4Address(rng.randrange(1 << 32))
                if host.is_global and not host.is_multicast:
                    break
            subnets.append(str(ipaddress.ip_network((host, 24), strict=False)))
    return subnets


def write_dnsperf_file(path: Path, subnets: list[str]) -> list[bytes]:
    """dnsperf -B format: each message preceded by its 2-byte length (RFC 1035 4.2.2)."""
    messages = [ecs_query(subnet) for subnet in subnets]
    path.write_bytes(b"".join(struct.pack("!H", len(m)) + m for m in messages))
    return messages


# ---------------------------------------------------------------- processes


def free_port(host: str = LOOPBACK, hosts: tuple[str, ...] = ()) -> int:
    """A port free for both UDP and TCP on `host` (and TCP on every one of `hosts`)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port: int = probe.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind((host, port))
            for other in hosts:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                    tcp.bind((other, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free loopback port")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Processes:
    """Started subprocesses, every one terminated (then killed) by close()."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        process = subprocess.Popen(["taskset", "-c", SERVER_CPU, *argv], stdout=log, stderr=subprocess.STDOUT)
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def close(self) -> None:
        for process in reversed(self.running):
            self.stop(process)

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")[-2000:]


# ---------------------------------------------------------------- health servers


class _Health(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        body = b'{"status": "ok"}'
        self.send_response(200 if self.path == HEALTH_PATH else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # gdnsd's http_status hangs up after the status line: a broken pipe here is normal


class HealthServers:
    """One tiny HTTP health endpoint per POP, on the POP's loopback address and a common port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._servers: dict[str, _QuietServer] = {}

    def start(self, pop_id: str) -> None:
        server = _QuietServer((POPS[pop_id], self.port), _Health)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._servers[pop_id] = server

    def stop(self, pop_id: str) -> None:
        server = self._servers.pop(pop_id)
        server.shutdown()
        server.server_close()

    def close(self) -> None:
        for pop_id in list(self._servers):
            self.stop(pop_id)


# ---------------------------------------------------------------- servers


def boxoffice_config(path: Path, port: int, admin_port: int, db: Path, health_port: int, **settings: object) -> Path:
    lines = ["[geodns]", f'host = "{LOOPBACK}"', f"port = {port}", f"admin_port = {admin_port}"]
    lines += [f'geo_database = "{db}"', "rrl_responses_per_second = 0", 'log_level = "warning"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    lines += [
        "",
        f'[zones."{ZONE}"]',
        "ttl = 300",
        'soa = { mname = "ns1", rname = "hostmaster", serial = 1, refresh = 3600, retry = 600, expire = 86400, '
        "minimum = 60 }",
        'ns = ["ns1"]',
        'records = [ { name = "ns1", type = "A", value = "127.0.0.1" } ]',
        'geo = { www = "edge" }',
        "",
        "[pools.edge]",
        f'default = ["{DEFAULT_POP}"]',
    ]
    for pop_id, address in POPS.items():
        region = REGION_BY_ID[pop_id]
        lines += [
            "",
            f"[pops.{pop_id}]",
            f'addresses = ["{address}"]',
            f"lat = {region.lat}",
            f"lon = {region.lon}",
            "capacity = 1000000",
            f'health_url = "http://{address}:{health_port}{HEALTH_PATH}"',
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def gdnsd_config(directory: Path, port: int, db: Path, health_port: int) -> Path:
    (directory / "zones").mkdir(parents=True)
    for sub in ("run", "state"):
        (directory / sub).mkdir()
    names = " ".join(POPS)
    coords = "\n".join(f"        {p} => [ {REGION_BY_ID[p].lat}, {REGION_BY_ID[p].lon} ]" for p in POPS)
    dcmap = ", ".join(f"{p} => {a}" for p, a in POPS.items())
    (directory / "config").write_text(f"""\
options => {{
  listen => [ "{LOOPBACK}:{port}" ]
  run_dir => {directory / "run"}
  state_dir => {directory / "state"}
  udp_threads => 1
  tcp_threads => 1
}}
service_types => {{
  health => {{
    plugin => http_status, port => {health_port}, url_path => "{HEALTH_PATH}",
    interval => 2, timeout => 1, up_thresh => 2, ok_thresh => 2, down_thresh => 2
  }}
}}
plugins => {{ geoip => {{
  maps => {{
    pops => {{
      geoip2_db => {db}
      datacenters => [ {names} ]
      auto_dc_coords => {{
{coords}
      }}
    }}
  }}
  resources => {{
    www => {{ map => pops, service_types => [ health ], dcmap => {{ {dcmap} }} }}
  }}
}}}}
""")
    (directory / "zones" / ZONE).write_text(
        "@ 60 SOA ns1 hostmaster 1 3600 600 86400 60\n@ 60 NS ns1\nns1 60 A 127.0.0.1\nwww 30 DYNA geoip!www\n"
    )
    return directory


def ask(port: int, message: bytes, timeout: float = 1.0) -> dnslib.DNSRecord | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        query_id = random.randrange(1 << 16)
        sock.sendto(struct.pack("!H", query_id) + message[2:], (LOOPBACK, port))
        try:
            while True:
                data = sock.recv(4096)
                if data[:2] == struct.pack("!H", query_id):
                    return dnslib.DNSRecord.parse(data)
        except TimeoutError:
            return None


def addresses(reply: dnslib.DNSRecord | None) -> list[str]:
    if reply is None:
        return ["(timeout)"]
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == dnslib.QTYPE.A]


def wait_answering(port: int, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    probe = ecs_query(DIG_SUBNETS[0])
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {process.returncode}")
        if ask(port, probe, timeout=0.2) is not None:
            return
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not answer within {seconds:g} s")


def wait_all_healthy(admin_port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(f"http://{LOOPBACK}:{admin_port}/v1/pops", timeout=1) as response:
                pops = json.loads(response.read())["pops"]
            if all(pop["healthy"] for pop in pops):
                return
        time.sleep(0.1)
    raise RuntimeError(f"boxoffice POPs not all healthy within {seconds:g} s")


def dig(port: int, subnet: str) -> str:
    out = subprocess.run(
        ["dig", f"@{LOOPBACK}", "-p", str(port), "+tries=1", "+time=2", f"+subnet={subnet}", QNAME.rstrip("."), "A"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    answers = re.findall(r"^\S+\s+\d+\s+IN\s+A\s+(\S+)$", out, re.MULTILINE)
    scope = re.search(r"CLIENT-SUBNET: \S+/(\d+)$", out, re.MULTILINE)
    pop_names = {a: p for p, a in POPS.items()}
    return f"{','.join(pop_names.get(a, a) for a in answers) or '-'} /{scope.group(1) if scope else '?'}"


# ---------------------------------------------------------------- measurements


@dataclass(frozen=True, slots=True)
class Throughput:
    qps: float
    completed: int
    lost: int
    cpu: float  # server CPU-seconds during the run
    seconds: float

    @property
    def per_cpu_second(self) -> float:
        return self.completed / self.cpu if self.cpu > 0 else float("nan")

    @property
    def cpu_share(self) -> float:
        return self.cpu / self.seconds


def dnsperf_argv(port: int, queries: Path, seconds: int) -> list[str]:
    return ["taskset", "-c", LOAD_CPU, "dnsperf", "-B", "-d", str(queries), "-s", LOOPBACK, "-p", str(port),
            "-l", str(seconds), "-c", "4", "-T", "1", "-q", "100", "-t", "1"]  # fmt: skip


def measure(port: int, pid: int, queries: Path, seconds: int) -> Throughput:
    cpu_before = cpu_seconds(pid)
    started = time.monotonic()
    out = subprocess.run(dnsperf_argv(port, queries, seconds), capture_output=True, text=True, timeout=seconds + 30)
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(pid) - cpu_before
    text = out.stdout + out.stderr
    found = {
        key: re.search(rf"{key}:\s+([0-9.]+)", text) for key in ("Queries completed", "Queries lost", "per second")
    }
    if not all(found.values()):
        raise RuntimeError(f"unexpected dnsperf output:\n{text}")
    values = {key: float(match.group(1)) for key, match in found.items() if match}
    return Throughput(values["per second"], int(values["Queries completed"]), int(values["Queries lost"]), cpu, elapsed)


def combine(runs: list[Throughput]) -> Throughput:
    """Several runs as one: mean q/s, and completed queries over CPU-seconds summed."""
    return Throughput(
        statistics.mean(run.qps for run in runs),
        sum(run.completed for run in runs),
        sum(run.lost for run in runs),
        sum(run.cpu for run in runs),
        sum(run.seconds for run in runs),
    )


def named(port: int, message: bytes, address: str) -> bool | None:
    """Does the answer name `address`? None on timeout."""
    reply = ask(port, message, timeout=0.3)
    return None if reply is None else address in addresses(reply)


def wait_named(port: int, message: bytes, address: str, expect: bool, seconds: float, step: float) -> float | None:
    """Seconds until `named` equals `expect`, polling every `step`; None past `seconds`."""
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        if named(port, message, address) is expect:
            return elapsed
        time.sleep(step)
    return None


def failover(port: int, health: HealthServers, repeats: int, bound: float, recover: float) -> list[float | None]:
    message = ecs_query(FAILOVER_SUBNET)
    address = POPS[FAILOVER_POP]
    times: list[float | None] = []
    for _ in range(repeats):
        if wait_named(port, message, address, True, recover, 0.05) is None:
            raise RuntimeError(f"{FAILOVER_POP} never came back in answers on port {port}")
        health.stop(FAILOVER_POP)
        times.append(wait_named(port, message, address, False, bound, 0.01))
        health.start(FAILOVER_POP)
    wait_named(port, message, address, True, recover, 0.05)
    return times


def profile_hot_path(config: Path, db: Path, messages: list[bytes], count: int) -> tuple[float, str]:
    """In-process datagrams/s through UDPProtocol.datagram_received (no sockets), and a cProfile."""
    from geodns.config import load_zone_config
    from geodns.geo import GeoDatabase
    from geodns.server import UDPProtocol
    from geodns.service import build_state
    from geodns.settings import GeoDNSSettings
    from ops.settings import load

    settings = load(GeoDNSSettings, "geodns", environ={"BOXOFFICE_CONFIG": str(config)})
    state = build_state(settings, load_zone_config(config), GeoDatabase.open(db))
    protocol = UDPProtocol(state.answerer, state.limiter, max_amplification=settings.max_amplification,
                           stats=state.stats)  # fmt: skip

    class Transport:
        def sendto(self, data: bytes, addr: object) -> None:
            pass

    protocol.connection_made(Transport())  # type: ignore[arg-type]
    client = (LOOPBACK, 40000)
    stream = [messages[i % len(messages)] for i in range(count)]
    for message in stream[:5000]:  # warm the answer cache like a running server
        protocol.datagram_received(message, client)
    started = time.perf_counter()
    for message in stream:
        protocol.datagram_received(message, client)
    rate = count / (time.perf_counter() - started)
    profiler = cProfile.Profile()
    profiler.enable()
    for message in stream:
        protocol.datagram_received(message, client)
    profiler.disable()
    report = _top(profiler, 14)
    return rate, report


# Per-datagram steps whose inclusive (cumulative) time the profile report lists.
STEPS: Final = (
    ("server.py", "_client_address"),
    ("ratelimit.py", "check"),
    ("answer.py", "answer"),
    ("wire.py", "parse_query"),
    ("answer.py", "_packed"),
    ("geo.py", "lookup"),
    ("geo.py", "ecs_scope"),
    ("wire.py", "opt_record"),
    ("wire.py", "response"),
    ("answer.py", "_count"),
    ("metrics.py", "observe"),
)


def _top(profiler: cProfile.Profile, lines: int) -> str:
    """Top functions by own time, then the inclusive time of each per-datagram step, as shares of the total."""
    stats = pstats.Stats(profiler)
    table = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in table.values()) or 1e-9
    rows = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:lines]
    out = ["own time:"]
    for (filename, line, function), (_, calls, own, _cumulative, _) in rows:
        out.append(f"  {own / total:5.1%}  {calls:>8}  {Path(filename).name}:{line}({function})")
    out.append("inclusive time of the per-datagram steps:")
    for suffix, name in STEPS:
        for (filename, line, function), (_, calls, _own, cumulative, _) in table.items():
            if function == name and filename.endswith(suffix):
                out.append(f"  {cumulative / total:5.1%}  {calls:>8}  {suffix}:{line}({function})")
    return "\n".join(out)


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    gdnsd = subprocess.run(["gdnsd", "-h"], capture_output=True, text=True).stderr
    version = re.search(r"gdnsd version (\S+)", gdnsd)
    dnsperf = subprocess.run(["dnsperf", "-h"], capture_output=True, text=True)
    dnsperf_version = re.search(r"Version\s+(\S+)", dnsperf.stdout + dnsperf.stderr)
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    changed = subprocess.run([*git, "status", "--porcelain", "geodns"], capture_output=True, text=True).stdout.strip()
    revision = (commit or "?") + (" + uncommitted geodns changes" if changed else "")
    return (
        f"boxoffice {revision}; {os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, "
        f"gdnsd {version.group(1) if version else '?'}, dnsperf {dnsperf_version.group(1) if dnsperf_version else '?'}"
    )


# ---------------------------------------------------------------- main


def run(profile: Profile, workdir: Path, processes: Processes, health: HealthServers) -> int:
    began = time.monotonic()
    print(f"machine: {machine()}")
    places = PLACES + generated_places()
    db = build_city_database(workdir / "cities.mmdb", places)
    subnets = query_subnets(places, 20_000)
    queries = workdir / "queries.bin"
    messages = write_dnsperf_file(queries, subnets)
    print(f"database: {len(places)} networks; query file: {len(messages)} ECS queries, "
          f"{len(set(subnets))} distinct client subnets")  # fmt: skip

    for pop_id in POPS:
        health.start(pop_id)

    box_port, box_admin = free_port(), free_port()
    box_config = boxoffice_config(workdir / "boxoffice.toml", box_port, box_admin, db, health.port,
                                  answer_count=1, health_interval=5.0, health_timeout=1.0, health_rise=1)  # fmt: skip
    box = processes.start("boxoffice", [str(PYTHON), "-m", "geodns", "serve", "--config", str(box_config)])
    gdnsd_port = free_port()
    gdnsd_dir = gdnsd_config(workdir / "gdnsd", gdnsd_port, db, health.port)
    gdnsd = processes.start("gdnsd", ["gdnsd", "-c", str(gdnsd_dir), "start"])
    try:
        wait_answering(box_port, box, 20)
        wait_all_healthy(box_admin, 10)
        wait_answering(gdnsd_port, gdnsd, 20)
    except RuntimeError:
        print(processes.log("boxoffice"), processes.log("gdnsd"), sep="\n")
        raise

    print("\n1. steering (first answer, ECS scope), dig +subnet:")
    print(f"   {'client subnet':<22} {'boxoffice':<20} gdnsd")
    for subnet in DIG_SUBNETS:
        print(f"   {subnet:<22} {dig(box_port, subnet):<20} {dig(gdnsd_port, subnet)}")
    sample = random.Random(3).sample(range(len(messages)), 400)
    disagree = []
    for index in sample:
        ours, theirs = addresses(ask(box_port, messages[index])), addresses(ask(gdnsd_port, messages[index]))
        if ours[:1] != theirs[:1]:
            disagree.append((subnets[index], ours, theirs))
    print(f"   query-file sample: {len(sample) - len(disagree)}/{len(sample)} steered to the same POP")
    for subnet, ours, theirs in disagree[:5]:
        print(f"     differs: {subnet}: boxoffice {ours} gdnsd {theirs}")

    print(f"\n2. throughput: dnsperf -l {profile.seconds} -c 4 -T 1 -q 100 (dnsperf on CPU {LOAD_CPU}, "
          f"servers on CPU {SERVER_CPU}; gdnsd 1 UDP thread), {profile.rounds} alternating round(s); "
          f"load average {Path('/proc/loadavg').read_text().split()[0]}")  # fmt: skip
    results: dict[str, list[Throughput]] = {"boxoffice": [], "gdnsd": []}
    for round_number in range(1, profile.rounds + 1):
        for name, port, pid in (("boxoffice", box_port, box.pid), ("gdnsd", gdnsd_port, gdnsd.pid)):
            result = measure(port, pid, queries, profile.seconds)
            results[name].append(result)
            print(f"   round {round_number} {name:<10} {result.qps:>9,.0f} q/s  {result.per_cpu_second:>9,.0f} q/CPU-s"
                  f"  server CPU {result.cpu_share:.0%}  lost {result.lost}")  # fmt: skip
    combined = {name: combine(runs) for name, runs in results.items()}
    for name, result in combined.items():
        print(f"   all     {name:<10} {result.qps:>9,.0f} q/s  {result.per_cpu_second:>9,.0f} q/CPU-s"
              f"  server CPU {result.cpu_share:.0%}  lost {result.lost}")  # fmt: skip
    ours, theirs = combined["boxoffice"], combined["gdnsd"]
    print(f"   boxoffice/gdnsd: {ours.qps / theirs.qps:.3f} (q/s), "
          f"{ours.per_cpu_second / theirs.per_cpu_second:.3f} (q/CPU-s)")  # fmt: skip
    processes.stop(box)

    print(f"\n3. failover: stop {FAILOVER_POP}'s health server, time until {FAILOVER_SUBNET} is answered elsewhere")
    fo_port, fo_admin = free_port(), free_port()
    fo_config = boxoffice_config(workdir / "failover.toml", fo_port, fo_admin, db, health.port,
                                 health_interval=0.5, health_timeout=0.25, health_fall=2, health_rise=2)  # fmt: skip
    fo = processes.start("failover", [str(PYTHON), "-m", "geodns", "serve", "--config", str(fo_config)])
    wait_answering(fo_port, fo, 20)
    wait_all_healthy(fo_admin, 10)
    box_times = failover(fo_port, health, profile.failover_repeats, bound=10, recover=10)
    processes.stop(fo)
    gdnsd_times = failover(gdnsd_port, health, profile.gdnsd_failover_repeats, bound=15, recover=15)
    for name, times, setup in (
        ("boxoffice", box_times, "interval 0.5 s, timeout 0.25 s, fall 2"),
        ("gdnsd", gdnsd_times, "http_status interval 2 s, timeout 1 s, down_thresh 2"),
    ):
        shown = ", ".join("timeout" if t is None else f"{t:.2f}" for t in times)
        done = [t for t in times if t is not None]
        median = f"{statistics.median(done):.2f} s" if done else "n/a"
        print(f"   {name:<10} {shown} s -> median {median}  ({setup})")

    print(f"\n4. boxoffice hot path in-process ({profile.profile_queries:,} datagrams, no sockets):")
    rate, report = profile_hot_path(box_config, db, messages, profile.profile_queries)
    print(f"   {rate:,.0f} datagrams/s through UDPProtocol.datagram_received; cProfile top by own time:")
    print("\n".join("   " + line for line in report.splitlines()))
    print(f"\ntotal {time.monotonic() - began:.0f} s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="3 s dnsperf runs, one gdnsd failover (under ~45 s)")
    args = parser.parse_args()
    for tool in ("dnsperf", "gdnsd", "dig", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-geodns-"))
    processes = Processes(workdir)
    health = HealthServers(free_port(hosts=tuple(POPS.values())))
    try:
        return run(QUICK if args.quick else FULL, workdir, processes, health)
    finally:
        processes.close()
        health.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
