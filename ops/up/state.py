"""The state file `boxoffice up` keeps in its data directory, for `boxoffice status` (and tests).

``DATA_DIR/stack.json``, rewritten atomically (temporary file, rename) on
every start, restart and stop::

    {"version": 1, "pid": 4242, "state": "running",        # starting, running, stopping, stopped
     "started_at": 1764115200.0, "origin": "http://127.0.0.1:8100",
     "dns": {"host": "127.0.0.1", "port": 5353, "admin": "http://127.0.0.1:8053"},
     "subnets": {"eu-west": "100.64.3.0/24", …},           # the client subnets of ops.localgeo
     "services": [{"name": "pop/eu-west", "kind": "pop", "pid": 4300, "pgid": 4300,
                   "url": "http://127.0.0.2:8081", "health_url": "…/_edge/health",
                   "address": "127.0.0.2", "port": 8081, "region": "eu-west",
                   "state": "running", "restarts": 0, "log": "…/logs/pop-eu-west.log"}, …]}

No secret goes in it (tokens reach the children by environment only).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from ops.runtime import process_alive

STATE_FILE: Final = "stack.json"
STATE_VERSION: Final = 1


class StateError(RuntimeError):
    """The state file is missing or unreadable; the message says which and where."""


def state_path(data_dir: Path) -> Path:
    return data_dir / STATE_FILE


def write_state(data_dir: Path, document: Mapping[str, Any]) -> None:
    path = state_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"version": STATE_VERSION, **document}, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)


def read_state(data_dir: Path) -> dict[str, Any]:
    """The document `up` last wrote. Raises StateError when there is none or it is not one."""
    path = state_path(data_dir)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StateError(f"no stack state at {path}: is `boxoffice up --data-dir {data_dir}` running?") from None
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read {path}: {exc}") from None
    if not isinstance(document, dict) or document.get("version") != STATE_VERSION:
        raise StateError(f"{path} is not a boxoffice up state file (version {STATE_VERSION})")
    if not isinstance(document.get("services"), list):
        raise StateError(f"{path} has no services list")
    return document


def process_running(pid: object) -> bool:
    """True while `pid` (an int) names a live, non-zombie process."""
    return isinstance(pid, int) and pid > 0 and process_alive(pid)
