"""A primary and its regional shards as real processes, for the shard-sync benchmark.

The primary is started by ``origin_cluster.start_origin`` on a database seeded
here with a chosen catalog size; a shard is ``boxoffice origin serve --role
shard`` with its own data directory, started without waiting (the benchmark
times its bootstrap) and stopped politely (SIGTERM) or killed (SIGKILL, a
crash: no drain, no clean close of its SQLite file). Each child runs in its own
process group, like the origins of origin_cluster.

Everything a phase needs to know about a shard is read over HTTP: its
``/v1/health`` (state, checkpoint, the upstream head it saw) and its
``/metrics`` counters (``shard_bytes_received_total`` is the upstream bytes
as they came over the wire, gzip'd where the upstream compressed).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
from origin_cluster import BOXOFFICE, Database, OriginProcess, _origin_env, _signal_group

from tests.support.servers import LOOPBACK, free_loopback_port, log_tail

SECOND: Final = 1.0
# Seeding 100,000 items takes about 11 s on SQLite; leave room for a busy machine.
SEED_TIMEOUT: Final = 300 * SECOND
# Health and metrics answers are small; a shard busy applying a batch still answers within this.
PROBE_TIMEOUT: Final = 5 * SECOND
# Polling a shard's health this often costs it little and resolves its timeline to 20 ms.
PROBE_INTERVAL: Final = 0.02 * SECOND
STOP_GRACE: Final = 10 * SECOND
# A bootstrap that fails this many steps (with backoffs growing to 10 s, about a minute)
# is not going to finish: give up and say why instead of waiting out the timeout.
MAX_SYNC_ERRORS: Final = 10
ERROR_CHECK_INTERVAL: Final = 1 * SECOND


def seed_catalog(database: Database, workdir: Path, *, venues: int, events: int) -> dict[str, Any]:
    """`boxoffice origin seed` with a chosen catalog size; returns the seed summary.

    With ``venues=1`` every event is at the one venue, so one region holds the
    whole catalog (origin/catalog.py: the first venue is the first region's).

    Raises:
        RuntimeError: the command failed or timed out (the message has its output).
    """
    argv = [
        str(BOXOFFICE), "origin", "seed", "--database", database.url, "--demo-venues", str(venues),
        "--demo-events", str(events), "--log-level", "warning",
    ]  # fmt: skip
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=SEED_TIMEOUT, env=_origin_env(), cwd=workdir, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"`{' '.join(argv)}` did not finish within {SEED_TIMEOUT:.0f} s") from exc
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` exited with {result.returncode}:\n{result.stdout}{result.stderr}")
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


@dataclass
class ShardSpec:
    """How to (re)start one shard: the same data directory and port every time."""

    shard_id: str
    region: str
    upstream: str
    data_dir: Path
    port: int
    workdir: Path

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def argv(self) -> list[str]:
        return [
            str(BOXOFFICE), "origin", "serve", "--role", "shard", "--shard-id", self.shard_id,
            "--region", self.region, "--upstream", self.upstream, "--data-dir", str(self.data_dir),
            "--listen", f"{LOOPBACK}:{self.port}", "--node-id", self.shard_id.replace("-", "_"),
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip


def shard_spec(shard_id: str, region: str, upstream: str, workdir: Path) -> ShardSpec:
    data_dir = workdir / shard_id
    data_dir.mkdir(parents=True, exist_ok=True)
    return ShardSpec(shard_id, region, upstream, data_dir, free_loopback_port(), workdir)


def spawn_shard(spec: ShardSpec, run: int) -> OriginProcess:
    """Start the shard process and return at once (the caller times its bootstrap)."""
    log_path = spec.workdir / f"{spec.shard_id}-{run}.log"
    log_file = log_path.open("wb")
    try:
        process = subprocess.Popen(
            spec.argv(),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_origin_env(),
            cwd=spec.workdir,
            start_new_session=True,
        )
    except BaseException:
        log_file.close()
        raise
    return OriginProcess(spec.shard_id, spec.port, process, log_path, log_file)


def kill(process: OriginProcess) -> None:
    """SIGKILL the process group (a crash), then release the log file."""
    try:
        if process.process.poll() is None:
            _signal_group(process.process.pid, signal.SIGKILL)
            process.process.wait(timeout=STOP_GRACE)
    finally:
        process.stop()


@dataclass(frozen=True, slots=True)
class Startup:
    """A shard's timeline from spawn, on the benchmark's monotonic clock."""

    spawned_at: float
    answering_at: float  # first HTTP answer of any status: the process is up, its sync has begun
    serving_at: float  # first 200 from /v1/health: bootstrapped (or caught up) and within max_lag

    @property
    def process_start(self) -> float:
        return self.answering_at - self.spawned_at

    @property
    def to_serving(self) -> float:
        return self.serving_at - self.spawned_at


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)) as response:
        return response.status, await response.json(content_type=None)


async def wait_serving(
    session: aiohttp.ClientSession,
    process: OriginProcess,
    spawned_at: float,
    within: float,
    max_sync_errors: int = MAX_SYNC_ERRORS,
) -> Startup:
    """Poll `/v1/health` until it answers 200.

    Raises:
        RuntimeError: the process exited, did not serve within `within` seconds
            of `spawned_at`, or its sync failed `max_sync_errors` times (the
            message has its last error and log tail).
    """
    deadline = spawned_at + within
    answering_at: float | None = None
    checked_at = spawned_at
    url = f"{process.base_url}/v1/health"
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise RuntimeError(
                f"{process.name} exited with {process.process.returncode}:\n{log_tail(process.log_path)}"
            )
        try:
            status, _ = await get_json(session, url)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            status = 0
        now = time.monotonic()
        if status and answering_at is None:
            answering_at = now
        if status == 200:
            assert answering_at is not None
            return Startup(spawned_at, answering_at, now)
        if status and now - checked_at >= ERROR_CHECK_INTERVAL:
            checked_at = now
            await _give_up_on_errors(session, process, max_sync_errors)
        await asyncio.sleep(PROBE_INTERVAL)
    raise RuntimeError(f"{process.name} did not serve within {within:.0f} s:\n{log_tail(process.log_path)}")


async def _give_up_on_errors(session: aiohttp.ClientSession, process: OriginProcess, limit: int) -> None:
    try:
        samples = await metrics(session, process.base_url)
        _, health = await get_json(session, f"{process.base_url}/v1/health")
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return
    failed = sum(value for name, value in samples.items() if name.startswith("shard_sync_errors_total"))
    if failed >= limit:
        last = health.get("last_error") if isinstance(health, dict) else None
        raise RuntimeError(f"{process.name} failed {failed:.0f} sync steps while starting; last error: {last}")


def head_seq(position: str) -> int:
    """The sequence number of an ``EPOCH:SEQ`` position."""
    return int(position.rpartition(":")[2])


async def primary_head(session: aiohttp.ClientSession, base_url: str) -> str:
    status, doc = await get_json(session, f"{base_url}/v1/health")
    if status != 200:
        raise RuntimeError(f"primary health answered {status}: {doc}")
    return str(doc["head"])


async def wait_checkpoint(
    session: aiohttp.ClientSession, shard: OriginProcess, target: str, within: float
) -> tuple[float, dict[str, Any]]:
    """Poll the shard until its upstream checkpoint reaches `target`; returns (when, its health document).

    Raises:
        RuntimeError: the shard exited or did not get there within `within` seconds.
    """
    deadline = time.monotonic() + within
    url = f"{shard.base_url}/v1/health"
    epoch, want = target.rpartition(":")[0], head_seq(target)
    last: Any = None
    while time.monotonic() < deadline:
        if shard.process.poll() is not None:
            raise RuntimeError(f"{shard.name} exited with {shard.process.returncode}:\n{log_tail(shard.log_path)}")
        try:
            _, last = await get_json(session, url)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            last = None
        checkpoint = last.get("checkpoint") if isinstance(last, dict) else None
        if isinstance(checkpoint, str) and checkpoint.startswith(epoch + ":") and head_seq(checkpoint) >= want:
            return time.monotonic(), last
        await asyncio.sleep(PROBE_INTERVAL)
    raise RuntimeError(f"{shard.name} did not reach {target} within {within:.0f} s; last health: {last}")


async def metrics(session: aiohttp.ClientSession, base_url: str) -> dict[str, float]:
    """The Prometheus samples of `/metrics`, keyed by the sample's name with its labels."""
    async with session.get(f"{base_url}/metrics", timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)) as response:
        response.raise_for_status()
        text = await response.text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
