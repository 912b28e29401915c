"""Benchmark of the edge POP against nginx proxy_cache in front of the same origin.

    .venv/bin/python tests/bench/bench_edge.py [--quick]

One `boxoffice origin serve --database sqlite:TMP --seed-demo --item-max-age
300s --no-access-log` (the demo catalog, 18,629 items; item documents fresh
for 300 s instead of the default 2 s, so cached entries stay fresh for the
whole run and only push invalidation refreshes them) on CPU 0. The servers
measured are pinned to CPU 1 (`taskset -c 1`), wrk to CPU 0:

- boxoffice: `python -m edge serve --listen … --upstream ORIGIN --no-follow-feed --workers 1`
- nginx (Debian package), one process (`master_process off`), config written
  here in a temporary directory, `proxy_cache_path` in another on tmpfs
  (/dev/shm) when there is one: `proxy_cache` keyed on `$request_uri` (the
  POP keys on the raw request target too), Cache-Control from the origin
  decides (no `proxy_cache_valid`), `proxy_cache_use_stale updating`,
  `proxy_cache_lock on` (coalescing, like the POP), HTTP/1.1 keep-alive
  upstream, `X-Cache-Status: $upstream_cache_status` added.

1. Cached hits: wrk (`-t1 -c64 --latency`) with a Lua script walking 1,000
   item URLs; every URL fetched once and then verified a hit (X-Cache: HIT,
   X-Cache-Status: HIT) first. Alternating rounds; prints req/s, p50/p99,
   server CPU (utime + stime from /proc/PID/stat), requests per server
   CPU-second and boxoffice/nginx ratios, and the origin requests made during
   the run (0 when every request was a hit).
2. Misses: the same with a unique query string on every request (a Lua
   counter), so every request is a miss fetched over keep-alive upstream
   connections; the origin shares CPU 0 with wrk and bounds the rate, so CPU
   per request at the server is the figure to compare.
3. Flash crowd: 1,000 keep-alive connections from one aiohttp client
   process, then one GET each of one cold item at once; counts upstream
   requests (the origin's `origin_http_requests_total` for the item route,
   before and after), statuses and p50/p99/max latency. Target: 1.
4. Staleness through the POP: a second POP with feed following on (the
   default), the chosen items cached in it, then holds of one unit at a
   steady rate placed directly at the origin; after each hold's response,
   the POP is polled (GET every ~5 ms, bounded) until it serves the hold's
   new `version`. Prints p50/p99/max of (seen at the POP − hold response).

Bounded (full about 2 minutes, --quick under a minute), loopback only; every
process started is stopped in `finally`. Results: docs/benchmarks.md ("Edge POP").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

REPO: Final = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # for tests.support; this directory is already on the path

import aiohttp  # noqa: E402
import read_load  # noqa: E402

from tests.support.servers import free_loopback_port  # noqa: E402

SECOND: Final = 1.0
MS: Final = 1000.0
PYTHON: Final = REPO / ".venv" / "bin" / "python"
BOXOFFICE: Final = REPO / ".venv" / "bin" / "boxoffice"
LOOPBACK: Final = "127.0.0.1"
SERVER_CPU: Final = "1"  # the POP and nginx run here ...
LOAD_CPU: Final = "0"  # ... wrk and the origin here
ITEM_MAX_AGE: Final = "300s"
HIT_URLS: Final = 1_000
WRK_CONNECTIONS: Final = 64
CROWD: Final = 1_000
READY_BOUND: Final = 60 * SECOND  # the origin seeds the demo catalog before it listens
STOP_GRACE: Final = 5 * SECOND
REQUEST_TIMEOUT: Final = 10 * SECOND
POLL_INTERVAL: Final = 0.005
POLL_BOUND: Final = 5 * SECOND  # a hold not seen at the POP by then counts as missing
NGINX_CACHE_PARENT: Final = "/dev/shm" if Path("/dev/shm").is_dir() else None  # tmpfs
ITEM_ROUTE: Final = "/v1/items/{item_id}"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    seconds: int  # each measured wrk run
    warmup: int  # a wrk run thrown away before each measured one
    rounds: int  # alternating boxoffice, nginx hit runs (a shared machine drifts)
    holds: int
    hold_rate: float  # holds per second


FULL: Final = Profile("full", 10, 2, 2, 200, 40.0)
QUICK: Final = Profile("quick", 3, 1, 1, 80, 40.0)


# ---------------------------------------------------------------- processes


def _env() -> dict[str, str]:
    # BOXOFFICE_* variables or a developer's config file would change what is measured.
    return {key: value for key, value in os.environ.items() if not key.startswith("BOXOFFICE")}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Processes:
    """Started subprocesses, each in its own process group; `close()` stops every one."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.scratch: list[Path] = []  # directories removed by close(), logs or not

    def start(self, name: str, argv: list[str], cpu: str) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                ["taskset", "-c", cpu, *argv],  # taskset execs argv: the pid is the server's
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(),
                cwd=self.workdir,
                start_new_session=True,
            )
        self.running[name] = process
        return process

    def stop(self, name: str) -> None:
        process = self.running.pop(name, None)
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_GRACE)

    def close(self) -> None:
        for name in reversed(list(self.running)):
            self.stop(name)
        for directory in self.scratch:
            shutil.rmtree(directory, ignore_errors=True)

    def check(self, name: str) -> None:
        """Raise if `name` has exited (a crash, or a signal from outside the benchmark)."""
        process = self.running[name]
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log(name)}")

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]

    def wait_ready(self, name: str, url: str) -> None:
        deadline = time.monotonic() + READY_BOUND
        while True:
            self.check(name)
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer {url} within {READY_BOUND:.0f} s:\n{self.log(name)}")
            time.sleep(0.05)


