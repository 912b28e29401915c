"""Benchmarks of shard sync: a primary and a regional shard as real processes on loopback (SQLite).

    .venv/bin/python tests/bench/bench_sync.py [--rates 200,500] [--lag-seconds 10] [--outage-changes 10000]
        [--changed-share 0.03] [--bootstrap-events 14500] [--soak-seconds 30] [--soak-buyers 32]

One catalog of ``--catalog-events`` events at a single venue (so one region,
na-east, holds every item), a primary (``boxoffice origin serve``) and a shard
(``--role shard --region na-east``), then:

1. **Apply lag** at steady write rates: one-unit holds at each of ``--rates``/s for
   ``--lag-seconds`` at the primary; the bench follows the *shard's own*
   ``/v1/changes`` (long-poll) and takes, per hold, the time from the hold's
   201 at the client (just after its commit) to the record for that item and
   version appearing in the shard's feed. The shard writes that record in the
   transaction that writes the row, so from then on it serves the version.
2. **Incremental against a full copy**: the shard stops, ``--changed-share`` of
   the region's rows change once each, the shard restarts and catches up; the
   upstream bytes it received (its ``shard_bytes_received_total``, gzip'd as on
   the wire) against the gzip'd snapshot pages of the whole region.
3. **Catch-up** after an outage of ``--outage-changes`` changes: records/s from
   the restarted shard's first HTTP answer until its checkpoint reaches the
   primary's head; bytes on the wire per change against the item document.
4. **Soak**: buyers hold, order and abandon (1 s TTL) through the primary and
   the shard for ``--soak-seconds``; the shard is SIGKILLed halfway and
   restarted. Then the oversell audit of the primary's database and the row
   hashes (origin.replica.row_hash) of the shard and the primary, region-wide.
5. **Bootstrap** of a fresh shard from a second primary whose catalog has
   ``--bootstrap-events`` events at one venue (14,500 ≈ 100,000 items): time
   from spawn to its first 200 on ``/v1/health``, rows/s, bytes, and the row
   hashes again.

Every figure is printed; nothing is asserted on time. Exits 1 when anything
was oversold, a shard's rows differ from the primary's, a hold never reached
the shard's feed, or the bootstrap shard failed ten sync steps.
Results: docs/benchmarks.md ("Shard sync").
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gzip
import json
import math
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # for tests.support and origin; this directory is already on the path

import aiohttp  # noqa: E402
import hold_race  # noqa: E402
import sync_cluster  # noqa: E402
import sync_load  # noqa: E402
import sync_soak  # noqa: E402
from origin_cluster import Database, OriginProcess, fresh_sqlite, read_ledger, start_origin  # noqa: E402

from origin.replica import row_hash  # noqa: E402

SECOND: Final = 1.0
# A hold's record reaches the shard within milliseconds; this bounds the wait for stragglers.
DRAIN_TIMEOUT: Final = 15 * SECOND
# Catching up 10,000 changes took 3-7 s; bootstrapping runs at about 2,300 rows/s.
CATCH_UP_TIMEOUT: Final = 300 * SECOND
BOOTSTRAP_TIMEOUT: Final = 600 * SECOND
# A shard of a few thousand rows bootstraps in a few seconds.
SMALL_BOOTSTRAP_TIMEOUT: Final = 60 * SECOND
# Connections making the outage's changes: enough to keep the primary's one SQLite writer busy.
BURST_CONNECTIONS: Final = 16
# Soak stock: about what the buyers can sell in the time bound, so items sell out and refuse.
SOAK_UNITS_PER_SECOND: Final = 600
# The primary's hold sweeper runs every second (hold_sweep_interval); two passes and a margin.
SETTLE_SECONDS: Final = 3 * SECOND


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)

    def fail(self, text: str) -> None:
        self.say(f"FAILED: {text}")
        self.failures.append(text)


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (share in [0, 1]) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(share * len(ordered))))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def metric(samples: dict[str, float], name: str) -> float:
    return samples.get(name, 0.0)


def compact_size(doc: Any) -> int:
    return len(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())


def gzip_size(doc: Any) -> int:
    return len(gzip.compress(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()))


@dataclass
class Cluster:
    """The processes of one run, stopped in `close` whatever happened."""

    workdir: Path
    processes: list[OriginProcess] = field(default_factory=list)
    runs: int = 0

    def spawn(self, spec: sync_cluster.ShardSpec) -> tuple[OriginProcess, float]:
        self.runs += 1
        spawned_at = time.monotonic()
        process = sync_cluster.spawn_shard(spec, self.runs)
        self.processes.append(process)
        return process, spawned_at

    async def primary(self, database: Database, name: str) -> OriginProcess:
        process = await asyncio.to_thread(start_origin, database, self.workdir, name)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()


async def shard_health(session: aiohttp.ClientSession, shard: OriginProcess) -> dict[str, Any]:
    _, doc = await sync_cluster.get_json(session, f"{shard.base_url}/v1/health")
    if not isinstance(doc, dict):
        raise RuntimeError(f"{shard.name} health is not an object: {doc}")
    return doc


async def converged(
    session: aiohttp.ClientSession,
    primary: OriginProcess,
    shard: OriginProcess,
    region: str,
    report: Report,
    label: str,
) -> None:
    """Wait until the shard has the primary's head, then compare row hashes region-wide."""
    head = await sync_cluster.primary_head(session, primary.base_url)
    await sync_cluster.wait_checkpoint(session, shard, head, CATCH_UP_TIMEOUT)
    primary_rows = await sync_load.region_items(session, primary.base_url, region)
    shard_rows = await sync_load.region_items(session, shard.base_url, region)
    same = row_hash(primary_rows) == row_hash(shard_rows)
    report.say(
        f"  {label}: primary {len(primary_rows)} rows {row_hash(primary_rows)[:12]}, shard {len(shard_rows)} rows "
        f"{row_hash(shard_rows)[:12]} at {head}: {'EQUAL' if same else 'DIFFERENT'}"
    )
    if not same:
        diff = {row["id"]: row for row in primary_rows}
        differing = [row["id"] for row in shard_rows if diff.get(row["id"]) != row]
        missing = len(set(diff) - {row["id"] for row in shard_rows})
        report.fail(f"{label}: shard rows differ from the primary's ({len(differing)} differ, {missing} missing)")


