"""`boxoffice up`: the whole stack on one machine, supervised until Ctrl-C.

The order of events: check the ports, write the location database and the
GeoDNS config, then start the stages of :func:`ops.up.plan.plan_stack` one
after the other (each stage's services in parallel, one progress line per
service as it answers its health check). Between the shards and the POPs the
shard map is PUT to the origin, so the POPs' first map already routes by it.
Meanwhile, once the origin answers, `up` reads back which day its demo
catalog starts on and, on a first start (or a later day's), generates the
predictor's workload over that catalog and trains its models
(:mod:`ops.up.training`); once GeoDNS reports every POP healthy and training
is done, the predictor starts (last: it pushes warm lists to the POPs; it
replays its workload's log up to now before it answers), `up` picks the
first of the workload's demo users the predictor has hints for, prints what
to try and supervises until SIGINT or SIGTERM, then stops the stages in
reverse order (a second SIGINT or SIGTERM SIGKILLs them without waiting out
``stop_grace``).
The state file (:mod:`ops.up.state`) follows every change, for `boxoffice
status`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import socket
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

import aiohttp

from ops.localgeo import LocationDatabaseError, client_subnet, write_location_database
from ops.runtime import bindable
from ops.settings import SettingsError, add_arguments, load
from ops.up.plan import (
    FAILOVER_BOUND_SECONDS,
    STALENESS_BOUND_SECONDS,
    Secrets,
    StackPlan,
    geodns_config_text,
    plan_stack,
    shard_map_document,
    try_lines,
)
from ops.up.settings import UpSettings
from ops.up.state import StateError, process_running, read_state, write_state
from ops.up.supervisor import Child, RestartPolicy, StartError, Supervisor
from ops.up.traffic import Traffic
from ops.up.training import (
    TrainingError,
    TrainingPlan,
    catalog_shift,
    catalog_start,
    demo_users,
    read_marker,
    reusable,
    train,
    training_plan,
)
from origin.catalog import build_catalog

DESCRIPTION = """\
Run the whole boxoffice stack on this machine: the origin primary (SQLite in
the data directory, demo catalog seeded), one shard per region, one POP per
region on its own loopback address (127.0.0.2, .3, …), GeoDNS on port 5353
with a generated location database (client subnet 100.64.N.0/24 is region N's
city), and the predictor sidecar (on the first start of a day it trains on a small
generated workload of yesterday and today over the origin's demo catalog, and
replays that workload's activity up to now so the demo has live users; later
starts that day reuse the models, --retrain redoes them). Restarts a crashed service,
stops everything on Ctrl-C. Settings come from flags, then BOXOFFICE_UP_*
environment variables, then the [up] table of the --config file.
"""

HTTP_TIMEOUT: Final = 10.0
# GeoDNS needs health_rise (2) checks a second apart to call a POP healthy.
ROTATION_TIMEOUT: Final = 15.0
EVENT_PAGE: Final = 1_000  # origin.store.base.MAX_PAGE_ROWS: the largest page /v1/events serves


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(parser, UpSettings)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "boxoffice up") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    try:
        settings = load(UpSettings, "up", args=args)
    except SettingsError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_up(settings, prog))
    except KeyboardInterrupt:  # a Ctrl-C before the handlers were installed
        return 130


def say(line: str) -> None:
    print(line, flush=True)


async def _up(settings: UpSettings, prog: str) -> int:
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(StateError):
        previous = read_state(data_dir)
        if previous.get("pid") != os.getpid() and process_running(previous.get("pid")):
            print(f"{prog}: a stack already runs from {data_dir} (pid {previous['pid']}); "
                  "stop it first or pick another --data-dir", file=sys.stderr)  # fmt: skip
            return 1
    with_predictor = settings.predictor
    now = datetime.now(UTC)
    stack_secrets = Secrets(*(secrets.token_urlsafe(24) for _ in range(4)))
    plan = plan_stack(settings, python=sys.executable, secrets=stack_secrets, with_predictor=with_predictor,
                      catalog_start=catalog_start(now))  # fmt: skip
    busy = _busy_ports(plan)
    if busy:
        print(f"{prog}: {'; '.join(busy)} (another stack? use --base-port N)", file=sys.stderr)
        return 1
    try:
        await asyncio.to_thread(write_location_database, plan.location_database)
    except LocationDatabaseError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    plan.geodns_config.write_text(geodns_config_text(plan, log_level=settings.log_level), encoding="utf-8")

    say(f"boxoffice up: starting the stack in {data_dir} (logs in {data_dir / 'logs'})")
    if not with_predictor:
        say("  predictor: off (--no-predictor)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        stack = _Stack(settings, plan, session, stack_secrets, with_predictor and settings.predictor_models is None)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stack.on_signal, stop)
        try:
            return await stack.run(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


class _Stack:
    def __init__(
        self,
        settings: UpSettings,
        plan: StackPlan,
        session: aiohttp.ClientSession,
        keys: Secrets,
        train_predictor: bool,
    ) -> None:
        self.settings = settings
        self.plan = plan
        self.session = session
        self.secrets = keys
        self.train_predictor = train_predictor  # generate and train in DATA_DIR/predictor (unless reusable)
        self.training: TrainingPlan | None = None  # known once the origin said which catalog it holds
        self.predictor_up = False
        self.demo_user = ""
        self.demo_user_hinted = False
        self.sample_event: dict[str, str] = {}  # region → its first event, for the printed curl lines
        self.data_dir = settings.data_dir.resolve()
        self.state = "starting"
        self.started_at = time.time()
        self.supervisor = Supervisor(
            session=session, cwd=self.data_dir, log_dir=self.data_dir / "logs",
            policy=RestartPolicy(settings.max_restarts, settings.restart_window),
            start_timeout=settings.start_timeout, stop_grace=settings.stop_grace,
            on_change=self.write_state, say=say,
        )  # fmt: skip
        self.watchers: list[asyncio.Task[None]] = []

    def on_signal(self, stop: asyncio.Event) -> None:
        """SIGINT or SIGTERM: the first stops the stack in order; a second one (or one while `up` already
        stops after a failed start) SIGKILLs what still runs."""
        first = not stop.is_set() and not self.supervisor.stopping
        stop.set()
        if not first and not self.supervisor.hurried:
            say("boxoffice up: second signal: killing the services still running")
            self.supervisor.hurry()

    async def run(self, stop: asyncio.Event) -> int:
        try:
            return await self._run(stop)
        finally:
            await self.stop_children()  # only does something when _run failed before stopping them
            self.state = "stopped"
            self.write_state()
            say("boxoffice up: stopped")

    async def _run(self, stop: asyncio.Event) -> int:
        code = 0
        async with asyncio.TaskGroup() as group:
            starting = group.create_task(self.start(group))
            signalled = group.create_task(stop.wait())
            await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done() and starting.result():
                self.state = "running"
                self.write_state()
                lines = try_lines(
                    self.plan, predictor_up=self.predictor_up, demo_user=self.demo_user,
                    demo_user_hinted=self.demo_user_hinted, sample_event=self.sample_event,
                )  # fmt: skip
                for line in lines:
                    say(line)
                say(f"Staleness bound {STALENESS_BOUND_SECONDS:g} s, DNS failover bound {FAILOVER_BOUND_SECONDS:g} s. "
                    "Stop with Ctrl-C.")  # fmt: skip
                traffic = None
                if self.settings.traffic:
                    pops = [spec for spec in self.plan.services if spec.kind == "pop"]
                    users = Traffic(self.session, pops, self.settings.traffic_rate, random.Random())
                    traffic = group.create_task(users.run(say))
                    say(f"  synthetic users: {self.settings.traffic_rate:g} actions/s through {len(pops)} POPs")
                await signalled
                if traffic is not None:
                    traffic.cancel()
                    say(f"  {users.counts.line()}")
            elif not starting.done():
                starting.cancel()  # signalled while starting
            else:
                code = 1
            signalled.cancel()
            await self.stop_children()
            for watcher in self.watchers:
                watcher.cancel()
        return code

    async def stop_children(self) -> None:
        """Stop every child in reverse start order; once (later calls return at once)."""
        if self.supervisor.stopping:
            return
        say("boxoffice up: stopping")
        self.state = "stopping"
        self.write_state()
        await self.supervisor.stop_all([[spec.name for spec in stage] for stage in self.plan.stages])

    async def start(self, group: asyncio.TaskGroup) -> bool:
        """Start every stage; False (after saying why) when a service does not come up.

        Training (when needed) runs meanwhile in a task of its own, from when the origin answers
        (it says which catalog it holds) until just before the predictor's stage; when it fails,
        the stack runs without the predictor.
        """
        trained: asyncio.Task[bool] | None = None
        try:
            for stage in self.plan.stages:
                if trained is None and self.train_predictor and stage[0].kind != "origin":
                    trained = asyncio.create_task(self.prepare_predictor())
                if stage[0].kind == "pop":
                    await self.publish_shard_map()
                if stage[0].kind == "predictor" and trained is not None and not await trained:
                    continue
                children = [await self.supervisor.start(spec) for spec in stage]
                outcomes = await asyncio.gather(*(self.announce(child) for child in children))
                self.watchers += [
                    group.create_task(self.supervisor.watch(child))
                    for child, up in zip(children, outcomes, strict=True)
                    if up
                ]
                if stage[0].kind == "geodns":
                    await self.wait_in_rotation()
                elif stage[0].kind == "predictor" and all(outcomes):
                    self.predictor_up = True
                    self.demo_user, self.demo_user_hinted = await self.find_demo_user(stage[0].url)
        except (StartError, _PublishError) as exc:
            say(f"boxoffice up: {exc}")
            return False
        finally:
            if trained is not None and not trained.done():  # stopped or failed before the predictor's turn
                trained.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await trained
        return True

    async def prepare_predictor(self) -> bool:
        """Models for the origin's catalog and today's window: reused when the marker fits, else trained."""
        start = await self.origin_catalog_start()
        if start is None:
            return False
        plan = training_plan(self.settings, python=sys.executable, now=datetime.now(UTC), catalog=start)
        self.training = plan
        if not self.settings.retrain and reusable(read_marker(plan), plan.inputs):
            say(f"  {'predictor training':<22} reusing the models in {plan.directory} (--retrain to redo)")
            return True
        say(f"  {'predictor training':<22} generating a workload of {self.settings.train_users} users over the "
            f"origin's catalog (from {start}), then training (the predictor starts when it is done)")  # fmt: skip
        return await self.train(plan)

    async def origin_catalog_start(self) -> str | None:
        """The day the origin's demo catalog starts on (RFC 3339), read from its first event; None (after
        saying why) when the origin holds no demo catalog of these settings."""
        settings = self.settings
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        built = await asyncio.to_thread(
            build_catalog, settings.demo_seed, venues=settings.demo_venues, events=settings.demo_events, start=today
        )
        first = built.events[0]
        url = f"{self.plan.origin_url}/v1/events/{quote(first.id)}"
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT)) as response:
                document = await response.json() if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            say(f"  {'predictor':<22} not started: cannot read {url}: {exc}")
            return None
        event = document.get("event") if isinstance(document, dict) else None
        served = event.get("starts_at") if isinstance(event, dict) else None
        shift = catalog_shift(served, first.starts_at) if isinstance(served, str) else None
        if shift is None:
            say(f"  {'predictor':<22} not started: the origin's {first.id} is not the demo catalog's of seed "
                f"{settings.demo_seed} ({url} answered {document!r:.200})")  # fmt: skip
            return None
        return catalog_start(today + shift)

    async def train(self, plan: TrainingPlan) -> bool:
        """Generate and train; False (after saying why) when it failed."""
        try:
            marker = await train(plan, say)
        except TrainingError as exc:
            say(f"  {'predictor':<22} not started: training failed: {exc}")
            return False
        except OSError as exc:
            say(f"  {'predictor':<22} not started: cannot write {plan.directory}: {exc}")
            return False
        auc = marker.get("purchase_roc_auc")
        say(f"  {'predictor training':<22} done in {marker['seconds']:.1f} s"
            + ("" if auc is None else f" (purchase model test ROC AUC {auc:.2f})"))  # fmt: skip
        return True

    async def find_demo_user(self, predictor_url: str) -> tuple[str, bool]:
        """The first of the workload's demo users with hints now (True), else the first (False); "" when none."""
        candidates = [] if self.training is None else await asyncio.to_thread(demo_users, self.training)
        for user in candidates:
            try:
                async with self.session.get(f"{predictor_url}/v1/hints/{quote(user, safe='')}",
                                            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT)) as response:  # fmt: skip
                    document = await response.json() if response.status == 200 else None
            except (aiohttp.ClientError, TimeoutError, ValueError):
                break
            if isinstance(document, dict) and document.get("hints"):
                return user, True
        return (candidates[0], False) if candidates else ("", False)

    async def announce(self, child: Child) -> bool:
        """Wait until `child` is healthy and say so; False when an optional child did not come up."""
        spec = child.spec
        try:
            seconds = await self.supervisor.wait_healthy(child)
        except StartError as exc:
            if not spec.optional:
                raise
            self.supervisor.forget(child)
            if child.process is not None and child.process.returncode is None:
                await self.supervisor.stop(child)
            reason = str(exc).splitlines()[-1]
            say(f"  {spec.name:<22} not started: {reason} (the stack runs without it)")
            return False
        where = (
            spec.url if spec.kind != "geodns" else f"{spec.address}:{spec.port} (UDP+TCP), admin {self.plan.admin_url}"
        )
        say(f"  {spec.name:<22} healthy  {where}  pid {child.pid}  ({seconds:.1f} s)")
        return True

    async def publish_shard_map(self) -> None:
        """PUT the map routing each region's events to its shard (what `origin manager` would publish)."""
        events_by_region = {region: await self.region_events(region) for region in self.settings.regions}
        self.sample_event = {region: events[0] for region, events in events_by_region.items() if events}
        document = shard_map_document(self.plan, events_by_region)
        url = f"{self.plan.origin_url}/v1/shardmap"
        headers = {"Authorization": f"Bearer {self.secrets.shardmap_token}", "Content-Type": "application/json"}
        try:
            async with self.session.put(url, data=json.dumps(document), headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT)) as response:  # fmt: skip
                body = await response.text()
                if response.status not in (200, 201):
                    raise _PublishError(f"the origin refused the shard map ({response.status}): {body[:500]}")
                answer = json.loads(body)
                version = answer.get("version") if isinstance(answer, dict) else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise _PublishError(f"cannot publish the shard map to {url}: {exc}") from exc
        counts = ", ".join(f"{region} {len(events)}" for region, events in events_by_region.items())
        say(f"  {'shard map':<22} published  version {version}, events per shard: {counts}")

    async def region_events(self, region: str) -> list[str]:
        events: list[str] = []
        after = ""
        while True:
            url = f"{self.plan.origin_url}/v1/events?region={region}&limit={EVENT_PAGE}" + (
                f"&after={quote(after, safe='')}" if after else ""
            )
            try:
                async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT)) as response:
                    if response.status != 200:
                        raise _PublishError(f"GET {url} answered {response.status}")
                    page = await response.json()
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise _PublishError(f"cannot list the events of {region}: {exc}") from exc
            previous = after
            try:  # the origin's answer is data from the network: a wrong shape is a clear error, not a crash
                events += [event["id"] for event in page["events"]]
                after = page.get("next_after") or ""
            except (KeyError, TypeError, AttributeError) as exc:
                raise _PublishError(f"GET {url} answered a listing not of the API's shape ({exc!r}): {page!r:.200}") \
                    from None  # fmt: skip
            if not isinstance(after, str) or not all(isinstance(event, str) for event in events):
                raise _PublishError(f"GET {url} answered event ids or a next_after that are not strings")
            if after and after == previous:  # the same page again: following it would never end
                raise _PublishError(f"GET {url} answered its own cursor {after!r} as the next page")
            if not after:
                return events

    async def wait_in_rotation(self) -> None:
        """Wait until GeoDNS calls every POP healthy, so the first `dig` already steers."""
        url = f"{self.plan.admin_url}/v1/pops"
        deadline = time.monotonic() + ROTATION_TIMEOUT
        pops: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT)) as response:
                    pops = await response.json()
                healthy = _healthy_pops(pops)
                if healthy is not None and healthy[0] == healthy[1]:
                    say(f"  {'geodns rotation':<22} all {healthy[1]} POPs healthy")
                    return
            await asyncio.sleep(0.25)
        raise StartError(f"GeoDNS did not report every POP healthy within {ROTATION_TIMEOUT:g} s: {pops}")

    def write_state(self) -> None:
        services = []
        for child in self.supervisor.children:
            spec = child.spec
            services.append({
                "name": spec.name, "kind": spec.kind, "pid": child.pid, "pgid": child.pid, "url": spec.url,
                "health_url": spec.health_url, "address": spec.address, "port": spec.port, "region": spec.region,
                "state": child.state, "restarts": len(child.restarts), "log": str(child.log_path),
                "pids": child.pids,
            })  # fmt: skip
        write_state(self.data_dir, {
            "pid": os.getpid(), "state": self.state, "started_at": self.started_at, "origin": self.plan.origin_url,
            "dns": {"host": self.plan.dns_host, "port": self.plan.dns_port, "admin": self.plan.admin_url},
            "subnets": {region: client_subnet(region) for region in self.settings.regions},
            "predictor": {"up": self.predictor_up, "demo_user": self.demo_user,
                          "demo_user_hinted": self.demo_user_hinted},
            "services": services,
        })  # fmt: skip