def start_origin(processes: Processes) -> str:
    port = free_loopback_port()
    argv = [str(BOXOFFICE), "origin", "serve", "--database", f"sqlite:{processes.workdir / 'origin.db'}",
            "--host", LOOPBACK, "--port", str(port), "--seed-demo", "--no-access-log", "--log-level", "warning",
            "--item-max-age", ITEM_MAX_AGE]  # fmt: skip
    processes.start("origin", argv, LOAD_CPU)
    base = f"http://{LOOPBACK}:{port}"
    processes.wait_ready("origin", f"{base}/v1/health")
    return base


def start_pop(processes: Processes, name: str, origin: str, *, follow_feed: bool) -> tuple[str, int]:
    port = free_loopback_port()
    argv = [str(PYTHON), "-m", "edge", "serve", "--listen", f"{LOOPBACK}:{port}", "--upstream", origin,
            "--pop", "bench", "--workers", "1", "--log-level", "warning",  # one process: its CPU is measured
            "--follow-feed" if follow_feed else "--no-follow-feed"]  # fmt: skip
    process = processes.start(name, argv, SERVER_CPU)
    base = f"http://{LOOPBACK}:{port}"
    processes.wait_ready(name, f"{base}/_edge/health")
    return base, process.pid


NGINX_CONF: Final = """\
# Written by tests/bench/bench_edge.py: nginx proxy_cache in front of the origin, like the POP.
worker_processes 1;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    proxy_cache_path {cache} levels=1:2 keys_zone=edge:64m max_size=2g inactive=10m use_temp_path=off;
    upstream origin {{
        server {origin};
        keepalive 64;
    }}
    server {{
        listen {listen} backlog=4096;
        keepalive_requests 100000;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache edge;
            proxy_cache_key $request_uri;
            proxy_cache_lock on;
            proxy_cache_use_stale updating;
            add_header X-Cache-Status $upstream_cache_status;
        }}
    }}
}}
"""


