"""Real origin processes for the benchmarks: databases, seeding, start, stop.

Each benchmark run gets a fresh database (a new SQLite file, or a new database
on a private PostgreSQL server from ``tests.support.servers``), seeded with
``boxoffice origin seed``, and one or more ``boxoffice origin serve``
subprocesses on free loopback ports. Every process runs in its own process
group so that ``stop()`` can end it and anything it spawned, even after an
error in the benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import asyncpg

from tests.support.servers import LOOPBACK, PostgresServer, free_loopback_port, log_tail

SECOND: Final = 1.0
BOXOFFICE: Final = Path(sys.executable).with_name("boxoffice")
# Seeding the 18,600-item demo catalog takes about 1.5 s on SQLite and 3 s on PostgreSQL.
SEED_TIMEOUT: Final = 120 * SECOND
# The origin opens its store and binds in well under a second.
READY_TIMEOUT: Final = 30 * SECOND
READY_POLL: Final = 0.05 * SECOND
# SIGTERM lets aiohttp drain; the benchmark has no requests in flight by then.
STOP_GRACE: Final = 10 * SECOND
HEALTH_TIMEOUT: Final = 2 * SECOND


@dataclass(frozen=True, slots=True)
class Database:
    """One fresh benchmark database: `url` for the origin, `backend` for the report."""

    backend: str  # "sqlite" or "postgresql"
    url: str

    @property
    def sqlite_path(self) -> Path:
        return Path(self.url.removeprefix("sqlite:"))


def fresh_sqlite(workdir: Path, name: str) -> Database:
    path = workdir / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()
    return Database("sqlite", f"sqlite:{path}")


def fresh_postgres(server: PostgresServer, name: str) -> Database:
    server.drop_database(name)
    return Database("postgresql", server.create_database(name))


def _origin_env() -> dict[str, str]:
    # BOXOFFICE_* variables or a config file of the developer's would change
    # what is measured; every setting the benchmark depends on is a flag.
    return {key: value for key, value in os.environ.items() if not key.startswith("BOXOFFICE")}


def seed(database: Database, workdir: Path) -> dict[str, Any]:
    """Load the demo catalog with `boxoffice origin seed`; returns its summary.

    Raises:
        RuntimeError: the command failed or timed out (the message has its output).
    """
    argv = [str(BOXOFFICE), "origin", "seed", "--database", database.url, "--log-level", "warning"]
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
class OriginProcess:
    """A `boxoffice origin serve` child in its own process group."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    _log_file: IO[bytes] = field(repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after STOP_GRACE. Idempotent."""
        try:
            if self.process.poll() is None:
                _signal_group(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=STOP_GRACE)
                except subprocess.TimeoutExpired:
                    _signal_group(self.process.pid, signal.SIGKILL)
                    self.process.wait(timeout=STOP_GRACE)
        finally:
            self._log_file.close()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def start_origin(database: Database, workdir: Path, name: str, extra: tuple[str, ...] = ()) -> OriginProcess:
    """Start `boxoffice origin serve` on a free loopback port and wait until /v1/health answers.

    Raises:
        RuntimeError: it exited or did not answer within READY_TIMEOUT (the message has its log tail).
    """
    port = free_loopback_port()
    log_path = workdir / f"{name}.log"
    argv = [
        str(BOXOFFICE),
        "origin",
        "serve",
        "--database",
        database.url,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--node-id",
        name.replace("-", "_"),
        "--no-access-log",
        "--log-level",
        "warning",
        *extra,
    ]
    log_file = log_path.open("wb")
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_origin_env(),
            cwd=workdir,
            start_new_session=True,
        )
    except BaseException:
        log_file.close()
        raise
    origin = OriginProcess(name, port, process, log_path, log_file)
    try:
        _wait_ready(origin)
    except BaseException:
        origin.stop()
        raise
    return origin


def _wait_ready(origin: OriginProcess) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if origin.process.poll() is not None:
            raise RuntimeError(
                f"origin {origin.name} exited with {origin.process.returncode}:\n{log_tail(origin.log_path)}"
            )
        try:
            with urllib.request.urlopen(f"{origin.base_url}/v1/health", timeout=HEALTH_TIMEOUT) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"origin {origin.name} did not answer within {READY_TIMEOUT:.0f} s:\n{log_tail(origin.log_path)}"
            )
        time.sleep(READY_POLL)


# Direct database reads for the oversell audit ------------------------------
# The API has no "list orders" route, and an audit must also see orders whose
# 201 never reached the client, so the audit reads the tables themselves.


@dataclass(frozen=True, slots=True)
class LedgerRows:
    orders: list[dict[str, Any]]
    holds: list[dict[str, Any]]
    items: list[dict[str, Any]]


async def read_ledger(database: Database, event_id: str) -> LedgerRows:
    """Every order and hold in the database, and the items of `event_id`, as stored documents."""
    if database.backend == "sqlite":
        return await asyncio.to_thread(_read_sqlite, database.sqlite_path, event_id)
    conn = await asyncpg.connect(database.url, timeout=10 * SECOND)
    try:
        orders = [json.loads(row[0]) for row in await conn.fetch("SELECT doc FROM orders")]
        holds = [json.loads(row[0]) for row in await conn.fetch("SELECT doc FROM holds")]
        items = [json.loads(row[0]) for row in await conn.fetch("SELECT doc FROM items WHERE event_id = $1", event_id)]
    finally:
        await conn.close()
    return LedgerRows(orders, holds, items)


def _read_sqlite(path: Path, event_id: str) -> LedgerRows:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10 * SECOND)
    try:
        orders = [json.loads(row[0]) for row in conn.execute("SELECT doc FROM orders")]
        holds = [json.loads(row[0]) for row in conn.execute("SELECT doc FROM holds")]
        items = [json.loads(row[0]) for row in conn.execute("SELECT doc FROM items WHERE event_id = ?", (event_id,))]
    finally:
        conn.close()
    return LedgerRows(orders, holds, items)