# Phases -----------------------------------------------------------------------


async def phase_lag(
    session: aiohttp.ClientSession,
    primary: OriginProcess,
    shard: OriginProcess,
    picker: sync_load.StockPicker,
    rate: float,
    args: argparse.Namespace,
    report: Report,
) -> None:
    report.say(f"1. apply lag: one-unit holds at {rate:g}/s for {args.lag_seconds:g} s at the primary")
    since = str((await shard_health(session, shard))["head"])
    before = await sync_cluster.metrics(session, shard.base_url)
    watcher = sync_load.FeedWatcher(shard.base_url, since)
    stop = asyncio.Event()
    cpu_before = (sync_cluster.cpu_seconds(primary.process.pid), sync_cluster.cpu_seconds(shard.process.pid))
    started = time.monotonic()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(watcher.run(stop))
        log = await sync_load.paced_holds(primary.base_url, picker, rate, args.lag_seconds)
        elapsed = time.monotonic() - started
        wanted = {(write.item_id, write.version) for write in log.writes}
        await watcher.wait_for(wanted, DRAIN_TIMEOUT)
        stop.set()
    cpu_primary = sync_cluster.cpu_seconds(primary.process.pid) - cpu_before[0]
    cpu_shard = sync_cluster.cpu_seconds(shard.process.pid) - cpu_before[1]
    after = await sync_cluster.metrics(session, shard.base_url)
    lags = [
        watcher.seen[(w.item_id, w.version)] - w.answered_at
        for w in log.writes
        if (w.item_id, w.version) in watcher.seen
    ]
    missing = len(log.writes) - len(lags)
    latencies = [w.answered_at - w.sent_at for w in log.writes]
    report.say(
        f"  holds: {len(log.writes)} committed in {elapsed:.1f} s ({len(log.writes) / elapsed:.0f}/s), "
        f"failures {dict(log.failures) or 0}, schedule slip at the end {ms(log.slip)}"
    )
    if latencies:
        report.say(
            f"  hold round trip at the primary: p50 {ms(percentile(latencies, 0.5))}, "
            f"p99 {ms(percentile(latencies, 0.99))}"
        )
    if lags:
        early = sum(1 for lag in lags if lag < 0)
        report.say(
            f"  apply lag (hold's 201 -> record in the shard's own feed), n={len(lags)}: "
            f"p50 {ms(percentile(lags, 0.5))}, p99 {ms(percentile(lags, 0.99))}, max {ms(max(lags))}, "
            f"mean {ms(statistics.fmean(lags))}; {early} seen before the client had the 201"
        )
    report.say(
        f"  CPU during the phase: primary {cpu_primary / elapsed:.2f} cores, shard {cpu_shard / elapsed:.2f} cores"
    )
    received = metric(after, "shard_bytes_received_total") - metric(before, "shard_bytes_received_total")
    applied = metric(after, 'shard_records_total{outcome="applied"}') - metric(
        before, 'shard_records_total{outcome="applied"}'
    )
    if applied:
        report.say(
            f"  upstream bytes on the wire while following live: {received:.0f} for {applied:.0f} applied records "
            f"= {received / applied:.1f} B per change (small batches: one long-poll answer per few records)"
        )
    errors = {
        name.partition("=")[2].strip('"}'): value - metric(before, name)
        for name, value in after.items()
        if name.startswith("shard_sync_errors_total{") and value > metric(before, name)
    }
    report.say(f"  failed sync steps of the shard during the phase (each followed by a backoff): {errors or 0}")
    if missing:
        report.fail(f"{missing} of {len(log.writes)} holds never appeared in the shard's feed")


