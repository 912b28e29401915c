"""End-to-end test 1 of issue 7: the whole stack from `boxoffice up`, with the clients users run.

One `boxoffice up` serves the module (tests/e2e/conftest.py), and the tests
run in file order against it: DNS steering with the real `dig`, reads and
cache hits through each region's POP, a purchase at the origin showing at the
POP within the staleness bound, `boxoffice status` parsed, a stopped POP
leaving the DNS answers within the failover bound, a shard killed under load
with no failed request (and `up` restarting it), and finally Ctrl-C leaving
no process of the stack behind. No test asserts on time except the bounds
the stack itself promises, and those only as polling deadlines.

A few pure checks of the plan come first; they need no processes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ops.status import Row, describe, render_table
from ops.up.plan import FAILOVER_BOUND_SECONDS, SITE, STALENESS_BOUND_SECONDS, Secrets, plan_stack, shard_map_document
from ops.up.settings import UpSettings
from ops.up.supervisor import RestartPolicy
from origin.metadata import validate_placement
from tests.e2e.conftest import REGIONS, REPO, Stack

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
HTTP_TIMEOUT = 10.0
POLL = 0.1
RESTART_DEADLINE = 60.0  # backoff 0.5 s, then a fresh interpreter and a shard bootstrap on a busy host


# Pure checks ---------------------------------------------------------------------------------


def test_plan_gives_every_service_its_own_port_and_a_valid_shard_map() -> None:
    settings = UpSettings(data_dir=Path("/tmp/boxoffice-plan"), base_port=30_000, regions=REGIONS)
    plan = plan_stack(settings, python=sys.executable, secrets=Secrets("a", "b", "c", "d"), with_predictor=False)
    endpoints = [(spec.address, spec.port) for spec in plan.services]
    assert len(endpoints) == len(set(endpoints))
    assert [spec.address for spec in plan.services if spec.kind == "pop"] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert all("a" not in spec.command for spec in plan.services)  # secrets travel by environment only
    document = shard_map_document(plan, {"eu-west": ["evt-2", "evt-1"], "na-east": ["evt-3"]})
    shards, events, origin = validate_placement(document)  # what the origin checks on PUT
    assert origin == plan.origin_url
    assert events["evt-1"] == {"eu-west": ["eu-west-1", "origin"]}
    assert shards["ap-northeast-1"]["events"] == []


def test_restart_policy_backs_off_then_gives_up() -> None:
    policy = RestartPolicy(max_restarts=3, window=60.0)
    assert policy.delay([], now=100.0) == 0.5
    assert policy.delay([99.0, 99.5], now=100.0) == 2.0
    assert policy.delay([98.0, 99.0, 99.5], now=100.0) is None
    assert policy.delay([10.0, 20.0, 30.0], now=100.0) == 0.5  # restarts outside the window are forgiven


def test_status_table_lines_up_columns() -> None:
    rows = [Row("pop/eu-west", "12", "http://127.0.0.3:8081", "up", describe("pop", 200, {"hit_ratio": 0.5,
            "requests": 4, "load": 1.0, "status": "ok"}))]  # fmt: skip
    table = render_table(rows).splitlines()
    assert table[0].index("HEALTH") == table[1].index("up")
    assert "hit ratio 0.50" in table[1]


# Helpers for the running stack -----------------------------------------------------------------


def dig_addresses(stack: Stack, subnet: str) -> list[str]:
    """The A records `dig` prints for the site, asked with an EDNS client subnet."""
    path = shutil.which("dig")
    if path is None:
        pytest.fail("`dig` is not installed: the end-to-end tests need it (apt-get install bind9-dnsutils)")
    dns = stack.state()["dns"]
    result = subprocess.run(
        [path, f"@{dns['host']}", "-p", str(dns["port"]), SITE, "A", f"+subnet={subnet}", "+short", "+tries=1",
         "+time=2"], capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return [line for line in result.stdout.split() if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", line)]


def http(method: str, url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], Any]:  # fmt: skip
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json",
                                                                             **(headers or {})})  # fmt: skip
    try:
        with _NO_PROXY.open(request, timeout=HTTP_TIMEOUT) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null")


def region_item(pop_url: str, region: str, index: int = 0) -> tuple[str, str]:
    """(event id, item id) of the `index`-th event of `region`, read through the POP."""
    status, _, listing = http("GET", f"{pop_url}/v1/events?region={region}&limit=20")
    assert status == 200, listing
    event_id = listing["events"][index]["id"]
    status, _, page = http("GET", f"{pop_url}/v1/events/{event_id}")
    assert status == 200, page
    return event_id, page["items"][0]["id"]


def poll(deadline_seconds: float, probe: Any) -> Any:
    """Call `probe` until it returns something truthy or the deadline passes; return the last result."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        result = probe()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(POLL)


# The running stack -------------------------------------------------------------------------------


def test_dns_steers_each_region_to_its_nearest_pop(stack: Stack) -> None:
    subnets = stack.state()["subnets"]
    for region in REGIONS:
        pop = stack.service(f"pop/{region}")
        answers = dig_addresses(stack, subnets[region])
        assert answers and answers[0] == pop["address"], (region, answers)


def test_pop_serves_the_item_and_the_second_read_is_a_hit(stack: Stack) -> None:
    for region in REGIONS:
        pop = stack.service(f"pop/{region}")
        _, item_id = region_item(pop["url"], region)
        first_status, _, first = http("GET", f"{pop['url']}/v1/items/{item_id}")
        second_status, headers, second = http("GET", f"{pop['url']}/v1/items/{item_id}")
        assert first_status == second_status == 200
        assert first["id"] == second["id"] == item_id
        assert headers.get("X-Cache") == "HIT", headers


