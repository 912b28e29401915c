"""Process plumbing shared by the services: the event loop, signals, logging, processes, ports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a service's main coroutine on uvloop (asyncio's own loop where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


async def until_signalled() -> None:
    """Return when the process receives SIGINT or SIGTERM (handlers removed afterwards)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)


def configure_logging(level: str) -> None:
    """One log format for every service: time, level, logger, message, on stderr."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone; our own exited child is reaped here)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): kill(0) is all we know
    return stat.rpartition(")")[2].split()[0] != "Z"


def bindable(address: str, port: int, kind: int = socket.SOCK_STREAM) -> bool:
    """True when (address, port) can be bound now, for TCP (`kind` SOCK_STREAM) or UDP (SOCK_DGRAM).

    TCP probes with SO_REUSEADDR, as the services bind: connections of an earlier run in TIME_WAIT do not count.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, kind) as probe:
        if kind == socket.SOCK_STREAM:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def read_tail(path: Path, limit: int) -> str:
    """The last `limit` bytes of the file at `path`, decoded leniently and stripped. Raises OSError."""
    with path.open("rb") as file:
        file.seek(max(0, file.seek(0, os.SEEK_END) - limit))
        return file.read().decode("utf-8", "replace").strip()