async def outage(
    cluster: Cluster,
    session: aiohttp.ClientSession,
    primary: OriginProcess,
    shard: OriginProcess,
    spec: sync_cluster.ShardSpec,
    picker: sync_load.StockPicker,
    changes: int,
) -> tuple[OriginProcess, sync_load.WriteLog, float, dict[str, float], float, float, float]:
    """Stop the shard, make `changes` holds, restart it and wait until it has the head.

    Returns (shard, writes, seconds writing, shard metrics once caught up,
    spawned at, first answer at, caught up at).
    """
    shard.stop()
    started = time.monotonic()
    log = await sync_load.burst_holds(primary.base_url, picker, changes, BURST_CONNECTIONS)
    writing = time.monotonic() - started
    head = await sync_cluster.primary_head(session, primary.base_url)
    shard, spawned_at = cluster.spawn(spec)
    answering_at = await first_answer(session, shard, spawned_at)
    caught_up_at, _ = await sync_cluster.wait_checkpoint(session, shard, head, CATCH_UP_TIMEOUT)
    samples = await sync_cluster.metrics(session, shard.base_url)
    return shard, log, writing, samples, spawned_at, answering_at, caught_up_at


async def first_answer(session: aiohttp.ClientSession, shard: OriginProcess, spawned_at: float) -> float:
    deadline = spawned_at + SMALL_BOOTSTRAP_TIMEOUT
    while time.monotonic() < deadline:
        if shard.process.poll() is not None:
            raise RuntimeError(f"{shard.name} exited with {shard.process.returncode}")
        try:
            await sync_cluster.get_json(session, f"{shard.base_url}/v1/health")
            return time.monotonic()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            await asyncio.sleep(sync_cluster.PROBE_INTERVAL)
    raise RuntimeError(f"{shard.name} did not answer within {SMALL_BOOTSTRAP_TIMEOUT:.0f} s")


async def phase_incremental(
    cluster: Cluster,
    session: aiohttp.ClientSession,
    primary: OriginProcess,
    shard: OriginProcess,
    spec: sync_cluster.ShardSpec,
    region_rows: list[dict[str, Any]],
    pool: set[str],
    args: argparse.Namespace,
    report: Report,
) -> OriginProcess:
    count = max(1, round(args.changed_share * len(region_rows)))
    chosen = random.Random(5).sample(
        sorted(item["id"] for item in region_rows if item["id"] in pool and item["available"] > 0), count
    )
    report.say(
        f"2. incremental against a full copy: shard stopped, {count} of {len(region_rows)} rows "
        f"({args.changed_share:.0%}) changed once each"
    )
    picker = sync_load.StockPicker(dict.fromkeys(chosen, 1))
    shard, log, _, samples, _, _, _ = await outage(cluster, session, primary, shard, spec, picker, count)
    incremental = metric(samples, "shard_bytes_received_total")
    applied = metric(samples, 'shard_records_total{outcome="applied"}')
    async with aiohttp.ClientSession(auto_decompress=False) as raw_session:
        full, pages = await sync_load.snapshot_wire_bytes(raw_session, primary.base_url, spec.region)
    report.say(
        f"  changes made: {len(log.writes)} (failures {dict(log.failures) or 0}); "
        f"records applied after restart: {applied:.0f}"
    )
    report.say(
        f"  bytes on the wire: incremental catch-up {incremental:.0f} B, full copy (gzip'd snapshot, {pages} pages) "
        f"{full} B: incremental/full = {incremental / full:.2%} (aim <= 5%)"
    )
    return shard


