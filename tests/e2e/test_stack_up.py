"""End-to-end test 1 of issue 7: the whole stack from `boxoffice up`, with the clients users run.

One `boxoffice up` serves the module (tests/e2e/conftest.py), and the tests
run in file order against it: DNS steering with the real `dig`, reads and
cache hits through each region's POP, a purchase at the origin showing at the
POP within the staleness bound, the predictor (trained by `up` on first
start) answering hints, warm lists and forecasts per their contracts,
`boxoffice status` parsed, a stopped POP
leaving the DNS answers within the failover bound, a shard killed under load
with no failed request (and `up` restarting it), and finally Ctrl-C leaving
no process of the stack behind. No test asserts on time except the bounds
the stack itself promises, and those only as polling deadlines.

A few pure checks of the plan come first; they need no processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.hints import is_hintable_url, parse_predictor_hints
from ops.status import Row, describe, render_table
from ops.up.plan import FAILOVER_BOUND_SECONDS, SITE, STALENESS_BOUND_SECONDS, Secrets, plan_stack, shard_map_document
from ops.up.settings import UpSettings
from ops.up.supervisor import RestartPolicy
from ops.up.training import catalog_shift, reusable, training_plan
from origin.forecast import parse_forecast
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


def test_plan_starts_the_predictor_last_pushing_to_every_pop_with_their_token() -> None:
    settings = UpSettings(data_dir=Path("/tmp/boxoffice-plan"), base_port=30_000, regions=REGIONS)
    plan = plan_stack(settings, python=sys.executable, secrets=Secrets("a", "purge", "c", "user"), with_predictor=True)
    (predictor,) = plan.stages[-1]
    assert predictor.kind == "predictor"
    command = list(predictor.command)
    pops = [spec for spec in plan.services if spec.kind == "pop"]
    assert command[command.index("--pops") + 1].split(",") == [f"{p.region}@{p.region}={p.url}" for p in pops]
    assert command[command.index("--workload") + 1] == "/tmp/boxoffice-plan/predictor/workload"
    assert "--replay-workload" in command  # the demo's users are live from the first request
    assert predictor.environment["BOXOFFICE_PREDICTOR_SERVE_WARM_TOKEN"] == "purge"
    for pop in pops:
        assert pop.command[pop.command.index("--predictor") + 1] == predictor.url
        assert pop.environment["BOXOFFICE_EDGE_USER_SECRET"] == "user"
        assert pop.environment["BOXOFFICE_EDGE_PURGE_TOKEN"] == "purge"  # what /_edge/warm checks


def test_training_runs_over_the_origins_catalog_and_is_redone_on_a_later_day() -> None:
    settings = UpSettings(data_dir=Path("/tmp/boxoffice-plan"), demo_events=600, demo_venues=60, demo_seed=7)
    first_day = "2026-02-20T00:00:00Z"  # the origin seeded its catalog then, and keeps it
    now = datetime(2026, 3, 1, 15, 30, tzinfo=UTC)
    plan = training_plan(settings, python=sys.executable, now=now, catalog=first_day)
    generate = list(plan.generate)
    flags = {generate[i]: generate[i + 1] for i in range(len(generate) - 1) if generate[i].startswith("--")}
    assert (flags["--catalog-seed"], flags["--catalog-venues"], flags["--catalog-events"]) == ("7", "60", "600")
    assert flags["--catalog-start"] == first_day  # not the day of the training
    assert (flags["--workload-start"], flags["--workload-days"]) == ("2026-02-28T00:00:00Z", "2")  # holds now
    marker = {"inputs": dataclasses.asdict(plan.inputs)}
    later_today = training_plan(settings, python=sys.executable, now=now.replace(hour=23), catalog=first_day)
    assert reusable(marker, later_today.inputs)
    tomorrow = training_plan(settings, python=sys.executable, now=datetime(2026, 3, 2, 1, tzinfo=UTC),
                             catalog=first_day)  # fmt: skip
    assert not reusable(marker, tomorrow.inputs)  # yesterday's window cannot replay up to now
    assert tomorrow.inputs.catalog_start == first_day
    other_catalog = dataclasses.replace(settings, demo_events=700)
    assert not reusable(marker, training_plan(other_catalog, python=sys.executable, now=now, catalog=first_day).inputs)
    assert not reusable(None, plan.inputs)


def test_the_origins_catalog_start_is_read_back_from_one_event() -> None:
    built = datetime(2026, 3, 14, 19, 30, tzinfo=UTC)
    assert catalog_shift("2026-03-10T19:30:00Z", built) == timedelta(days=-4)
    assert catalog_shift("2026-03-14T19:30:00Z", built) == timedelta(0)
    assert catalog_shift("2026-03-10T18:30:00Z", built) is None  # not a whole number of days: another catalog
    assert catalog_shift("not a time", built) is None


def test_status_describes_the_predictor() -> None:
    detail = describe("predictor", 200, {"status": "ok", "models": {"purchase": 1, "demand": None}, "users": 80,
                                         "events_applied": 12})  # fmt: skip
    assert detail == "models purchase v1, demand none, 80 users, 12 events ingested"


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


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
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


def hint_answers(predictor_url: str) -> float:
    """Hint requests the predictor answered so far, whatever the answer (its Prometheus counter)."""
    with _NO_PROXY.open(f"{predictor_url}/metrics", timeout=HTTP_TIMEOUT) as response:
        text = response.read().decode()
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith("predictor_hints_served_total{"))  # fmt: skip


def test_the_demo_page_gets_hints_through_the_pop_from_the_predictor(stack: Stack) -> None:
    pop = stack.service("pop/ap-northeast")
    user = stack.state()["predictor"]["demo_user"]
    assert user and f"log in as {user} " in stack.log(), stack.log()  # the demo login `up` printed
    login = urllib.request.Request(f"{pop['url']}/_edge/demo/login", data=json.dumps({"user_id": user}).encode(),
                                   method="POST", headers={"Content-Type": "application/json"})  # fmt: skip
    with _NO_PROXY.open(login, timeout=HTTP_TIMEOUT) as response:
        cookies = [value.partition(";")[0] for value in response.headers.get_all("Set-Cookie") or []]
    assert any(cookie.startswith("bo_user=") for cookie in cookies), cookies
    before = hint_answers(stack.service("predictor")["url"])
    status, _, document = http("GET", f"{pop['url']}/v1/hints", headers={"Cookie": "; ".join(cookies)})
    assert status == 200, document
    assert document["user_id"] == user and isinstance(document["hints"], list), document
    assert hint_answers(stack.service("predictor")["url"]) > before  # the POP asked the predictor, which answered
    # Nobody has browsed yet: the hints come from the workload's log, replayed when the predictor started.
    assert document["hints"], f"no hints for the demo user {user}: {document}"


def test_the_forecast_has_entries_before_any_event_is_posted(stack: Stack) -> None:
    status, _, document = http("GET", f"{stack.service('predictor')['url']}/v1/forecast")
    assert status == 200, document
    assert parse_forecast(document), document  # the replayed log's demand


def browse(stack: Stack, user: str, region: str, event_id: str, item_id: str) -> None:
    """POST a user's short visit to the predictor, as a POP would report it (ids make a retry a duplicate)."""
    predictor = stack.service("predictor")
    now_ms = round(time.time() * 1000)
    actions = [("event_view", None), ("item_view", item_id), ("item_view", item_id), ("hold", item_id)]
    events = [
        {"id": f"e2e-{user}-{event_id}-{step}", "ts": now_ms - (len(actions) - step) * 20_000, "user_id": user,
         "action": action, "event_id": event_id, "item_id": item, "session_id": 1, "region": region}
        for step, (action, item) in enumerate(actions)
    ]  # fmt: skip
    status, _, answer = http("POST", f"{predictor['url']}/v1/events", events)
    assert status == 200, answer