def test_purchase_at_the_origin_shows_at_the_pop_within_the_staleness_bound(stack: Stack) -> None:
    pop = stack.service("pop/eu-west")
    _, item_id = region_item(pop["url"], "eu-west", index=1)
    status, _, before = http("GET", f"{pop['url']}/v1/items/{item_id}")
    assert status == 200
    origin = stack.state()["origin"]
    status, _, hold = http("POST", f"{origin}/v1/holds", {"item_id": item_id, "qty": 2, "user_id": "e2e"},
                           {"Idempotency-Key": f"e2e-{item_id}"})  # fmt: skip
    assert status == 201, hold
    status, _, order = http("POST", f"{origin}/v1/orders", {"hold_id": hold["hold"]["id"]})
    assert status == 201, order
    expected = before["available"] - 2

    def seen() -> bool:
        return bool(http("GET", f"{pop['url']}/v1/items/{item_id}")[2]["available"] == expected)

    assert poll(STALENESS_BOUND_SECONDS, seen), f"the POP still shows {before['available']} available"


def test_status_reports_every_service_up_with_hit_ratios_and_lag(stack: Stack) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ops.cli", "status", "--data-dir", str(stack.data_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "running" in lines[0]
    header = lines[1]
    health_at, detail_at = header.index("HEALTH"), header.index("DETAIL")
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {service["name"] for service in stack.state()["services"]}
    for line in rows.values():
        assert line[health_at:detail_at].strip() == "up", line
    eu_west = rows["pop/eu-west"][detail_at:]
    ratio = re.search(r"hit ratio ([0-9.]+)", eu_west)
    assert ratio and 0 < float(ratio.group(1)) <= 1, eu_west
    lag = re.search(r"lag ([0-9.]+) s", rows["shard/eu-west-1"][detail_at:])
    assert lag, rows["shard/eu-west-1"]


def test_a_stopped_pop_leaves_the_dns_answers_within_the_failover_bound(stack: Stack) -> None:
    pop = stack.service("pop/ap-northeast")
    subnet = stack.state()["subnets"]["ap-northeast"]
    assert pop["address"] in dig_addresses(stack, subnet)
    os.killpg(pop["pgid"], signal.SIGSTOP)  # stopped, not dead: `up` must not restart it
    try:
        gone = poll(FAILOVER_BOUND_SECONDS, lambda: pop["address"] not in dig_addresses(stack, subnet))
        answers = dig_addresses(stack, subnet)
    finally:
        os.killpg(pop["pgid"], signal.SIGCONT)
    assert gone, f"GeoDNS still answers {pop['address']} for {subnet}: {answers}"
    assert answers, "GeoDNS must answer another POP meanwhile"
    # Back in rotation, so the rest of the module sees the whole stack.
    assert poll(30.0, lambda: dig_addresses(stack, subnet)[:1] == [pop["address"]])


async def test_a_shard_killed_under_load_costs_no_failed_request(stack: Stack) -> None:
    pop = stack.service("pop/eu-west")
    shard = stack.service("shard/eu-west-1")
    items = [region_item(pop["url"], "eu-west", index)[1] for index in range(4)]
    statuses: list[int | str] = []
    killed = asyncio.Event()
    warmed_up = asyncio.Event()  # enough requests went through the shard before it dies
    after_kill = 0

    async def client(session: aiohttp.ClientSession, offset: int) -> None:
        nonlocal after_kill
        n = offset
        while after_kill < 200:
            # no-cache: every read is revalidated upstream, so it goes to the shard (or fails over).
            url = f"{pop['url']}/v1/items/{items[n % len(items)]}"
            try:
                async with session.get(url, headers={"Cache-Control": "no-cache"}) as response:
                    await response.read()
                    statuses.append(response.status)
            except aiohttp.ClientError as exc:
                statuses.append(repr(exc))
            if len(statuses) >= 50:
                warmed_up.set()
            if killed.is_set():
                after_kill += 1
            n += 1

    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session, asyncio.TaskGroup() as group:
        for offset in range(4):
            group.create_task(client(session, offset))
        await warmed_up.wait()
        os.killpg(shard["pgid"], signal.SIGKILL)
        killed.set()
    failed = [status for status in statuses if status != 200]
    assert not failed, f"{len(failed)} of {len(statuses)} requests failed: {failed[:5]}"

    def restarted() -> bool:
        now = stack.service("shard/eu-west-1")
        return bool(now["pid"] != shard["pid"] and now["state"] == "running")

    assert await asyncio.to_thread(poll, RESTART_DEADLINE, restarted), stack.service("shard/eu-west-1")
    assert "shard/eu-west-1 exited" in stack.log()


def _process_groups() -> dict[int, int]:
    """pid → process group of every process on the machine, from /proc (no psutil)."""
    groups = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited while we looked
        groups[int(entry.name)] = int(fields[2])
    return groups


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc (Linux)")
def test_ctrl_c_stops_everything_and_leaves_no_orphans(stack: Stack) -> None:
    state = stack.state()
    groups = {stack.process.pid} | {pid for service in state["services"] for pid in service["pids"]}
    assert all(pid in _process_groups() for pid in {s["pid"] for s in state["services"]})
    os.kill(stack.process.pid, signal.SIGINT)
    assert stack.process.wait(60) == 0, stack.log()
    leftovers = {pid: group for pid, group in _process_groups().items() if group in groups}
    assert not leftovers, f"processes left in the stack's groups: {leftovers}"
    assert stack.state()["state"] == "stopped"
    assert "boxoffice up: stopped" in stack.log()
