"""Benchmarks of the origin, SQLite and PostgreSQL side by side on real processes.

    .venv/bin/python tests/bench/bench_origin.py [--quick] [--backend sqlite|postgresql]

For each backend: a fresh database seeded with `boxoffice origin seed`, then
`boxoffice origin serve` subprocesses on loopback ports, and

1. item reads over HTTP with wrk (Zipf over every item id): req/s, p50, p99;
2. holds + orders per second by many buyers racing for one hot event (two
   origin processes on one database for PostgreSQL), then an audit of the
   database: prints "oversold: 0", and exits 1 if anything was oversold;
3. change-feed bytes per change against the full item document.

Figures are printed with the SQLite/PostgreSQL ratio, which travels between
machines better than the absolute numbers. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # for tests.support; this directory is already on the path

import aiohttp  # noqa: E402
import feed_size  # noqa: E402
import hold_race  # noqa: E402
import read_load  # noqa: E402
from cpu_meter import CpuMeter, CpuShare  # noqa: E402
from origin_cluster import Database, OriginProcess, fresh_postgres, fresh_sqlite, seed, start_origin  # noqa: E402

from tests.support.servers import PostgresServer, find_postgres_bindir, start_postgres  # noqa: E402

SECOND: Final = 1.0


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    reads: read_load.ReadLoad
    race: hold_race.RaceConfig
    # Total capacity of the hot event: enough to take several seconds to sell at ~600 writes/s.
    hot_capacity: tuple[int, int]
    # Also race PostgreSQL with one origin process, on a reseeded database.
    postgres_single_process: bool


FULL: Final = Profile(
    "full",
    read_load.ReadLoad(threads=2, connections=50, duration=10 * SECOND, warmup=2 * SECOND),
    hold_race.RaceConfig(buyers=64, time_bound=20 * SECOND, abandon_share=0.2, abandon_ttl_seconds=2),
    (4000, 9000),
    postgres_single_process=True,
)
QUICK: Final = Profile(
    "quick",
    read_load.ReadLoad(threads=2, connections=50, duration=3 * SECOND, warmup=1 * SECOND),
    hold_race.RaceConfig(buyers=64, time_bound=5 * SECOND, abandon_share=0.2, abandon_ttl_seconds=1),
    (1500, 3500),
    postgres_single_process=False,
)


@dataclass(frozen=True, slots=True)
class RaceRun:
    origins: int
    hot: hold_race.HotEvent
    race: hold_race.RaceResult
    audit: hold_race.Audit
    cpu: CpuShare


@dataclass(frozen=True, slots=True)
class BackendResult:
    backend: str
    seed_seconds: float
    reads: read_load.ReadResult
    read_cpu: CpuShare
    contention: RaceRun
    feed: feed_size.FeedResult
    single_process: RaceRun | None  # PostgreSQL raced by one origin process, when run


async def serve(database: Database, workdir: Path, processes: list[OriginProcess], name: str) -> OriginProcess:
    origin = await asyncio.to_thread(start_origin, database, workdir, name)
    processes.append(origin)
    return origin


async def seeded(database: Database, workdir: Path) -> float:
    """Seed `database`; returns the seconds it took."""
    print(f"[{database.backend}] seeding {database.url}", flush=True)
    started = time.monotonic()
    await asyncio.to_thread(seed, database, workdir)
    return time.monotonic() - started


async def measure_reads(
    origin: OriginProcess, ids: list[str], workdir: Path, load: read_load.ReadLoad
) -> tuple[read_load.ReadResult, CpuShare]:
    meter = CpuMeter([origin.process.pid])
    if read_load.wrk_available():
        script = workdir / "items.lua"
        script.write_text(read_load.wrk_script(ids))
        await asyncio.to_thread(read_load.warm_wrk, origin.base_url, script, load)
        meter.start()
        result = await asyncio.to_thread(read_load.run_wrk, origin.base_url, script, load)
    else:
        await read_load.run_aiohttp(origin.base_url, ids, load.connections, load.warmup)
        meter.start()
        result = await read_load.run_aiohttp(origin.base_url, ids, load.connections, load.duration)
    return result, meter.stop()


async def run_race(
    database: Database, origins: list[OriginProcess], hot: hold_race.HotEvent, config: hold_race.RaceConfig
) -> RaceRun:
    print(
        f"[{database.backend}] hold race: {config.buyers} buyers on {hot.event_id} ({len(hot.items)} items, "
        f"capacity {hot.capacity}) via {len(origins)} origin process(es)",
        flush=True,
    )
    meter = CpuMeter([origin.process.pid for origin in origins])
    meter.start()
    race = await hold_race.race([origin.base_url for origin in origins], hot, config)
    cpu = meter.stop()
    audit = await hold_race.settle_and_audit(database, hot, race)
    return RaceRun(len(origins), hot, race, audit, cpu)


async def bench_backend(
    database: Database,
    workdir: Path,
    profile: Profile,
    processes: list[OriginProcess],
    reset: Callable[[], Awaitable[Database]] | None,
) -> BackendResult:
    """Seed and serve `database`, run the three benchmarks; `processes` collects children to stop.

    With `reset` (PostgreSQL, full profile) the race is run again by one origin
    process on the fresh database `reset` returns.
    """
    name = database.backend
    seed_seconds = await seeded(database, workdir)
    first = await serve(database, workdir, processes, f"{name}-a")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30 * SECOND)) as session:
        items = await read_load.fetch_items(session, first.base_url)
        hot = await hold_race.choose_hot_event(session, first.base_url, items, *profile.hot_capacity)

    ids = read_load.shuffled([item["id"] for item in items])
    print(f"[{name}] item reads: {len(ids)} ids, {profile.reads.duration:.0f} s", flush=True)
    reads, read_cpu = await measure_reads(first, ids, workdir, profile.reads)

    origins = [first]
    if database.backend == "postgresql":
        # Two processes on one database: the oversell audit then covers cross-process races.
        origins.append(await serve(database, workdir, processes, f"{name}-b"))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30 * SECOND)) as session:
        async with session.get(f"{first.base_url}/v1/health") as response:
            since = str((await response.json())["head"])
        served_before = await feed_size.fetch_documents(session, first.base_url, [item["id"] for item in hot.items])
    contention = await run_race(database, origins, hot, profile.race)
    print(f"[{name}] change feed", flush=True)
    feed = await feed_size.measure(first.base_url, since, served_before)
    for origin in origins:
        origin.stop()

    single = None
    if reset is not None:
        again = await reset()
        await seeded(again, workdir)
        only = await serve(again, workdir, processes, f"{name}-single")
        single = await run_race(again, [only], hot, profile.race)
        only.stop()
    return BackendResult(name, seed_seconds, reads, read_cpu, contention, feed, single)


# Report ----------------------------------------------------------------------


def machine() -> list[str]:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"machine: {cores} cores (nproc), {model}, {platform.system()} {platform.release()}",
        f"python {platform.python_version()}, SQLite {sqlite3.sqlite_version}",
    ]
    with_pg = ""
    try:
        with_pg = f"PostgreSQL {find_postgres_bindir().parent.name}"
    except RuntimeError:
        with_pg = "PostgreSQL not installed"
    wrk = "wrk missing"
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=5, check=False)
        wrk = (out.stdout or out.stderr).split("Copyright")[0].strip()
    lines.append(f"{with_pg}, {wrk}")
    return lines


@dataclass(frozen=True, slots=True)
class Column:
    title: str
    result: BackendResult
    race: RaceRun
    whole: bool  # False for a race-only column (PostgreSQL with one process)


Value = float | int | str
# (label, getter, format spec, race-only): race-only rows are filled in every column.
Row = tuple[str, Callable[[Column], Value], str, bool]
SECTION: Final = "--"


def _rows() -> list[Row]:
    def per_second(count: Callable[[RaceRun], int]) -> Callable[[Column], Value]:
        return lambda c: count(c.race) / c.race.race.elapsed

    return [
        ("seed, s", lambda c: c.result.seed_seconds, ".1f", False),
        (f"{SECTION} 1. item reads (GET /v1/items/{{id}}, Zipf over all items)", str, "", False),
        ("reads per second", lambda c: c.result.reads.requests_per_second, ",.0f", False),
        ("p50 latency, ms", lambda c: c.result.reads.p50_ms, ".2f", False),
        ("p99 latency, ms", lambda c: c.result.reads.p99_ms, ".2f", False),
        ("errors (non-2xx, socket)", lambda c: c.result.reads.errors, "d", False),
        ("CPU: origin, cores", lambda c: c.result.read_cpu.origin, ".2f", False),
        ("CPU: wrk + this script, cores", lambda c: c.result.read_cpu.load, ".2f", False),
        ("CPU: rest (PostgreSQL, other load), cores", lambda c: c.result.read_cpu.rest, ".2f", False),
        (f"{SECTION} 2. hold race on one hot event", str, "", True),
        ("origin processes", lambda c: str(c.race.origins), "", True),
        ("seconds (sold out or time bound)", lambda c: c.race.race.elapsed, ".1f", True),
        ("sold out (every item refused qty 1)", lambda c: "yes" if c.race.race.sold_out else "no", "", True),
        ("holds created per second", per_second(lambda r: r.race.holds_created), ",.0f", True),
        ("orders created per second", per_second(lambda r: r.race.orders_created), ",.0f", True),
        ("holds + orders per second", lambda c: c.race.race.writes_per_second, ",.0f", True),
        ("all write answers per second (incl. 409)", lambda c: c.race.race.attempts_per_second, ",.0f", True),
        ("hold p50 / p99, ms", lambda c: _pair(c.race.race.hold_latencies), "", True),
        ("order p50 / p99, ms", lambda c: _pair(c.race.race.order_latencies), "", True),
        ("holds / refused 409 / abandoned", lambda c: _holds(c.race.race), "", True),
        ("orders / units sold / capacity", lambda c: _sold(c.race.audit), "", True),
        ("unexpected answers", lambda c: _unexpected(c.race.race), "", True),
        ("CPU: origin processes, cores", lambda c: c.race.cpu.origin, ".2f", True),
        ("CPU: buyers (this script), cores", lambda c: c.race.cpu.load, ".2f", True),
        ("CPU: rest (PostgreSQL, other load), cores", lambda c: c.race.cpu.rest, ".2f", True),
        ("oversold (units over capacity + seats twice)", lambda c: c.race.audit.oversold, "d", True),
        ("stock accounting mismatches", lambda c: len(c.race.audit.accounting_mismatches), "d", True),
        ("client-seen orders missing in db", lambda c: c.race.audit.client_orders_missing, "d", True),
        (f"{SECTION} 3. change feed after the race", str, "", False),
        ("change records (holds + expiries)", lambda c: c.result.feed.records, "d", False),
        ("record JSON, bytes", lambda c: c.result.feed.record_bytes, ".0f", False),
        ("patch JSON, bytes", lambda c: c.result.feed.patch_bytes, ".0f", False),
        ("item document at that version, bytes", lambda c: c.result.feed.document_bytes, ".0f", False),
        ("GET /v1/items body before the race, bytes", lambda c: c.result.feed.served_document_bytes, ".0f", False),
        ("batch bytes per change, plain", lambda c: c.result.feed.plain_batch_bytes_per_change, ".0f", False),
        ("batch bytes per change, gzip", lambda c: c.result.feed.gzip_batch_bytes_per_change, ".1f", False),
        ("record / document", lambda c: c.result.feed.record_bytes / c.result.feed.document_bytes, ".2f", False),
        ("gzip per change / document", lambda c: _gzip_share(c.result.feed), ".3f", False),
        ("patches replay to served documents", lambda c: "yes" if c.result.feed.replay_matches else "NO", "", False),
    ]


def _pair(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p50 = read_load.percentile(ordered, 0.5) * 1000
    p99 = read_load.percentile(ordered, 0.99) * 1000
    return f"{p50:.1f} / {p99:.1f}"


def _holds(race: hold_race.RaceResult) -> str:
    return f"{race.holds_created} / {race.holds_refused} / {race.holds_abandoned}"


def _sold(audit: hold_race.Audit) -> str:
    return f"{audit.orders} / {audit.units_sold} / {audit.capacity}"


def _unexpected(race: hold_race.RaceResult) -> str:
    return ", ".join(f"{key}: {count}" for key, count in sorted(race.unexpected.items())) or "0"


def _gzip_share(feed: feed_size.FeedResult) -> float:
    return feed.gzip_batch_bytes_per_change / feed.document_bytes


def columns(results: list[BackendResult]) -> list[Column]:
    out = [Column(result.backend, result, result.contention, True) for result in results]
    out.extend(
        Column(f"{result.backend} x1", result, result.single_process, False)
        for result in results
        if result.single_process is not None
    )
    return out


def report(results: list[BackendResult]) -> str:
    """The figures as a table; `sqlite/pg` divides the sqlite column by the postgresql one."""
    cols = columns(results)
    titles = [col.title for col in cols]
    ratio_of = (titles.index("sqlite"), titles.index("postgresql")) if {"sqlite", "postgresql"} <= set(titles) else None
    width = 20
    header = f"{'':46}" + "".join(f"{title:>{width}}" for title in titles) + (f"{'sqlite/pg':>11}" if ratio_of else "")
    lines = [header]
    for label, get, spec, race_only in _rows():
        if label.startswith(SECTION):
            lines.append(label)
            continue
        values: list[Value | None] = [get(col) if col.whole or race_only else None for col in cols]
        cells = ["" if value is None else format(value, spec) if spec else str(value) for value in values]
        line = f"  {label:44}" + "".join(f"{cell:>{width}}" for cell in cells)
        if ratio_of is not None:
            a, b = values[ratio_of[0]], values[ratio_of[1]]
            if isinstance(a, int | float) and isinstance(b, int | float) and b:
                line += f"{a / b:>11.2f}"
        lines.append(line)
    lines.append("")
    for result in results:
        hot = result.contention.hot
        feed = result.feed
        lines.append(
            f"{result.backend}: hot event {hot.event_id} ({len(hot.items)} items, capacity {hot.capacity}); "
            f"reads by `{result.reads.command}`"
        )
        lines.append(
            f"{result.backend}: feed records by item kind {feed.by_kind}; patch bytes by kind "
            f"{_rounded(feed.patch_bytes_by_kind)}; document bytes by kind {_rounded(feed.document_bytes_by_kind)}; "
            f"gzip used: {feed.gzip_used}"
        )
        for run in (result.contention, result.single_process):
            for mismatch in run.audit.accounting_mismatches if run else ():
                lines.append(f"{result.backend}: MISMATCH {mismatch}")
    return "\n".join(lines)


def _rounded(values: dict[str, float]) -> dict[str, int]:
    return {key: round(value) for key, value in values.items()}


# Main ------------------------------------------------------------------------


@dataclass
class Children:
    """Everything the benchmark started; `stop_all` ends it, whatever state the run is in."""

    processes: list[OriginProcess] = field(default_factory=list)
    postgres: PostgresServer | None = None

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()
        if self.postgres is not None:
            self.postgres.stop()


async def run(profile: Profile, backends: list[str], workdir: Path, children: Children) -> list[BackendResult]:
    results: list[BackendResult] = []
    try:
        for backend in backends:
            if backend == "sqlite":
                database = fresh_sqlite(workdir, "bench")
            else:
                if children.postgres is None:
                    children.postgres = await asyncio.to_thread(start_postgres, workdir)
                database = await asyncio.to_thread(fresh_postgres, children.postgres, "bench")
            reset: Callable[[], Awaitable[Database]] | None = None
            if children.postgres is not None and backend == "postgresql" and profile.postgres_single_process:
                reset = functools.partial(asyncio.to_thread, fresh_postgres, children.postgres, "bench_single")
            results.append(await bench_backend(database, workdir, profile, children.processes, reset))
    finally:
        await asyncio.to_thread(children.stop_all)
    return results


def _terminated(signum: int, frame: object) -> None:
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so `finally` stops the children.
    raise KeyboardInterrupt(f"signal {signum}")


def _event_loop_runner() -> Callable[[Any], Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    # A faster client loop leaves more of the two cores to the origin being measured.
    return uvloop.run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short runs (under 40 s in all)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], action="append", help="default: both")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work directory with the origin logs")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    backends = args.backend or ["sqlite", "postgresql"]
    if not read_load.wrk_available():
        print(read_load.WRK_MISSING, file=sys.stderr)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="boxoffice-bench-"))
    children = Children()
    signal.signal(signal.SIGTERM, _terminated)
    try:
        results = _event_loop_runner()(run(profile, backends, workdir, children))
    except BaseException:
        print(f"benchmark failed; logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        children.stop_all()
    if args.keep_logs:
        print(f"origin logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"boxoffice origin benchmarks ({profile.name}), {time.monotonic() - started:.0f} s")
    for line in machine():
        print(line)
    print(report(results))
    runs = [run for result in results for run in (result.contention, result.single_process) if run is not None]
    oversold = sum(run.audit.oversold for run in runs)
    print(f"oversold: {oversold}")
    broken = [
        result.backend
        for result in results
        if not result.contention.audit.clean
        or (result.single_process is not None and not result.single_process.audit.clean)
        or not result.feed.replay_matches
    ]
    if oversold or broken:
        print(f"FAILED: audit or feed replay broken on {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
