"""Children of `boxoffice up`: start, health-wait, restart with backoff, stop in order.

Each child runs in a session (and so a process group) of its own: a Ctrl-C
typed at the terminal reaches only `up`, which then stops the children in
reverse start order (POPs before the shards they read from, the origin last),
each with SIGTERM to its whole group (an edge with ``--workers`` has worker
processes), a grace period, then SIGKILL; :meth:`Supervisor.hurry` (a second
Ctrl-C) cuts every grace period short, now and for the stages still to stop.
On Linux every child also asks the kernel for SIGTERM when `up` dies
(``PR_SET_PDEATHSIG``), so even a ``kill -9`` of `up` leaves no orphan behind.
The group of a child that exited is SIGKILLed at once, for workers it left
behind (they would hold its port and serve beside its restart). At once, not
later: a process group's id stays reserved only while the group has members,
so once empty, its number may name an unrelated group (a shell job) by the
time `up` stops.

A child that exits while `up` is not stopping (or, restarted, is not healthy
within ``start_timeout``: it is then stopped) is restarted after a backoff
(:class:`RestartPolicy`: 0.5 s doubling to 10 s), at most ``max_restarts``
times within ``window``; past that it is left down and reported as failed
(`boxoffice status` shows it, and exits non-zero).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp

from ops.runtime import read_tail
from ops.up.plan import ServiceSpec

_PR_SET_PDEATHSIG: Final = 1
HEALTH_POLL_INTERVAL: Final = 0.2
HEALTH_PROBE_TIMEOUT: Final = 2.0  # a loopback health endpoint answers in milliseconds; 2 s is a stuck one
LOG_TAIL_BYTES: Final = 2_000
# After SIGKILL the kernel tears the process down at once; this only bounds a wait that cannot hang.
KILL_WAIT: Final = 5.0


class StartError(RuntimeError):
    """A child did not become healthy; the message names it and quotes its log."""


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When to restart a crashed child: exponential backoff, bounded in count per window."""

    max_restarts: int
    window: float
    initial_backoff: float = 0.5
    max_backoff: float = 10.0

    def delay(self, restarts: Sequence[float], now: float) -> float | None:
        """Seconds to wait before the next restart, or None: too many restarts within the window, give up."""
        recent = [moment for moment in restarts if now - moment < self.window]
        if len(recent) >= self.max_restarts:
            return None
        return float(min(self.max_backoff, self.initial_backoff * 2 ** len(recent)))


@dataclass(slots=True)
class Child:
    """One supervised service and its current process."""

    spec: ServiceSpec
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    state: str = "starting"  # starting, running, restarting, failed, stopping, stopped
    restarts: list[float] = field(default_factory=list)  # monotonic times of restarts
    pids: list[int] = field(default_factory=list)  # every pid it ran as (for the state file)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def exited(self) -> bool:
        return self.process is None or self.process.returncode is not None