def start_nginx(processes: Processes, origin: str) -> tuple[str, int]:
    directory = processes.workdir / "nginx"
    (directory / "tmp").mkdir(parents=True, exist_ok=True)
    # On tmpfs when there is one: the POP caches in memory, and on this machine's ext4 each stored
    # response (a file created and renamed) costs nginx about 0.8-1 ms of system time.
    cache = Path(tempfile.mkdtemp(prefix="bench-edge-nginx-", dir=NGINX_CACHE_PARENT))
    processes.scratch.append(cache)
    port = free_loopback_port()
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=directory, cache=cache, origin=origin.removeprefix("http://"),
                                      listen=f"{LOOPBACK}:{port}"))  # fmt: skip
    argv = ["nginx", "-c", str(conf), "-p", f"{directory}/", "-g", "daemon off;"]
    process = processes.start("nginx", argv, SERVER_CPU)
    base = f"http://{LOOPBACK}:{port}"
    processes.wait_ready("nginx", f"{base}/v1/health")  # proxied to the origin (not cacheable)
    return base, process.pid


# ---------------------------------------------------------------- wrk


@dataclass(frozen=True, slots=True)
class Run:
    server: str
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu: float  # server CPU-seconds during the run
    seconds: float
    upstream: int  # origin item requests during the run

    @property
    def per_cpu_second(self) -> float:
        return self.requests / self.cpu if self.cpu > 0 else float("nan")

    @property
    def cpu_share(self) -> float:
        return self.cpu / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.requests * 1e6 if self.requests else float("nan")


def hit_script(ids: list[str]) -> str:
    table = ",".join(f'"{item_id}"' for item_id in ids)
    return f"""-- bench_edge.py: GET /v1/items/{{id}} walking {len(ids)} ids from a random start.
local ids = {{{table}}}
local n = #ids
local i = 0
function init(args)
  math.randomseed(os.time())
  i = math.random(n)
end
function request()
  i = i % n + 1
  return wrk.format("GET", "/v1/items/" .. ids[i])
end
"""


def miss_script(ids: list[str], tag: str) -> str:
    """Every request a new cache key: a query string the origin ignores, counting up."""
    table = ",".join(f'"{item_id}"' for item_id in ids)
    return f"""-- bench_edge.py: GET /v1/items/{{id}}?miss=TAG-N with N counting up: every request misses.
local ids = {{{table}}}
local n = #ids
local counter = 0
function request()
  counter = counter + 1
  return wrk.format("GET", "/v1/items/" .. ids[counter % n + 1] .. "?miss={tag}-" .. counter)
end
"""


def wrk(base: str, script: Path, seconds: int) -> str:
    argv = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency",
            "--timeout", f"{REQUEST_TIMEOUT:.0f}s", "-s", str(script), base]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"wrk exited with {out.returncode}:\n{out.stdout}{out.stderr}")
    return out.stdout


def measure(server: str, base: str, pid: int, origin: str, script: Path, seconds: int) -> Run:
    upstream_before = origin_item_requests(origin)
    cpu_before = cpu_seconds(pid)
    started = time.monotonic()
    output = wrk(base, script, seconds)
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(pid) - cpu_before
    total, rps, p50, p99, errors = read_load.parse_wrk(output)
    upstream = origin_item_requests(origin) - upstream_before
    return Run(server, total, rps, p50, p99, errors, cpu, elapsed, upstream)


def combine(runs: list[Run]) -> Run:
    return Run(
        runs[0].server,
        sum(run.requests for run in runs),
        sum(run.rps for run in runs) / len(runs),
        sum(run.p50_ms for run in runs) / len(runs),
        max(run.p99_ms for run in runs),
        sum(run.errors for run in runs),
        sum(run.cpu for run in runs),
        sum(run.seconds for run in runs),
        sum(run.upstream for run in runs),
    )


