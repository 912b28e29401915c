"""The POP's process and its state file: spawn it detached, find it again, stop it.

`deploy` writes ``RUN_DIR/NAME/pop.json`` (a :class:`PopRecord`, mode 0600: it
holds the POP's token) next to its log; `retire` reads it back. Signals go
only to a pid that still runs `edge serve` for that POP (pid reuse).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

from ops.pop.steps import POLL_INTERVAL, PopError
from ops.runtime import process_alive, read_tail
from ops.settings import SECOND

STATE_FILE: Final = "pop.json"
LOG_FILE: Final = "edge.log"
START_TIMEOUT: Final = 30 * SECOND  # a fresh interpreter importing aiohttp, uvloop and httptools on a busy host
LOG_TAIL_BYTES: Final = 2000
EXEC_WAIT: Final = 1 * SECOND  # bounds the wait for a spawned POP's exec (milliseconds)


@dataclass(frozen=True, slots=True)
class PopRecord:
    """What `deploy` leaves in RUN_DIR/NAME/pop.json for `retire` (and operators) to find."""

    name: str
    region: str
    address: str
    port: int
    pid: int | None  # None: attached to a POP deploy did not start
    geodns_admin: str
    purge_token: str
    log: str
    started_at: float

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    @property
    def health_url(self) -> str:
        return f"{self.url}/_edge/health"


# What each PopRecord field must hold (JSON has no other way to say it).
_RECORD_TYPES: Final[dict[str, type | tuple[type, ...]]] = {
    "name": str,
    "region": str,
    "address": str,
    "port": int,
    "pid": (int, type(None)),
    "geodns_admin": str,
    "purge_token": str,
    "log": str,
    "started_at": (int, float),
}


def state_path(run_dir: Path, name: str) -> Path:
    return run_dir / name / STATE_FILE


def read_record(run_dir: Path, name: str) -> PopRecord | None:
    path = state_path(run_dir, name)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        record = PopRecord(**document)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise PopError(f"cannot read {path}: {exc}") from None
    # Its pid is signalled and its address dialled: a field of another type is an error here, not a
    # TypeError (or a signal to a bool's pid 1) later.
    for field_name, kinds in _RECORD_TYPES.items():
        value = getattr(record, field_name)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise PopError(f"cannot read {path}: {field_name} is {value!r}")
    if record.pid is not None and record.pid <= 0:
        raise PopError(f"cannot read {path}: pid is {record.pid}")
    return record


def write_record(run_dir: Path, record: PopRecord) -> None:
    """Write atomically (temp file + rename), readable by the owner only: it holds the POP's token."""
    path = state_path(run_dir, record.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        json.dump(asdict(record), file, indent=2)
    temporary.replace(path)


def is_edge_process(pid: int, name: str) -> bool:
    """Guard against pid reuse: the process runs `edge serve` for POP `name` (True where /proc is missing)."""
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return not Path("/proc/self").exists()
    return b"edge" in arguments and b"serve" in arguments and name.encode() in arguments


def spawn_edge(command: Sequence[str], environment: dict[str, str], log_path: Path) -> int:
    """Start `command` in a session of its own (no controlling terminal), output to `log_path`; return its pid.

    posix_spawn rather than subprocess.Popen: the POP must outlive this command,
    and a Popen object would want to be waited for.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    pid = os.posix_spawn(command[0], list(command), environment, file_actions=actions, setsid=True)
    # posix_spawn may return before the child's exec is complete: until then its /proc cmdline, which
    # is_edge_process checks before any signal, reads empty or as ours (a vfork shares our memory).
    with contextlib.suppress(OSError):
        cmdline, ours = Path(f"/proc/{pid}/cmdline"), Path("/proc/self/cmdline").read_bytes()
        deadline = time.monotonic() + EXEC_WAIT
        while cmdline.read_bytes() in (b"", ours) and time.monotonic() < deadline:
            time.sleep(0.001)
    return pid


def stop_process(pid: int, name: str, grace: float) -> str:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL. Returns how it ended.

    SIGTERM goes to the POP's main process, which stops its ``--workers`` itself;
    SIGKILL, and a last sweep once it has exited, go to its whole process group
    (`spawn_edge` made it a session leader): a worker stuck past the main
    process's own wait for it, or one a SIGKILLed main process could not stop,
    would otherwise stay behind holding the port.
    """
    if not process_alive(pid):
        return f"pid {pid} had already exited"
    if not is_edge_process(pid, name):
        raise PopError(f"pid {pid} is no longer POP {name}'s edge process (reused?); not signalling it")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    try:
        while time.monotonic() < deadline:
            if not process_alive(pid):
                _kill_group(pid)
                return f"pid {pid} exited after SIGTERM"
            time.sleep(POLL_INTERVAL)
    except KeyboardInterrupt:  # a Ctrl-C while we wait out the grace escalates; it never leaves the POP behind
        _kill_group(pid)
        raise
    _kill_group(pid)
    deadline = time.monotonic() + START_TIMEOUT
    while process_alive(pid):
        if time.monotonic() >= deadline:
            raise PopError(f"pid {pid} survived SIGKILL for {START_TIMEOUT:g} s")
        time.sleep(POLL_INTERVAL)
    return f"pid {pid} did not exit within {grace:g} s of SIGTERM: killed"


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of the group `spawn_edge` started (nothing, usually)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def log_tail(path: Path) -> str:
    try:
        return read_tail(path, LOG_TAIL_BYTES)
    except OSError:
        return "(no log)"
