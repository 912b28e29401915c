"""`pop deploy`: start (or attach to) a POP, warm it, wait until it is healthy, register it with GeoDNS.

Every step that changes something has an undo, run in reverse order when a
later step fails: a half-deployed POP never stays in DNS and no orphan process
stays behind. :func:`deregister` is shared with `retire`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from ops.pop.peers import HTTP_TIMEOUT, edge_health, http
from ops.pop.process import (
    LOG_FILE,
    START_TIMEOUT,
    PopRecord,
    log_tail,
    read_record,
    spawn_edge,
    state_path,
    stop_process,
    write_record,
)
from ops.pop.steps import PopError, Step, wait_for
from ops.runtime import bindable, process_alive
from ops.settings import SECOND

# edge.routes.MAX_WARM_URLS: the POP refuses longer lists with a 400, so say it here first.
MAX_WARM_URLS: Final = 1_000
# The edge finishes in-flight requests for its shutdown_timeout (10 s by default)
# after SIGTERM; edge/cli.py gives its workers 5 s on top. So do we.
DEFAULT_STOP_GRACE: Final = 15 * SECOND


@dataclass(frozen=True, slots=True)
class DeployPlan:
    """The validated `deploy` arguments."""

    name: str
    region: str
    address: str
    port: int
    lat: float
    lon: float
    upstreams: tuple[str, ...]
    geodns_admin: str
    token: str
    predictor: str
    capacity: float
    weight: float
    run_dir: Path
    attach: bool
    edge_config: str
    purge_token: str
    health_timeout: float


class Deployment:
    """The deploy steps over one plan; `record` is set once the POP runs (started or attached)."""

    def __init__(self, plan: DeployPlan) -> None:
        self.plan = plan
        self.record = PopRecord(
            name=plan.name, region=plan.region, address=plan.address, port=plan.port, pid=None,
            geodns_admin=plan.geodns_admin, purge_token=plan.purge_token,
            log=str(plan.run_dir / plan.name / LOG_FILE), started_at=time.time(),
        )  # fmt: skip

    def steps(self) -> list[Step]:
        plan = self.plan
        where = f"{plan.address}:{plan.port}"
        start = (
            Step(f"attach to the POP already running at {where}", self.attach)
            if plan.attach
            else Step(f"start POP {plan.name} on {where}", self.start, self.stop)
        )
        warm_title = f"warm from {plan.predictor}/v1/warm/{plan.name}" if plan.predictor else "warm from the predictor"
        return [
            start,
            Step(warm_title, self.warm),
            Step(f"wait until {self.record.health_url} is healthy", self.healthy),
            Step(f"register {plan.name} with GeoDNS at {plan.geodns_admin}", self.register, self.deregister),
            Step("wait until GeoDNS sees it healthy (in rotation)", self.in_rotation),
        ]

    # Steps -----------------------------------------------------------------------
    def start(self) -> str:
        plan = self.plan
        previous = read_record(plan.run_dir, plan.name)
        if previous is not None and previous.pid is not None and process_alive(previous.pid):
            raise PopError(f"POP {plan.name} already runs as pid {previous.pid}: retire it first")
        if not bindable(plan.address, plan.port):
            raise PopError(f"{plan.address}:{plan.port} is in use (or not an address of this host)")
        command = [sys.executable, "-m", "ops.cli", "edge", "serve", "--pop", plan.name, "--host", plan.address,
                   "--port", str(plan.port), "--upstreams", ",".join(plan.upstreams),
                   "--capacity", str(plan.capacity)]  # fmt: skip
        if plan.edge_config:
            command += ["--config", plan.edge_config]
        # The token goes by environment, not argv: argv is world-readable in ps.
        environment = {**os.environ, "BOXOFFICE_EDGE_PURGE_TOKEN": plan.purge_token}
        log_path = Path(self.record.log)
        try:
            pid = spawn_edge(command, environment, log_path)
        except OSError as exc:
            raise PopError(f"cannot start {command[0]} (log {log_path}): {exc}") from None
        self.record = PopRecord(**{**asdict(self.record), "pid": pid})
        try:
            write_record(plan.run_dir, self.record)  # before waiting: a killed deploy still leaves a findable POP
        except OSError as exc:  # the POP runs and nothing would say where: stop it (this step is not done)
            self.stop()
            raise PopError(f"cannot write {state_path(plan.run_dir, plan.name)}: {exc}") from None

        def answering() -> str | None:
            if not process_alive(pid):
                raise _Exited()
            edge_health(self.record)
            return "answering"

        try:
            wait_for(answering, within=START_TIMEOUT, what="the POP did not answer")
        except _Exited:
            self._forget()
            raise PopError(f"the POP exited during startup; log {log_path}:\n{log_tail(log_path)}") from None
        except PopError as exc:
            self.stop()
            raise PopError(f"{exc}; log {log_path}:\n{log_tail(log_path)}") from None
        except KeyboardInterrupt:  # this step is not done, so rollback would not stop what it started
            self.stop()
            raise
        return f"pid {pid}, log {log_path}"

    def attach(self) -> str:
        document = edge_health(self.record)
        if document.get("pop") != self.plan.name:
            raise PopError(f"the POP at {self.record.url} calls itself {document.get('pop')!r}, not {self.plan.name!r}")
        write_record(self.plan.run_dir, self.record)
        return f"POP {self.plan.name} answers at {self.record.url} (not started here: never stopped here)"

    def stop(self) -> str:
        pid = self.record.pid
        if pid is None:
            return "nothing to stop (attached)"
        result = stop_process(pid, self.plan.name, DEFAULT_STOP_GRACE)
        self._forget()
        return result

    def warm(self) -> str:
        plan = self.plan
        if not plan.predictor:
            return "skipped: no --predictor given, so the POP starts cold"
        url = f"{plan.predictor}/v1/warm/{plan.name}"
        reply = http("GET", url)
        if reply.status != 200:
            raise PopError(f"the predictor answered {reply.status} for {url}: {reply.error_message()}")
        urls = warm_list(reply.json(url), url)
        reply = http("POST", f"{self.record.url}/_edge/warm", body={"urls": urls}, token=plan.purge_token,
                     timeout=max(HTTP_TIMEOUT, plan.health_timeout))  # fmt: skip
        if reply.status != 200:
            raise PopError(f"the POP refused the warm list ({reply.status}): {reply.error_message()}")
        counts = reply.json("the POP's /_edge/warm")
        shown = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in counts.items())
        return f"{len(urls)} URLs: {shown}"

    def healthy(self) -> str:
        def probe() -> str | None:
            document = edge_health(self.record)
            if document.get("pop") != self.plan.name:
                raise PopError(f"it calls itself {document.get('pop')!r}, not {self.plan.name!r}")
            if document.get("status") != "ok":
                raise PopError(f"status {document.get('status')!r}, upstreams {document.get('upstreams')}")
            upstreams = ", ".join(document.get("upstreams") or self.plan.upstreams)
            return f"status ok, capacity {document.get('capacity')}, upstreams {upstreams}"

        return wait_for(probe, within=self.plan.health_timeout, what="the POP did not report status ok")

    def register(self) -> str:
        plan = self.plan
        url = f"{plan.geodns_admin}/v1/pops/{plan.name}"
        existing = http("GET", url)
        if existing.status == 200:
            raise PopError(f"GeoDNS already has a POP {plan.name}: retire it first, or pick another --name")
        document = {"addresses": [plan.address], "lat": plan.lat, "lon": plan.lon, "capacity": plan.capacity,
                    "weight": plan.weight, "health_url": self.record.health_url}  # fmt: skip
        try:
            reply = http("PUT", url, body=document, token=plan.token)
        except (PopError, KeyboardInterrupt):
            # The PUT may have been applied with its answer lost (timeout, Ctrl-C): this step is not done,
            # so rollback would not deregister. The GET above found no POP of this name: the one there
            # now, if any, is ours to delete.
            with contextlib.suppress(PopError):
                self.deregister()
            raise
        if reply.status not in (200, 201):
            raise PopError(f"GeoDNS refused the registration ({reply.status}): {reply.error_message()}")
        return f"PUT {url} → {reply.status}"

    def deregister(self) -> str:
        return deregister(self.plan.geodns_admin, self.plan.name, self.plan.token)

    def in_rotation(self) -> str:
        url = f"{self.plan.geodns_admin}/v1/pops/{self.plan.name}"

        def probe() -> str | None:
            reply = http("GET", url)
            if reply.status != 200:
                raise PopError(f"GET {url} answered {reply.status}")
            document = reply.json(url)
            if not isinstance(document, dict) or document.get("healthy") is not True:
                raise PopError(
                    f"GeoDNS reports healthy={document.get('healthy') if isinstance(document, dict) else '?'}"
                )
            return f"healthy in GeoDNS; answers now include {self.plan.address}"

        return wait_for(probe, within=self.plan.health_timeout, what="GeoDNS did not see the POP healthy")

    def _forget(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            state_path(self.plan.run_dir, self.plan.name).unlink()


class _Exited(Exception):
    pass


def warm_list(document: Any, source: str) -> list[Any]:
    """Validate the predictor's warm list: `{"urls": [path | {"url": path, "priority": number}, …]}`."""
    urls = document.get("urls") if isinstance(document, dict) else None
    if not isinstance(urls, list):
        raise PopError(f"{source}: expected an object with a `urls` list")
    if len(urls) > MAX_WARM_URLS:
        raise PopError(f"{source}: {len(urls)} URLs, the POP takes at most {MAX_WARM_URLS}")
    for index, entry in enumerate(urls):
        path = entry.get("url") if isinstance(entry, dict) else entry
        priority = entry.get("priority", 0) if isinstance(entry, dict) else 0
        if not isinstance(path, str) or not path.startswith("/"):
            raise PopError(f"{source}: urls[{index}] is not a path starting with /")
        if isinstance(priority, bool) or not isinstance(priority, int | float):
            raise PopError(f"{source}: urls[{index}].priority is not a number")
    return urls


def deregister(geodns_admin: str, name: str, token: str) -> str:
    """DELETE the POP; a POP named by GeoDNS's config file cannot be deleted (409), so it is drained instead."""
    url = f"{geodns_admin}/v1/pops/{name}"
    reply = http("DELETE", url, token=token)
    if reply.status == 204:
        return f"DELETE {url} → 204"
    if reply.status == 404:
        return f"GeoDNS did not have POP {name}"
    if reply.status == 409:
        drained = http("POST", f"{url}/drain", token=token)
        if drained.status == 200:
            return f"drained (GeoDNS's config file names {name}; remove it there to delete it)"
        reply = drained
    raise PopError(f"GeoDNS refused ({reply.status}): {reply.error_message()}")