def show(label: str, run: Run) -> None:
    print(f"   {label:<18} {run.rps:>9,.0f} req/s  p50 {run.p50_ms:6.2f} ms  p99 {run.p99_ms:6.2f} ms  "
          f"{run.per_cpu_second:>9,.0f} req/CPU-s ({run.cpu_us:5.1f} µs)  server CPU {run.cpu_share:4.0%}  "
          f"errors {run.errors}  origin requests {run.upstream}", flush=True)  # fmt: skip


# ---------------------------------------------------------------- HTTP helpers


def origin_item_requests(origin: str) -> int:
    """The origin's `origin_http_requests_total` for the item route, all statuses."""
    with urllib.request.urlopen(f"{origin}/metrics", timeout=5) as response:
        text = response.read().decode()
    pattern = re.compile(r'^origin_http_requests_total\{route="' + re.escape(ITEM_ROUTE) + r'",[^}]*\} (\S+)$', re.M)
    return int(sum(float(value) for value in pattern.findall(text)))


def pop_metric(base: str, name: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found[1]) if found else float("nan")


async def catalog(origin: str, count: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    after: str | None = None
    async with aiohttp.ClientSession() as session:
        while len(items) < count:
            params = {"limit": "1000"} | ({"after": after} if after else {})
            async with session.get(f"{origin}/v1/snapshot", params=params) as response:
                page = await response.json()
            items.extend(page["items"])
            after = page["next_after"]
            if after is None:
                break
    return items


async def warm_and_verify(base: str, ids: list[str], header: str) -> int:
    """GET every item once (fills the cache), then again; returns how many answered `header: HIT`."""
    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get(item_id: str) -> str:
            async with session.get(f"{base}/v1/items/{item_id}") as response:
                await response.read()
                if response.status != 200:
                    return f"status {response.status}"
                return response.headers.get(header, "")

        await asyncio.gather(*(get(item_id) for item_id in ids))
        seen = await asyncio.gather(*(get(item_id) for item_id in ids))
    counts = Counter(seen)
    if counts["HIT"] != len(ids):
        print(f"   {base}: second GETs answered {dict(counts)} ({header})")
    return counts["HIT"]


async def cache_header(base: str, path: str, header: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"{base}{path}") as response:
        await response.read()
        return f"{response.status} {header}: {response.headers.get(header, '-')}"


# ---------------------------------------------------------------- flash crowd


@dataclass(frozen=True, slots=True)
class Crowd:
    server: str
    upstream: int
    statuses: dict[int | str, int]
    cache_headers: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float


async def flash_crowd(server: str, base: str, origin: str, warm_path: str, cold_path: str, header: str) -> Crowd:
    """CROWD keep-alive connections (opened first), then one GET of `cold_path` on each at once."""
    connector = aiohttp.TCPConnector(limit=CROWD, force_close=False, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=30 * SECOND)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        barrier = asyncio.Barrier(CROWD)

        async def hold_open() -> None:
            # Keep each response unread until all CROWD are in: CROWD distinct connections.
            async with session.get(f"{base}{warm_path}") as response:
                await barrier.wait()
                await response.read()

        async with asyncio.timeout(30 * SECOND):
            await asyncio.gather(*(hold_open() for _ in range(CROWD)))
        before = origin_item_requests(origin)
        latencies: list[float] = []
        statuses: Counter[int | str] = Counter()
        headers: Counter[str] = Counter()
        started = time.perf_counter()

        async def one() -> None:
            try:
                async with session.get(f"{base}{cold_path}") as response:
                    await response.read()
                    statuses[response.status] += 1
                    headers[response.headers.get(header, "-")] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses[type(exc).__name__] += 1
            latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(one() for _ in range(CROWD)))
        upstream = origin_item_requests(origin) - before
    latencies.sort()
    return Crowd(server, upstream, dict(statuses), dict(headers), percentile(latencies, 0.5) * MS,
                 percentile(latencies, 0.99) * MS, latencies[-1] * MS)  # fmt: skip


def percentile(ordered: list[float], share: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, int(share * len(ordered) + 0.999999) - 1))]


