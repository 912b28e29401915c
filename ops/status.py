"""`boxoffice status`: the local stack's services, their health, POP hit ratios and shard sync lag.

Reads the state file `boxoffice up` keeps (``DATA_DIR/stack.json``), probes
every service's health URL once (in parallel, each bounded by
:data:`PROBE_TIMEOUT`) and prints one row per service::

    SERVICE               PID    URL                       HEALTH  DETAIL
    origin                4301   http://127.0.0.1:8100     up      feed head 7065380e9b38:3770
    shard/eu-west-1       4310   http://127.0.0.1:8111     up      lag 0.0 s (0 records), 78 events
    pop/eu-west           4320   http://127.0.0.3:8081     up      hit ratio 0.83, 48 requests, load 1.0/s
    geodns                4330   dns://127.0.0.1:5353      up      3/3 POPs healthy
    predictor             4340   http://127.0.0.1:8200     up      models purchase v1, demand v1, 8085 users, 0 events

HEALTH is ``up`` (the health URL answered 200), ``degraded`` (it answered
otherwise: a lagging shard's 503, a POP whose upstreams are all open),
``down`` (no answer, or no process) or ``restarting``. The exit status is 0
when every service is up, 1 when any is not (or `up` itself is not running),
2 on bad arguments or no state file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp

from ops.up.state import StateError, process_running, read_state

PROBE_TIMEOUT: Final = 2.0  # loopback health endpoints answer in milliseconds
MAX_HEALTH_BYTES: Final = 1024 * 1024  # a health document is a few KiB; a bigger answer is not one
COLUMNS: Final = ("SERVICE", "PID", "URL", "HEALTH", "DETAIL")


@dataclass(frozen=True, slots=True)
class Row:
    service: str
    pid: str
    url: str
    health: str  # up, degraded, down, restarting
    detail: str

    def cells(self) -> tuple[str, ...]:
        return (self.service, self.pid, self.url, self.health, self.detail)


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Show the services of the stack `boxoffice up` runs from DATA_DIR, with their health."
    )
    parser.add_argument("--data-dir", type=Path, default=Path("var/stack"), help="as given to `boxoffice up`")
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON list instead of a table")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "boxoffice status") -> int:
    args = build_parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        state = read_state(args.data_dir.resolve())
    except StateError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    rows = asyncio.run(collect(state))
    supervisor_alive = process_running(state.get("pid")) and state.get("state") in ("starting", "running")
    if args.json:
        print(json.dumps([dict(zip(COLUMNS, row.cells(), strict=True)) for row in rows], indent=2))
    else:
        print(f"boxoffice up (pid {state.get('pid')}): {state.get('state') if supervisor_alive else 'not running'}")
        print(render_table(rows))
    healthy = supervisor_alive and all(row.health == "up" for row in rows)
    return 0 if healthy else 1


async def collect(state: Mapping[str, Any]) -> list[Row]:
    """One row per service of `state`, each from one health probe."""
    services = [service for service in state["services"] if isinstance(service, dict)]
    async with aiohttp.ClientSession() as session:
        return list(await asyncio.gather(*(_row(session, service) for service in services)))


async def _row(session: aiohttp.ClientSession, service: Mapping[str, Any]) -> Row:
    name, pid = str(service.get("name", "?")), service.get("pid")
    url = str(service.get("url", ""))
    shown_pid = str(pid) if isinstance(pid, int) else "-"
    if service.get("state") == "restarting":
        return Row(name, shown_pid, url, "restarting", f"restarts {service.get('restarts', 0)}")
    if not process_running(pid):
        why = "failed: gave up restarting" if service.get("state") == "failed" else "no process"
        return Row(name, shown_pid, url, "down", f"{why}; log {service.get('log', '?')}")
    status, document = await _probe(session, str(service.get("health_url", "")))
    if status is None:
        return Row(name, shown_pid, url, "down", f"no answer from {service.get('health_url')}")
    health = "up" if status == 200 else "degraded"
    return Row(name, shown_pid, url, health, describe(str(service.get("kind", "")), status, document))


def describe(kind: str, status: int, document: Any) -> str:
    """The DETAIL cell for one service's health document (pure)."""
    if not isinstance(document, dict):
        return f"HTTP {status}"
    if kind == "pop":
        ratio = document.get("hit_ratio")
        shown = _number(ratio, "{:.2f}")
        text = f"hit ratio {shown}, {document.get('requests', 0)} requests, load {document.get('load', 0)}/s"
        if document.get("status") != "ok":
            text += f", status {document.get('status')}"
        return text
    if kind == "shard":
        raw_lag = document.get("lag")
        lag: dict[str, Any] = raw_lag if isinstance(raw_lag, dict) else {}
        seconds = lag.get("seconds")
        shown = _number(seconds, "{:.1f} s")
        events = document.get("events")
        count = len(events) if isinstance(events, list) else "?"
        text = f"lag {shown} ({lag.get('records', '?')} records), {count} events"
        if document.get("state"):
            text += f", {document.get('state')}"
        return text
    if kind == "origin":
        return f"feed head {document.get('head', '?')}"
    if kind == "predictor":
        raw_models = document.get("models")
        models: dict[str, Any] = raw_models if isinstance(raw_models, dict) else {}
        shown_models = ", ".join(
            f"{name} v{version}" if isinstance(version, int) else f"{name} none" for name, version in models.items()
        )
        text = (f"models {shown_models or '?'}, {document.get('users', '?')} users, "
                f"{document.get('events_applied', '?')} events ingested")  # fmt: skip
        if document.get("status") != "ok":
            text += f", status {document.get('status')}"
        return text
    if kind == "publisher":
        groups = document.get("groups")
        count = len(groups) if isinstance(groups, dict) else "?"
        text = f"stream {document.get('stream', '?')} at {document.get('checkpoint') or '-'}, {count} groups"
        return text if document.get("caught_up") is True else text + ", catching up"
    if kind == "geodns":
        if isinstance(document.get("pops"), int) and isinstance(document.get("healthy_pops"), int):
            return f"{document['healthy_pops']}/{document['pops']} POPs healthy"
        return str(document.get("status", f"HTTP {status}"))
    return str(document.get("status", f"HTTP {status}"))


def _number(value: Any, form: str) -> str:
    """`value` in `form` when it is a number; "-" when absent, "?" when the service sent something else.

    Health documents come from the network (or from whatever now listens on a port the state file
    names): a wrong type shows as "?", it never ends `status` with a traceback.
    """
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "?"
    return form.format(value)


def render_table(rows: Sequence[Row]) -> str:
    """Rows under COLUMNS, each column as wide as its widest cell, separated by two spaces."""
    table = [COLUMNS, *(row.cells() for row in rows)]
    widths = [max(len(line[column]) for line in table) for column in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in table]
    return "\n".join(lines)


async def _probe(session: aiohttp.ClientSession, url: str) -> tuple[int | None, Any]:
    if not url.startswith(("http://", "https://")):
        return None, None
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)) as response:
            body = await response.content.read(MAX_HEALTH_BYTES)
            try:
                document = json.loads(body)
            except ValueError:
                document = None
            return response.status, document
    except (aiohttp.ClientError, TimeoutError):
        return None, None
