"""Throwaway PostgreSQL and Redis servers for the test session.

Tests talk to the real programs a user runs, never to mocks (STYLE.md §14).
Each helper starts a private server on a free loopback port, waits with a
deadline until it answers, and hands back a small handle whose ``stop()``
shuts the server down and removes what it wrote. The machine's own servers
(5432, 6379) are never touched.

PostgreSQL refuses to run as root, so when the tests run as root the
PostgreSQL programs are started as the ``postgres`` OS user, and the cluster
lives in a fresh directory directly under ``/tmp`` (pytest's own temp tree may
be mode 700 and so closed to that user). A short path there also keeps the
Unix socket path under the kernel's 107-byte limit.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

SECOND = 1.0

LOOPBACK = "127.0.0.1"

# initdb plus a cold start takes 1-3 s on a laptop; a loaded CI box is slower.
STARTUP_TIMEOUT = 30 * SECOND
# A fast shutdown of a near-empty cluster or of Redis is well under a second.
STOP_TIMEOUT = 15 * SECOND
# createdb/dropdb on a template copy of a fresh cluster: tens of milliseconds.
ADMIN_COMMAND_TIMEOUT = 30 * SECOND
# Between readiness probes; short enough not to dominate session start-up.
POLL_INTERVAL = 0.05 * SECOND
# Another process (parallel test sessions share this machine) may take the
# probed port before the server binds it; a fresh port almost always works.
PORT_RACE_ATTEMPTS = 3
PORT_IN_USE_LOG_LINE = "Address already in use"
# Enough of a server log to show why it died, short enough to read in a report.
LOG_TAIL_BYTES = 4000

# Where /tmp-rooted cluster directories go; see the module docstring.
POSTGRES_PARENT_DIR = Path("/tmp")
POSTGRES_OS_USER = "postgres"
POSTGRES_SUPERUSER = "postgres"
POSTGRES_PROGRAMS = ("initdb", "pg_ctl", "postgres", "createdb", "dropdb")
POSTGRES_INSTALL_HINT = "apt-get install postgresql"
REDIS_INSTALL_HINT = "apt-get install redis-server"

# Names go on a command line and into DSNs; keep them to plain identifiers.
_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


_Server = TypeVar("_Server")


def _retry_port_race(start: Callable[[], _Server]) -> _Server:
    """Call ``start`` again (it picks a new port) when the server lost a port race."""
    for _ in range(PORT_RACE_ATTEMPTS - 1):
        try:
            return start()
        except RuntimeError as exc:
            if PORT_IN_USE_LOG_LINE not in str(exc):
                raise
    return start()


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The kernel picks it; another process could take it before the server
    binds, which start-up then reports as a failure with the server's log.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    """Return the last ``limit`` bytes of a log file as text, or a note why not."""
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - limit))
            return log.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"


def _wait_for_tcp(host: str, port: int, deadline: float) -> bool:
    """Poll until a TCP connection to ``host:port`` succeeds or ``deadline`` passes."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1 * SECOND):
                return True
        except OSError:
            time.sleep(POLL_INTERVAL)
    return False


def _clean_env() -> dict[str, str]:
    """The current environment without PG* variables that could redirect tools."""
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------


def _version_key(bindir: Path) -> tuple[int, ...]:
    """Sort key for ``/usr/lib/postgresql/<version>/bin`` directories."""
    version = bindir.parent.name
    return tuple(int(part) for part in re.findall(r"\d+", version))


def find_postgres_bindir() -> Path:
    """Locate a directory holding all of ``POSTGRES_PROGRAMS``.

    Tries ``pg_config --bindir`` first, then Debian's versioned directories
    newest first, then ``PATH``.

    Raises:
        RuntimeError: no complete set of server programs is installed.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = subprocess.run(
                [pg_config, "--bindir"],
                capture_output=True,
                text=True,
                timeout=ADMIN_COMMAND_TIMEOUT,
                check=True,
            )
            candidates.append(Path(result.stdout.strip()))
    versioned = Path("/usr/lib/postgresql").glob("*/bin")
    candidates.extend(sorted(versioned, key=_version_key, reverse=True))
    initdb_on_path = shutil.which("initdb")
    if initdb_on_path is not None:
        candidates.append(Path(initdb_on_path).resolve().parent)
    for bindir in candidates:
        if all((bindir / program).is_file() for program in POSTGRES_PROGRAMS):
            return bindir
    raise RuntimeError(
        "PostgreSQL server programs (initdb, pg_ctl, postgres) were not found "
        "in `pg_config --bindir` or /usr/lib/postgresql/*/bin; "
        f"run `{POSTGRES_INSTALL_HINT}`"
    )


@dataclass
class _OsUser:
    """The OS identity PostgreSQL programs run as when the tests run as root."""

    name: str
    uid: int
    gid: int


def _postgres_os_user() -> _OsUser | None:
    """Return the ``postgres`` OS user if we are root, else None (run as ourselves).

    Raises:
        RuntimeError: we are root and no ``postgres`` user exists.
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(POSTGRES_OS_USER)
    except KeyError as exc:
        raise RuntimeError(
            "tests run as root, initdb refuses root, and there is no "
            f"'{POSTGRES_OS_USER}' OS user to run it as; "
            f"run `{POSTGRES_INSTALL_HINT}` (it creates one)"
        ) from exc
    return _OsUser(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def _run_postgres_program(
    argv: list[str],
    *,
    as_user: _OsUser | None,
    cwd: Path,
    timeout: float,
    log_path: Path | None = None,
) -> None:
    """Run one PostgreSQL program to completion, as ``as_user`` if given.

    Raises:
        RuntimeError: it timed out or failed; the message carries its output
            and, if ``log_path`` is given, the server log tail.
    """
    uid, gid = (None, None) if as_user is None else (as_user.uid, as_user.gid)
    what = " ".join([Path(argv[0]).name, *argv[1:]])
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=_clean_env(),
            check=False,
            user=uid,
            group=gid,
            # Drop root's supplementary groups along with its uid.
            extra_groups=None if as_user is None else [],
        )
    except subprocess.TimeoutExpired as exc:
        message = f"`{what}` did not finish within {timeout} s"
        if log_path is not None:
            message += f"; log tail:\n{log_tail(log_path)}"
        raise RuntimeError(message) from exc
    if result.returncode != 0:
        message = f"`{what}` exited with status {result.returncode}:\n"
        message += result.stdout + result.stderr
        if log_path is not None:
            message += f"\nlog tail:\n{log_tail(log_path)}"
        raise RuntimeError(message)