# ---------------------------------------------------------------- staleness


@dataclass(frozen=True, slots=True)
class Staleness:
    holds: int
    elapsed: float
    delays: list[float]  # seconds, sorted
    last_old: list[float]  # per hold seen: when the POP last answered the old version (0 if never), sorted
    missing: int
    stale_polls: int
    polls: int
    bad_statuses: dict[int, int]
    first_fresh: dict[str, int]  # X-Cache of the first response with the new version
    hold_p50_ms: float
    feed: dict[str, Any] | None


async def wait_feed_caught_up(base: str) -> dict[str, Any] | None:
    deadline = time.monotonic() + 10 * SECOND
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{base}/_edge/health") as response:
                feed = (await response.json())["feed"]
            if feed is not None and feed.get("lag_seconds") == 0.0:
                return dict(feed)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the POP's feed follower did not catch up: {feed}")
            await asyncio.sleep(0.05)


async def staleness(pop: str, origin: str, items: list[str], holds: int, rate: float) -> Staleness:
    delays: list[float] = []
    last_old: list[float] = []
    hold_latencies: list[float] = []
    bad: Counter[int] = Counter()
    first_fresh: Counter[str] = Counter()
    stale_polls = polls = missing = 0
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def watch(item_id: str, version: int, answered: float) -> None:
            nonlocal stale_polls, polls, missing
            old_seen = 0.0
            while True:
                async with session.get(f"{pop}/v1/items/{item_id}") as response:
                    body = await response.read()
                    now = time.perf_counter()
                    polls += 1
                    if response.status != 200:
                        bad[response.status] += 1
                    elif json.loads(body)["version"] >= version:
                        delays.append(now - answered)
                        last_old.append(old_seen)
                        first_fresh[response.headers.get("X-Cache", "-")] += 1
                        return
                    else:
                        stale_polls += 1
                        old_seen = now - answered
                if now - answered > POLL_BOUND:
                    missing += 1
                    return
                await asyncio.sleep(POLL_INTERVAL)

        async def one_hold(n: int) -> None:
            body = {"item_id": items[n], "qty": 1, "user_id": f"bench-edge-{n}"}
            sent = time.perf_counter()
            async with session.post(f"{origin}/v1/holds", json=body) as response:
                doc = await response.json()
            answered = time.perf_counter()
            if response.status != 201:
                raise RuntimeError(f"hold {n} answered {response.status}: {doc}")
            hold_latencies.append(answered - sent)
            await watch(doc["item"]["id"], doc["item"]["version"], answered)

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for n in range(holds):
                await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
                group.create_task(one_hold(n))
        elapsed = time.perf_counter() - started
        async with session.get(f"{pop}/_edge/health") as response:
            feed = (await response.json())["feed"]
    hold_latencies.sort()
    return Staleness(holds, elapsed, sorted(delays), sorted(last_old), missing, stale_polls, polls, dict(bad),
                     dict(first_fresh), percentile(hold_latencies, 0.5) * MS, feed)  # fmt: skip


# ---------------------------------------------------------------- main


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1:2]
    return (f"nproc {os.cpu_count()}, {model}, Linux {platform.release()}, Python {platform.python_version()}, "
            f"nginx {nginx}, wrk {''.join(wrk_version) or '?'}; load average "
            f"{Path('/proc/loadavg').read_text().split()[0]}")  # fmt: skip


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}" if theirs else "n/a"