async def phase_catch_up(
    cluster: Cluster,
    session: aiohttp.ClientSession,
    primary: OriginProcess,
    shard: OriginProcess,
    spec: sync_cluster.ShardSpec,
    picker: sync_load.StockPicker,
    args: argparse.Namespace,
    report: Report,
) -> OriginProcess:
    report.say(f"3. catch-up after an outage of {args.outage_changes} changes")
    shard, log, writing, samples, spawned_at, answering_at, caught_up_at = await outage(
        cluster, session, primary, shard, spec, picker, args.outage_changes
    )
    applied = metric(samples, 'shard_records_total{outcome="applied"}')
    received = metric(samples, "shard_bytes_received_total")
    catching = caught_up_at - answering_at
    report.say(
        f"  changes made while down: {len(log.writes)} in {writing:.1f} s ({len(log.writes) / writing:.0f}/s), "
        f"failures {dict(log.failures) or 0}"
    )
    report.say(
        f"  restart: process answering after {answering_at - spawned_at:.2f} s, caught up {catching:.2f} s later "
        f"({caught_up_at - spawned_at:.2f} s from spawn): {applied:.0f} records applied, "
        f"{len(log.writes) / catching:,.0f} changes/s"
    )
    documents = [
        (await sync_cluster.get_json(session, f"{primary.base_url}/v1/items/{item_id}"))[1]
        for item_id in sorted({write.item_id for write in log.writes})[:200]
    ]
    plain = statistics.fmean(compact_size(doc) for doc in documents)
    zipped = statistics.fmean(gzip_size(doc) for doc in documents)
    if applied:
        per_change = received / applied
        report.say(
            f"  bytes on the wire: {received:.0f} for {applied:.0f} records = {per_change:.1f} B per change "
            f"(gzip'd batches of up to 500); full item document {plain:.0f} B plain, {zipped:.0f} B gzip'd alone: "
            f"change/document = {per_change / plain:.3f} ({plain / per_change:.0f}x fewer bytes), "
            f"{per_change / zipped:.3f} of a gzip'd document"
        )
    return shard