class Supervisor:
    """Starts and watches children; `on_change` is called after any pid or state change (to rewrite state)."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        cwd: Path,
        log_dir: Path,
        policy: RestartPolicy,
        start_timeout: float,
        stop_grace: float,
        on_change: Callable[[], None],
        say: Callable[[str], None],
    ) -> None:
        self._session = session
        self._cwd = cwd
        self._log_dir = log_dir
        self._policy = policy
        self._start_timeout = start_timeout
        self._stop_grace = stop_grace
        self._on_change = on_change
        self._say = say
        self._prctl = _linux_prctl()
        self.children: list[Child] = []
        self.stopping = False
        self._hurry = asyncio.Event()  # set by a second Ctrl-C: SIGKILL without waiting out stop_grace
        self._swept: set[int] = set()  # process groups already swept (each only once, at its exit)

    # Starting ----------------------------------------------------------------------
    async def start(self, spec: ServiceSpec) -> Child:
        """Spawn `spec` (its health is awaited separately, so a stage starts in parallel)."""
        child = Child(spec=spec, log_path=self._log_dir / spec.log_name)
        self.children.append(child)
        await self._spawn(child)
        return child

    async def _spawn(self, child: Child) -> None:
        spec = child.spec
        parent = os.getpid()
        prctl = self._prctl

        def die_with_parent() -> None:  # runs in the child between fork and exec
            if prctl is not None:
                prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # `up` died before prctl took effect
                os._exit(1)

        self._log_dir.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, **spec.environment}
        with child.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(spec.command)}\n".encode())
            log.flush()
            try:
                child.process = await asyncio.create_subprocess_exec(
                    *spec.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=self._cwd, env=environment, start_new_session=True, preexec_fn=die_with_parent,
                )  # fmt: skip
            except OSError as exc:
                raise StartError(f"cannot start {spec.name}: {exc}") from exc
        child.pids.append(child.process.pid)
        child.state = "starting"
        self._on_change()

    async def probe(self, spec: ServiceSpec) -> bool:
        """One health probe: 200 from the health URL."""
        try:
            timeout = aiohttp.ClientTimeout(total=HEALTH_PROBE_TIMEOUT)
            async with self._session.get(spec.health_url, timeout=timeout) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def wait_healthy(self, child: Child) -> float:
        """Wait until `child` answers its health check; returns the seconds it took. Raises StartError."""
        started = time.monotonic()
        deadline = started + self._start_timeout
        while True:
            if child.exited():
                code = None if child.process is None else child.process.returncode
                raise StartError(f"{child.spec.name} exited with status {code}; {self.log_tail(child)}")
            if await self.probe(child.spec):
                child.state = "running"
                self._on_change()
                return time.monotonic() - started
            if time.monotonic() >= deadline:
                raise StartError(
                    f"{child.spec.name} was not healthy at {child.spec.health_url} within "
                    f"{self._start_timeout:g} s; {self.log_tail(child)}"
                )
            await asyncio.sleep(HEALTH_POLL_INTERVAL)

    def forget(self, child: Child) -> None:
        """Drop an optional child that did not come up (it has exited; nothing to stop)."""
        self.children.remove(child)
        self._on_change()

    # Watching ----------------------------------------------------------------------
    async def watch(self, child: Child) -> None:
        """Restart `child` whenever it exits unasked, until the policy gives up or `up` stops."""
        while True:
            process = child.process
            if process is None:
                return
            code = await process.wait()
            self._sweep(process)
            if self.stopping:
                return
            now = time.monotonic()
            delay = self._policy.delay(child.restarts, now)
            if delay is None:
                child.state = "failed"
                self._on_change()
                self._say(f"  {child.spec.name} exited with status {code} and was restarted "
                          f"{self._policy.max_restarts} times within {self._policy.window:g} s: left down; "
                          f"log {child.log_path}")  # fmt: skip
                return
            child.state = "restarting"
            self._on_change()
            self._say(f"  {child.spec.name} exited with status {code}: restarting in {delay:g} s")
            await asyncio.sleep(delay)
            if self.stopping:
                return
            child.restarts.append(time.monotonic())
            try:
                await self._spawn(child)
                if self.stopping:  # stop_all ran while the new process was forked: it saw only the old one
                    await self.stop(child)
                    return
                seconds = await self.wait_healthy(child)
            except StartError as exc:
                self._say(f"  restart failed: {exc}")
                if not child.exited() and not self.stopping:  # running but never healthy: counts as a crash
                    await self.stop(child)
                continue  # the loop sees the exit (or the next one) and backs off further
            self._say(f"  {child.spec.name} is back (pid {child.pid}, {seconds:.1f} s)")

    # Stopping ----------------------------------------------------------------------
    def hurry(self) -> None:
        """Stop waiting for children to honour SIGTERM: SIGKILL the ones being stopped and the rest."""
        self._hurry.set()

    @property
    def hurried(self) -> bool:
        return self._hurry.is_set()

    async def stop_all(self, stages: Sequence[Sequence[str]]) -> None:
        """Stop every child, stage by stage in reverse start order (names per stage), each stage in parallel."""
        self.stopping = True
        by_name = {child.spec.name: child for child in self.children}
        for stage in reversed(stages):
            members = [by_name[name] for name in stage if name in by_name]
            if members:
                await asyncio.gather(*(self.stop(child) for child in members))
        named = {name for stage in stages for name in stage}
        await asyncio.gather(*(self.stop(child) for child in self.children if child.spec.name not in named))

    async def stop(self, child: Child) -> None:
        """SIGTERM the child's process group, wait `stop_grace`, then SIGKILL; then sweep the group."""
        child.state = "stopping"
        process = child.process
        if process is not None and process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            if not await self._exited_within_grace(process):
                if self._hurry.is_set():
                    self._say(f"  {child.spec.name}: SIGKILL (second signal)")
                else:
                    self._say(f"  {child.spec.name} ignored SIGTERM for {self._stop_grace:g} s: SIGKILL")
                _signal_group(process.pid, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), KILL_WAIT)
        if process is not None:
            self._sweep(process)
        child.state = "stopped"
        self._on_change()

    async def _exited_within_grace(self, process: asyncio.subprocess.Process) -> bool:
        """Wait for `process` to exit, at most stop_grace and not past a `hurry`; True when it exited."""
        exited = asyncio.ensure_future(process.wait())
        hurried = asyncio.ensure_future(self._hurry.wait())
        try:
            await asyncio.wait({exited, hurried}, timeout=self._stop_grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            hurried.cancel()
        return process.returncode is not None

    def _sweep(self, process: asyncio.subprocess.Process) -> None:
        """SIGKILL what is left in the group of `process` (which has exited), once: right after its exit.

        Once: a later sweep of the same number could hit another group (see the module docstring).
        """
        if process.pid not in self._swept:
            self._swept.add(process.pid)
            _signal_group(process.pid, signal.SIGKILL)

    def log_tail(self, child: Child) -> str:
        try:
            tail = read_tail(child.log_path, LOG_TAIL_BYTES)
        except OSError:
            return f"no log at {child.log_path}"
        return f"log {child.log_path}:\n{tail}"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _linux_prctl() -> Callable[[int, int], int] | None:
    """libc's prctl on Linux (None elsewhere: macOS has no parent-death signal; stop_all still runs)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    function = libc.prctl
    function.argtypes = [ctypes.c_int, ctypes.c_ulong]
    function.restype = ctypes.c_int

    def prctl(option: int, value: int) -> int:
        return int(function(option, value))

    return prctl