class _PublishError(RuntimeError):
    """The shard map could not be built or stored."""


def _healthy_pops(document: Any) -> tuple[int, int] | None:
    """(healthy, total) from GeoDNS's GET /v1/pops, which lists POPs as a list or an id-keyed object."""
    pops = document.get("pops", document) if isinstance(document, dict) else document
    entries = list(pops.values()) if isinstance(pops, dict) else pops
    if not isinstance(entries, list) or not entries:
        return None
    healthy = sum(1 for entry in entries if isinstance(entry, dict) and entry.get("healthy") is True)
    return healthy, len(entries)


def _busy_ports(plan: StackPlan) -> list[str]:
    """Every (address, port) of the plan that cannot be bound now, named."""
    problems = []
    for spec in plan.services:
        kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if spec.kind == "geodns" else (socket.SOCK_STREAM,)
        checks: list[tuple[str, int, int]] = [(spec.address, spec.port, kind) for kind in kinds]
        if spec.kind == "geodns":
            checks.append(("127.0.0.1", int(plan.admin_url.rpartition(":")[2]), socket.SOCK_STREAM))
        for address, port, kind in checks:
            if not bindable(address, port, kind):
                problems.append(f"{address}:{port}/{'udp' if kind == socket.SOCK_DGRAM else 'tcp'} "
                                f"({spec.name}) is in use")  # fmt: skip
    return problems