def run(profile: Profile, processes: Processes) -> int:
    began = time.monotonic()
    workdir = processes.workdir
    print(f"machine: {machine()}")
    origin = start_origin(processes)
    pop, pop_pid = start_pop(processes, "pop", origin, follow_feed=False)
    nginx, nginx_pid = start_nginx(processes, origin)
    items = arun(catalog(origin, 2_000))
    hit_ids = [item["id"] for item in items[:HIT_URLS]]
    rest = items[HIT_URLS:]
    print(f"origin {origin} (sqlite, demo catalog, item max-age {ITEM_MAX_AGE}, CPU {LOAD_CPU}); "
          f"boxoffice {pop} (pid {pop_pid}), nginx {nginx} (pid {nginx_pid}), both on CPU {SERVER_CPU}; "
          f"wrk -t1 -c{WRK_CONNECTIONS} on CPU {LOAD_CPU}; nginx cache in {NGINX_CACHE_PARENT or 'the work dir'}",
          flush=True)  # fmt: skip
    failures: list[str] = []

    # 1. hits
    hits_script = workdir / "hits.lua"
    hits_script.write_text(hit_script(hit_ids))
    verified = {
        "boxoffice": arun(warm_and_verify(pop, hit_ids, "X-Cache")),
        "nginx": arun(warm_and_verify(nginx, hit_ids, "X-Cache-Status")),
    }
    print(f"\n1. cached hits over {len(hit_ids)} item URLs, {profile.rounds} alternating round(s) of "
          f"{profile.seconds} s (after {profile.warmup} s thrown away); verified hits: "
          f"boxoffice {verified['boxoffice']}/{len(hit_ids)}, nginx {verified['nginx']}/{len(hit_ids)}",
          flush=True)  # fmt: skip
    if min(verified.values()) != len(hit_ids):
        failures.append("not every warmed URL was a hit")
    servers = {"boxoffice": (pop, pop_pid), "nginx": (nginx, nginx_pid)}
    results: dict[str, list[Run]] = {"boxoffice": [], "nginx": []}
    for round_number in range(1, profile.rounds + 1):
        for name, (base, pid) in servers.items():
            wrk(base, hits_script, profile.warmup)
            result = measure(name, base, pid, origin, hits_script, profile.seconds)
            results[name].append(result)
            show(f"round {round_number} {name}", result)
    hits = {name: combine(runs) for name, runs in results.items()}
    for name, result in hits.items():
        show(f"all {name}", result)
        if result.errors or result.upstream:
            failures.append(f"hits on {name}: {result.errors} errors, {result.upstream} origin requests")
    ours, theirs = hits["boxoffice"], hits["nginx"]
    print(f"   boxoffice/nginx: {ratio(ours.rps, theirs.rps)} (req/s), "
          f"{ratio(ours.per_cpu_second, theirs.per_cpu_second)} (req per CPU-s)", flush=True)  # fmt: skip
    processes.check("pop")

    # 2. misses
    print(f"\n2. misses: a unique query string per request ({profile.seconds} s each; the origin shares "
          f"CPU {LOAD_CPU} with wrk)", flush=True)  # fmt: skip
    misses: dict[str, Run] = {}
    for name, (base, pid) in servers.items():
        script = workdir / f"miss-{name}.lua"
        script.write_text(miss_script(hit_ids, name))
        header = "X-Cache" if name == "boxoffice" else "X-Cache-Status"
        print(f"   check: {arun(cache_header(base, f'/v1/items/{hit_ids[0]}?miss=check-{name}', header))}")
        misses[name] = measure(name, base, pid, origin, script, profile.seconds)
        show(name, misses[name])
        if misses[name].errors:
            failures.append(f"misses on {name}: {misses[name].errors} errors")
    print(f"   boxoffice cache entries after its miss run: {pop_metric(pop, 'edge_cache_entries'):,.0f}")
    ours, theirs = misses["boxoffice"], misses["nginx"]
    print(f"   boxoffice/nginx: {ratio(ours.rps, theirs.rps)} (req/s), "
          f"{ratio(ours.per_cpu_second, theirs.per_cpu_second)} (req per server CPU-s)")  # fmt: skip
    processes.check("pop")

    # 3. flash crowd
    print(f"\n3. flash crowd: {CROWD} keep-alive connections, one GET each of one cold item at once", flush=True)
    coalesced_before = pop_metric(pop, "edge_coalesced_total")
    for (name, (base, _pid)), cold, header in zip(
        servers.items(), rest[:2], ("X-Cache", "X-Cache-Status"), strict=True
    ):
        crowd = arun(flash_crowd(name, base, origin, f"/v1/items/{hit_ids[0]}", f"/v1/items/{cold['id']}", header))
        print(f"   {name:<10} upstream requests {crowd.upstream}  statuses {crowd.statuses}  "
              f"{header} {crowd.cache_headers}  p50 {crowd.p50_ms:.1f} ms  p99 {crowd.p99_ms:.1f} ms  "
              f"max {crowd.max_ms:.1f} ms", flush=True)  # fmt: skip
        if crowd.statuses.get(200) != CROWD:
            failures.append(f"flash crowd on {name}: statuses {crowd.statuses}")
    print(f"   boxoffice edge_coalesced_total +{pop_metric(pop, 'edge_coalesced_total') - coalesced_before:.0f}")
    processes.check("pop")
    processes.stop("pop")
    processes.stop("nginx")

    # 4. staleness
    candidates = [item["id"] for item in rest[10:] if item["available"] >= 1][: profile.holds]
    print(f"\n4. staleness through a POP following the change feed: {len(candidates)} holds at "
          f"{profile.hold_rate:.0f}/s at the origin, each item then polled at the POP every "
          f"{POLL_INTERVAL * MS:.0f} ms until its new version", flush=True)  # fmt: skip
    follower, _pid = start_pop(processes, "pop-feed", origin, follow_feed=True)
    arun(wait_feed_caught_up(follower))
    cached = arun(warm_and_verify(follower, candidates, "X-Cache"))
    print(f"   items cached in the POP first: {cached}/{len(candidates)} hits", flush=True)
    stale = arun(staleness(follower, origin, candidates, len(candidates), profile.hold_rate))
    processes.check("pop-feed")
    delays = stale.delays
    print(f"   holds {stale.holds} in {stale.elapsed:.1f} s (hold p50 {stale.hold_p50_ms:.2f} ms); "
          f"seen at the POP: {len(delays)}, missing after {POLL_BOUND:.0f} s: {stale.missing}")  # fmt: skip
    if delays:
        print(f"   staleness (seen at POP - hold response): p50 {percentile(delays, 0.5) * MS:.2f} ms  "
              f"p99 {percentile(delays, 0.99) * MS:.2f} ms  max {delays[-1] * MS:.2f} ms  "
              f"min {delays[0] * MS:.2f} ms")  # fmt: skip
        old = stale.last_old
        print(f"   old version last served (lower bound): p50 {percentile(old, 0.5) * MS:.2f} ms  "
              f"p99 {percentile(old, 0.99) * MS:.2f} ms  max {old[-1] * MS:.2f} ms")  # fmt: skip
    print(f"   polls {stale.polls} (old version {stale.stale_polls}, non-200 {stale.bad_statuses}); "
          f"X-Cache of the first new version {stale.first_fresh}; feed {stale.feed}")  # fmt: skip
    if stale.missing or stale.bad_statuses:
        failures.append(f"staleness: {stale.missing} missing, non-200 {stale.bad_statuses}")

    print(f"\ntotal {time.monotonic() - began:.0f} s")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def arun(main: Coroutine[Any, Any, T]) -> T:
    """Run a client coroutine on uvloop when installed (as the POP runs): a faster client leaves more CPU."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwind so `finally` stops the children


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 s wrk runs, one round, 80 holds (under a minute)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory with the server logs")
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (nginx: apt-get install -y nginx-light)", file=sys.stderr)
            return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-edge-"))
    processes = Processes(workdir)
    signal.signal(signal.SIGTERM, _terminated)
    failed = True
    try:
        code = run(QUICK if args.quick else FULL, processes)
        failed = False
        return code
    finally:
        processes.close()
        if args.keep_logs or failed:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