@dataclass
class PostgresServer:
    """A running private PostgreSQL cluster; ``stop()`` removes it.

    Authentication is ``trust`` on loopback, so the DSNs carry no password.
    """

    host: str
    port: int
    user: str
    bindir: Path = field(repr=False)
    root_dir: Path = field(repr=False)
    workdir: Path = field(repr=False)
    os_user: _OsUser | None = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.root_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root_dir / "sockets"

    @property
    def log_path(self) -> Path:
        return self.root_dir / "postgres.log"

    @property
    def dsn(self) -> str:
        """DSN of the maintenance database ``postgres``."""
        return self.database_dsn("postgres")

    def database_dsn(self, name: str) -> str:
        """DSN of database ``name`` on this server (which need not exist yet)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its DSN.

        Raises:
            ValueError: ``name`` is not a plain lower-case identifier.
            RuntimeError: ``createdb`` failed; the message carries its output.
        """
        self._check_name(name)
        self._admin("createdb", name)
        return self.database_dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting any sessions still using it.

        Raises:
            ValueError: ``name`` is not a plain lower-case identifier.
            RuntimeError: ``dropdb`` failed; the message carries its output.
        """
        self._check_name(name)
        self._admin("dropdb", "--if-exists", "--force", name)

    def stop(self) -> None:
        """Shut the cluster down (fast mode) and delete its directory. Idempotent.

        The server log is copied to ``workdir/postgres.log`` first, for post-mortems.
        """
        if self._stopped:
            return
        self._stopped = True
        pg_ctl_stop = [
            str(self.bindir / "pg_ctl"),
            "stop",
            f"--pgdata={self.data_dir}",
            "--mode=fast",
            "--wait",
            f"--timeout={int(STOP_TIMEOUT)}",
        ]
        try:
            _run_postgres_program(
                pg_ctl_stop,
                as_user=self.os_user,
                cwd=self.root_dir,
                timeout=STOP_TIMEOUT + 5 * SECOND,
            )
        except RuntimeError:
            self._kill_postmaster()
        finally:
            with contextlib.suppress(OSError):
                shutil.copyfile(self.log_path, self.workdir / "postgres.log")
            shutil.rmtree(self.root_dir, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        """Last resort when pg_ctl cannot stop the server: SIGKILL the postmaster."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)

    @staticmethod
    def _check_name(name: str) -> None:
        if not _DATABASE_NAME.fullmatch(name):
            raise ValueError(f"database name must match {_DATABASE_NAME.pattern!r}, got {name!r}")

    def _admin(self, program: str, *args: str) -> None:
        # Over TCP with trust auth, so it works whichever OS user we are.
        _run_postgres_program(
            [
                str(self.bindir / program),
                f"--host={self.host}",
                f"--port={self.port}",
                f"--username={self.user}",
                *args,
            ],
            as_user=None,
            cwd=self.root_dir.parent,
            timeout=ADMIN_COMMAND_TIMEOUT,
        )


def start_postgres(workdir: Path) -> PostgresServer:
    """Initialise and start a private PostgreSQL cluster on a free loopback port.

    Durability is switched off (``fsync``, ``synchronous_commit``,
    ``full_page_writes``): the cluster is thrown away, and tests run faster.

    Args:
        workdir: a directory of the caller's; the server log is copied here on stop.

    Returns:
        A running server; the caller must call ``stop()``.

    Raises:
        RuntimeError: programs or the ``postgres`` OS user are missing (the
            message names the package to install), or the server did not come
            up within ``STARTUP_TIMEOUT`` (the message carries the log tail).
    """
    return _retry_port_race(lambda: _start_postgres_once(workdir))