async def phase_soak(
    cluster: Cluster,
    session: aiohttp.ClientSession,
    database: Database,
    primary: OriginProcess,
    shard: OriginProcess,
    spec: sync_cluster.ShardSpec,
    soak_items: list[dict[str, Any]],
    args: argparse.Namespace,
    report: Report,
) -> OriginProcess:
    events = sorted({item["event_id"] for item in soak_items})
    capacity = sum(int(item["capacity"]) for item in soak_items)
    report.say(
        f"4. soak: {args.soak_buyers} buyers for {args.soak_seconds:g} s through primary and shard on "
        f"{len(events)} events ({len(soak_items)} items, {capacity} units); shard SIGKILLed at "
        f"{args.soak_seconds / 2:g} s and restarted"
    )
    config = sync_soak.SoakConfig(args.soak_buyers, args.soak_seconds, abandon_share=0.2)
    urls = {"primary": primary.base_url, "shard": shard.base_url}
    restarted: list[tuple[OriginProcess, float]] = []

    async def crash_and_restart() -> None:
        await asyncio.sleep(args.soak_seconds / 2)
        killed_at = time.monotonic()
        sync_cluster.kill(shard)
        process, spawned_at = cluster.spawn(spec)
        startup = await sync_cluster.wait_serving(session, process, spawned_at, SMALL_BOOTSTRAP_TIMEOUT)
        restarted.append((process, startup.serving_at - killed_at))

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(crash_and_restart())
        result = await sync_soak.soak(urls, soak_items, config)
    shard, down = restarted[0]
    report.say(f"  ran {result.elapsed:.1f} s; shard down (kill -> serving again) {down:.2f} s")
    if result.sold_out_at is not None:
        report.say(f"  every soak item refused a hold of one after {result.sold_out_at:.1f} s")
    report.say(f"  holds by entry point and status: {dict(sorted(result.holds.items()))}; abandoned {result.abandoned}")
    report.say(f"  orders by status: {dict(sorted(result.orders.items()))}")
    totals: collections.Counter[str] = collections.Counter()
    by_event: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for item in soak_items:
        by_event[item["event_id"]].append(item)
    # Abandoned holds expire 1 s after they were made and the sweeper runs every second;
    # holds whose order request met the dead shard stay active (default TTL) and are counted as held.
    await asyncio.sleep(sync_soak.ABANDON_TTL_SECONDS + SETTLE_SECONDS)
    for event_id in events:
        rows = await read_ledger(database, event_id)
        audit = hold_race.audit(rows, hold_race.HotEvent(event_id, 0.0, tuple(by_event[event_id])), result.order_ids)
        if event_id == events[0]:  # every order of the run is looked up in each audit: count it once
            totals["client orders missing"] += audit.client_orders_missing
        totals["orders"] += audit.orders
        totals["units sold"] += audit.units_sold
        totals["oversold"] += audit.oversold
        totals["accounting mismatches"] += len(audit.accounting_mismatches)
        totals["active holds left"] += audit.active_holds_left
        for line in audit.accounting_mismatches[:3]:
            report.say(f"    mismatch: {line}")
    report.say(f"  audit of the primary's database: {dict(totals)} (capacity {capacity})")
    if totals["oversold"] or totals["accounting mismatches"] or totals["client orders missing"]:
        report.fail(f"soak: oversold {totals['oversold']}, accounting mismatches {totals['accounting mismatches']}")
    await converged(session, primary, shard, spec.region, report, "after the soak")
    return shard


async def phase_bootstrap(
    cluster: Cluster, session: aiohttp.ClientSession, args: argparse.Namespace, report: Report
) -> None:
    database = fresh_sqlite(cluster.workdir, "bootstrap-primary")
    started = time.monotonic()
    summary = await asyncio.to_thread(
        sync_cluster.seed_catalog, database, cluster.workdir, venues=1, events=args.bootstrap_events
    )
    region = next(iter(summary["regions"]))
    report.say(
        f"5. bootstrap: a fresh shard of {region} from a primary of {summary['items']:,} items "
        f"({args.bootstrap_events} events at one venue; seeded in {time.monotonic() - started:.1f} s)"
    )
    primary = await cluster.primary(database, "bootstrap-primary")
    spec = sync_cluster.shard_spec("shard-boot", region, primary.base_url, cluster.workdir)
    shard, spawned_at = cluster.spawn(spec)
    try:
        startup = await sync_cluster.wait_serving(session, shard, spawned_at, BOOTSTRAP_TIMEOUT)
    except RuntimeError as exc:
        report.fail(f"bootstrap of {summary['items']:,} items: {str(exc).splitlines()[0][:600]}")
        return
    cpu = sync_cluster.cpu_seconds(shard.process.pid)
    samples = await sync_cluster.metrics(session, shard.base_url)
    rows = metric(samples, "shard_snapshot_rows_total")
    received = metric(samples, "shard_bytes_received_total")
    copying = startup.serving_at - startup.answering_at
    report.say(
        f"  spawn -> serving {startup.to_serving:.2f} s (process answering after {startup.process_start:.2f} s); "
        f"{rows:,.0f} rows copied, {rows / startup.to_serving:,.0f} rows/s from spawn "
        f"({rows / copying:,.0f} rows/s after the first answer); shard CPU {cpu:.1f} s"
    )
    report.say(f"  bytes on the wire: {received / 1e6:.1f} MB gzip'd = {received / max(rows, 1):.0f} B per row")
    await converged(session, primary, shard, region, report, "after bootstrap")


# Run ---------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = "unknown"
    if shutil.which("git"):
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        commit = out.stdout.strip() or commit
    return (
        f"machine: {os.cpu_count()} CPUs, {model}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}; boxoffice at {commit} (+ working tree)"
    )