def test_predictor_hints_answer_per_the_contract(stack: Stack) -> None:
    predictor = stack.service("predictor")
    user = stack.state()["predictor"]["demo_user"]
    assert user, "up found no consenting user of the predictor's workload"
    pop = stack.service("pop/eu-west")
    event_id, item_id = region_item(pop["url"], "eu-west")
    browse(stack, user, "eu-west", event_id, item_id)
    request = urllib.request.Request(f"{predictor['url']}/v1/hints/{user}", headers={"Accept": "application/json"})
    with _NO_PROXY.open(request, timeout=HTTP_TIMEOUT) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        body = response.read()
    now = time.time()
    hints = parse_predictor_hints(body, user_id=user, now=now)  # what the POP accepts, or MalformedHints
    assert hints.rejected == 0, body
    assert hints.expires_at > now, body
    origin = stack.state()["origin"]
    for hint in hints.hints:
        assert is_hintable_url(hint.url) and 0 <= hint.score <= 1, hint
        assert http("GET", f"{origin}{hint.url}")[0] == 200, hint.url
    status, _, answer = http("GET", f"{predictor['url']}/v1/hints/nobody-e2e")
    assert status == 404, answer  # the contract's "knows nothing about the user": an empty list at the POP


def test_predictor_warm_lists_name_urls_the_origin_serves(stack: Stack) -> None:
    predictor = stack.service("predictor")
    origin = stack.state()["origin"]
    for region in REGIONS:
        pop = stack.service(f"pop/{region}")
        event_id, item_id = region_item(pop["url"], region)
        browse(stack, "usr-e2e-warm", region, event_id, item_id)  # requested now: on the region's warm list
        status, _, warm = http("GET", f"{predictor['url']}/v1/warm/{region}")
        assert status == 200, warm
        assert (warm["pop_id"], warm["region"]) == (region, region)
        urls = [entry["url"] for entry in warm["urls"]]
        assert f"/v1/events/{event_id}" in urls, urls[:20]
        for url in urls[:: max(1, len(urls) // 20)]:  # a spread of at most ~20 per POP
            assert http("GET", f"{origin}{url}")[0] == 200, url
    status, _, answer = http("GET", f"{predictor['url']}/v1/warm/no-such-pop")
    assert status == 404, answer


def test_predictor_forecast_parses_as_the_shard_manager_reads_it(stack: Stack) -> None:
    predictor = stack.service("predictor")
    pop = stack.service("pop/na-east")
    event_id, item_id = region_item(pop["url"], "na-east", index=2)
    browse(stack, "usr-e2e-forecast", "na-east", event_id, item_id)
    status, _, document = http("GET", f"{predictor['url']}/v1/forecast")
    assert status == 200, document
    forecast = parse_forecast(document)  # raises InvalidForecast on any breach of the document format
    assert set(forecast) <= set(stack.state()["subnets"]) | {row["region"] for row in document["forecast"]}
    assert all(rate >= 0 for rates in forecast.values() for rate in rates.values())


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
    predictor = re.search(r"models purchase v1, demand v1, (\d+) users, (\d+) events ingested",
                          rows["predictor"][detail_at:])  # fmt: skip
    assert predictor and int(predictor.group(1)) > 0 and int(predictor.group(2)) > 0, rows["predictor"]


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