def _start_postgres_once(workdir: Path) -> PostgresServer:
    bindir = find_postgres_bindir()
    os_user = _postgres_os_user()
    root_dir = Path(tempfile.mkdtemp(prefix="boxoffice-pg-", dir=POSTGRES_PARENT_DIR))
    server = PostgresServer(
        host=LOOPBACK,
        port=free_loopback_port(),
        user=POSTGRES_SUPERUSER,
        bindir=bindir,
        root_dir=root_dir,
        workdir=workdir,
        os_user=os_user,
    )
    try:
        server.socket_dir.mkdir()
        if os_user is not None:
            for path in (root_dir, server.socket_dir):
                os.chown(path, os_user.uid, os_user.gid)
        _initdb(server)
        _pg_ctl_start(server)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        if not _wait_for_tcp(server.host, server.port, deadline):
            raise RuntimeError(
                "PostgreSQL did not accept TCP connections on "
                f"{server.host}:{server.port} within {STARTUP_TIMEOUT} s; "
                f"log tail:\n{log_tail(server.log_path)}"
            )
    except BaseException:
        server.stop()
        raise
    return server


def _initdb(server: PostgresServer) -> None:
    initdb = [
        str(server.bindir / "initdb"),
        f"--pgdata={server.data_dir}",
        f"--username={server.user}",
        "--auth=trust",
        "--encoding=UTF8",
        # C.UTF-8 ships with every glibc Debian; a fixed locale keeps sort order
        # the same on every machine whatever LANG the developer has.
        "--locale=C.UTF-8",
        "--no-sync",
    ]
    _run_postgres_program(initdb, as_user=server.os_user, cwd=server.root_dir, timeout=STARTUP_TIMEOUT)


def _pg_ctl_start(server: PostgresServer) -> None:
    server_options = [
        f"-p {server.port}",
        f"-c listen_addresses={server.host}",
        f"-k {shlex.quote(str(server.socket_dir))}",
        "-c fsync=off",
        "-c synchronous_commit=off",
        "-c full_page_writes=off",
        # Parallel test workers each hold a pool; 100 (the default) is tight.
        "-c max_connections=200",
    ]
    pg_ctl_start = [
        str(server.bindir / "pg_ctl"),
        "start",
        f"--pgdata={server.data_dir}",
        f"--log={server.log_path}",
        "--wait",
        f"--timeout={int(STARTUP_TIMEOUT)}",
        f"--options={' '.join(server_options)}",
    ]
    _run_postgres_program(
        pg_ctl_start,
        as_user=server.os_user,
        cwd=server.root_dir,
        timeout=STARTUP_TIMEOUT + 5 * SECOND,
        log_path=server.log_path,
    )


# --------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------


@dataclass
class RedisServer:
    """A running private ``redis-server`` child process; ``stop()`` ends it."""

    host: str
    port: int
    process: subprocess.Popen[bytes] = field(repr=False)
    log_path: Path = field(repr=False)
    _log_file: IO[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        """URL of logical database 0."""
        return f"redis://{self.host}:{self.port}/0"

    def stop(self) -> None:
        """SIGTERM the server, SIGKILL it after ``STOP_TIMEOUT``. Idempotent."""
        try:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=STOP_TIMEOUT)
        finally:
            self._log_file.close()


def _redis_answers_ping(host: str, port: int) -> bool:
    """One RESP ``PING`` over a raw socket; True only for ``+PONG``.

    While loading, Redis answers ``-LOADING``, which counts as not ready.
    """
    try:
        with socket.create_connection((host, port), timeout=1 * SECOND) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(workdir: Path) -> RedisServer:
    """Start a private, non-persistent ``redis-server`` on a free loopback port.

    Args:
        workdir: a writable directory for Redis's working dir and its log.

    Returns:
        A running server; the caller must call ``stop()``.

    Raises:
        RuntimeError: ``redis-server`` is not installed (the message names the
            package), or it did not answer PING within ``STARTUP_TIMEOUT``
            (the message carries the log tail).
    """
    return _retry_port_race(lambda: _start_redis_once(workdir))


def _start_redis_once(workdir: Path) -> RedisServer:
    program = shutil.which("redis-server")
    if program is None:
        raise RuntimeError(f"redis-server was not found on PATH; run `{REDIS_INSTALL_HINT}`")
    data_dir = workdir / "redis-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "redis.log"
    port = free_loopback_port()
    argv = [
        program,
        "--port",
        str(port),
        "--bind",
        LOOPBACK,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data_dir),
        "--daemonize",
        "no",
    ]
    log_file = log_path.open("wb")
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
        )
    except BaseException:
        log_file.close()
        raise
    server = RedisServer(host=LOOPBACK, port=port, process=process, log_path=log_path, _log_file=log_file)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _redis_answers_ping(server.host, server.port):
            if process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with status {process.returncode} "
                    f"during start-up; log tail:\n{log_tail(log_path)}"
                )
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    "redis-server did not answer PING on "
                    f"{server.host}:{server.port} within {STARTUP_TIMEOUT} s; "
                    f"log tail:\n{log_tail(log_path)}"
                )
            time.sleep(POLL_INTERVAL)
    except BaseException:
        server.stop()
        raise
    return server