async def run(args: argparse.Namespace) -> Report:
    report = Report()
    report.say(machine())
    workdir = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    cluster = Cluster(workdir)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60 * SECOND)) as session:
            if args.only_bootstrap:
                await phase_bootstrap(cluster, session, args, report)
                return report
            database = fresh_sqlite(workdir, "primary")
            summary = await asyncio.to_thread(
                sync_cluster.seed_catalog, database, workdir, venues=1, events=args.catalog_events
            )
            region = next(iter(summary["regions"]))
            primary = await cluster.primary(database, "primary")
            rows = await sync_load.region_items(session, primary.base_url, region)
            soak_items, pool = split_items(rows, args)
            spec = sync_cluster.shard_spec("shard-a", region, primary.base_url, workdir)
            shard, spawned_at = cluster.spawn(spec)
            startup = await sync_cluster.wait_serving(session, shard, spawned_at, SMALL_BOOTSTRAP_TIMEOUT)
            first = await sync_cluster.metrics(session, shard.base_url)
            report.say(
                f"catalog: {summary['items']:,} items in {args.catalog_events} events, all in {region}; "
                f"shard bootstrapped in {startup.to_serving:.2f} s from spawn, "
                f"{metric(first, 'shard_bytes_received_total'):.0f} B received"
            )
            picker = sync_load.StockPicker({item["id"]: int(item["available"]) for item in rows if item["id"] in pool})
            for rate in args.rates:
                await phase_lag(session, primary, shard, picker, rate, args, report)
            shard = await phase_incremental(cluster, session, primary, shard, spec, rows, pool, args, report)
            shard = await phase_catch_up(cluster, session, primary, shard, spec, picker, args, report)
            await converged(session, primary, shard, region, report, "after catch-up")
            shard = await phase_soak(cluster, session, database, primary, shard, spec, soak_items, args, report)
            shard.stop()
            primary.stop()
            if args.bootstrap_events:
                await phase_bootstrap(cluster, session, args, report)
    finally:
        cluster.close()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def split_items(rows: list[dict[str, Any]], args: argparse.Namespace) -> tuple[list[dict[str, Any]], set[str]]:
    """Soak events (whole events, enough units for the soak) and the pool of the other items' ids."""
    by_event: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for row in rows:
        by_event[row["event_id"]].append(row)
    wanted = SOAK_UNITS_PER_SECOND * args.soak_seconds
    soak_items: list[dict[str, Any]] = []
    for event_id in sorted(by_event, reverse=True):
        if sum(int(item["capacity"]) for item in soak_items) >= wanted:
            break
        soak_items.extend(sorted(by_event[event_id], key=lambda item: item["id"]))
    soak_ids = {item["id"] for item in soak_items}
    return soak_items, {row["id"] for row in rows if row["id"] not in soak_ids}


def rates(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from exc
    if not values or any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError("every rate must be positive")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog-events", type=int, default=1000, help="events of the main catalog (~7 items each)")
    parser.add_argument(
        "--rates", type=rates, default=(200.0, 500.0), help="holds per second of each apply-lag run, comma-separated"
    )
    parser.add_argument("--lag-seconds", type=float, default=10.0, help="length of the apply-lag phase")
    parser.add_argument("--changed-share", type=float, default=0.03, help="share of rows changed in phase 2")
    parser.add_argument("--outage-changes", type=int, default=10_000, help="changes made while the shard is down")
    parser.add_argument("--soak-seconds", type=float, default=30.0, help="length of the soak")
    parser.add_argument("--soak-buyers", type=int, default=32, help="concurrent buyers in the soak")
    parser.add_argument(
        "--bootstrap-events",
        type=int,
        default=14_500,
        help="events of the bootstrap catalog (14,500: ~100,000 items); 0 skips",
    )
    parser.add_argument("--only-bootstrap", action="store_true", help="run phase 5 alone")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (databases and logs)")
    args = parser.parse_args(argv)
    if not 0 < args.changed_share <= 1 or args.lag_seconds <= 0 or args.soak_seconds <= 0:
        parser.error("--changed-share must be in (0, 1]; --lag-seconds and --soak-seconds positive")
    return args


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    report = asyncio.run(run(args))
    print(f"total {time.monotonic() - started:.0f} s")
    if report.failures:
        print(f"{len(report.failures)} failure(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
