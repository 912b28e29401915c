"""End-to-end test 2 of issue 7: `boxoffice up --redis URL --postgres DSN`, the production backends.

"With --redis URL and --postgres DSN the same stack runs on real Redis and
PostgreSQL": the origin primary keeps its rows in PostgreSQL instead of
SQLite, `up` adds the `publisher` sidecar (`origin publish`) that fans the
origin's change feed out to the Redis stream ``boxoffice:changes:origin``,
and every POP follows that stream (instead of long-polling the origin) and
shares Redis as its second cache level.

One `boxoffice up` serves the module, on the session's real Redis and
PostgreSQL servers (tests/conftest.py): a database of its own, created on the
server for this module and dropped after it, and a Redis logical database of
its own (:data:`STACK_REDIS_DB`, flushed first), so no other test's streams or
cache keys can be mistaken for the stack's. The predictor is off
(``--no-predictor``): training it costs most of a minute, it has nothing to do
with the backends, and tests/e2e/test_stack_up.py covers it.

The tests run in file order: reads through every POP (a HIT the second time,
and the response in Redis under the POP's second-level key), a purchase at the
origin reaching the POP through the stream within the staleness bound (the
entry in the stream, the POPs' feed positions past it, their health showing
the Redis feed and its lag), the order and its change record as rows in
PostgreSQL, `boxoffice status` showing every service up, and finally Ctrl-C
leaving no process behind. No test asserts on time except the bound the stack
promises, and that only as a polling deadline.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import asyncpg
import pytest
import redis

from edge.cachekey import primary_key
from edge.l2 import KEY_PREFIX, decode
from ops.up.plan import SITE, STALENESS_BOUND_SECONDS
from origin.changefeed import Position
from origin.streamformat import checkpoint_key, stream_key
from tests.e2e.conftest import REGIONS, REPO, START_DEADLINE, Stack, _stop, free_base_port
from tests.e2e.test_stack_up import _process_groups, http, poll, region_item
from tests.support.servers import PostgresServer, RedisServer

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

# Database 0 is what the other tests of the session use on the shared server; the stack gets its own.
STACK_REDIS_DB: Final = 7
FEED_SOURCE: Final = "origin"  # what `up` passes to `origin publish --source` and `edge serve --feed-source`
REDIS_TIMEOUT: Final = 5.0
POSTGRES_TIMEOUT: Final = 10.0
# A stored response reaches Redis in a task of its own after the POP answered: milliseconds, on loopback.
L2_STORE_DEADLINE: Final = 5.0
# The publisher appends within one long-poll of the origin's feed; the POPs read within one XREADGROUP.
FEED_DEADLINE: Final = STALENESS_BOUND_SECONDS


@dataclass(frozen=True, slots=True)
class Backends:
    """Where the stack's Redis and PostgreSQL data live, as `up` was told on its command line."""

    redis_url: str
    postgres_dsn: str


@pytest.fixture(scope="module")
def backends(redis_server: RedisServer, postgres_server: PostgresServer) -> Iterator[Backends]:
    name = f"stack_{uuid.uuid4().hex[:16]}"
    dsn = postgres_server.create_database(name)
    redis_url = f"redis://{redis_server.host}:{redis_server.port}/{STACK_REDIS_DB}"
    with redis.Redis.from_url(redis_url, socket_timeout=REDIS_TIMEOUT) as client:
        client.flushdb()  # an earlier run in this session must not leave a stream behind
    try:
        yield Backends(redis_url, dsn)
    finally:
        postgres_server.drop_database(name)  # --force: the origin's pool is gone by now, or is cut off


@pytest.fixture(scope="module")
def prod_stack(tmp_path_factory: pytest.TempPathFactory, backends: Backends) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("prod-stack")
    output = data_dir / "up.out"
    command = [sys.executable, "-m", "ops.cli", "up", "--data-dir", str(data_dir),
               "--base-port", str(free_base_port(len(REGIONS))), "--regions", ",".join(REGIONS),
               "--demo-events", "600", "--demo-venues", "60", "--no-predictor",
               "--redis", backends.redis_url, "--postgres", backends.postgres_dsn]  # fmt: skip
    with output.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    running = Stack(process, data_dir, output)
    try:
        deadline = time.monotonic() + START_DEADLINE
        while not _running(running):
            if process.poll() is not None:
                pytest.fail(f"boxoffice up exited with {process.returncode}:\n{running.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"boxoffice up was not running within {START_DEADLINE:g} s:\n{running.log()}")
            time.sleep(0.2)
        yield running
    finally:
        _stop(running)


def _running(stack: Stack) -> bool:
    try:
        return bool(stack.state()["state"] == "running")
    except (OSError, ValueError, KeyError):
        return False  # not written yet, or caught mid-write


# Helpers -----------------------------------------------------------------------------------------


def redis_client(backends: Backends) -> redis.Redis:
    return redis.Redis.from_url(backends.redis_url, decode_responses=False, socket_timeout=REDIS_TIMEOUT)


def l2_key(path: str) -> str:
    """The Redis key a POP stores the response for `path` under (edge.l2: prefix, site, cache key URL)."""
    return f"{KEY_PREFIX}{SITE}:{primary_key('GET', 'http', SITE, path).url}"


def purchase(origin: str, item_id: str, qty: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Hold `qty` of `item_id` at the origin and order it; (the hold's answer, the order)."""
    status, _, held = http("POST", f"{origin}/v1/holds", {"item_id": item_id, "qty": qty, "user_id": "e2e-prod"},
                           {"Idempotency-Key": f"e2e-prod-{item_id}"})  # fmt: skip
    assert status == 201, held
    status, _, ordered = http("POST", f"{origin}/v1/orders", {"hold_id": held["hold"]["id"]})
    assert status == 201, ordered
    return held, ordered["order"]


def stream_entries(backends: Backends, item_id: str) -> list[dict[str, str]]:
    """The fields of every entry of the origin's stream about `item_id`, oldest first."""
    with redis_client(backends) as client:
        entries = client.xrange(stream_key(FEED_SOURCE))
    decoded = [{name.decode(): value.decode() for name, value in fields.items()} for _, fields in entries]
    return [fields for fields in decoded if fields["item_id"] == item_id]


def feed_of(pop_url: str) -> dict[str, Any]:
    status, _, health = http("GET", f"{pop_url}/_edge/health")
    assert status == 200, health
    feed: dict[str, Any] = health["feed"]
    return feed


def reached(position: str | None, target: Position) -> bool:
    """`position` (a feed's ``EPOCH:SEQ``, None before the first) is at `target` or past it, in its history."""
    if position is None:
        return False
    at = Position.parse(position)
    return at.epoch == target.epoch and at.seq >= target.seq


def feed_through(pop_url: str, target: Position) -> dict[str, Any] | None:
    """The POP's feed health once its follower applied the entry at `target`; None until then."""
    feed = feed_of(pop_url)
    return feed if reached(feed["position"], target) else None


# The running stack -------------------------------------------------------------------------------


def test_reads_through_every_pop_hit_the_second_time_and_are_shared_in_redis(
    prod_stack: Stack, backends: Backends
) -> None:
    for region in REGIONS:
        pop = prod_stack.service(f"pop/{region}")
        _, item_id = region_item(pop["url"], region)
        first_status, _, first = http("GET", f"{pop['url']}/v1/items/{item_id}")
        second_status, headers, second = http("GET", f"{pop['url']}/v1/items/{item_id}")
        assert first_status == second_status == 200
        assert first["id"] == second["id"] == item_id
        assert headers.get("X-Cache") == "HIT", headers

        key = l2_key(f"/v1/items/{item_id}")

        def stored(key: str = key) -> bytes | None:
            with redis_client(backends) as client:
                raw: bytes | None = client.get(key)
            return raw

        raw = poll(L2_STORE_DEADLINE, stored)
        assert raw is not None, f"no second-level entry {key} in Redis"
        blob = decode(raw)
        assert blob is not None, raw[:200]
        assert blob.stored.status == 200
        assert json.loads(blob.body)["id"] == item_id


def test_a_purchase_reaches_every_pop_through_the_redis_stream(prod_stack: Stack, backends: Backends) -> None:
    pop = prod_stack.service("pop/eu-west")
    _, item_id = region_item(pop["url"], "eu-west", index=1)
    status, _, before = http("GET", f"{pop['url']}/v1/items/{item_id}")
    assert status == 200
    pops = [prod_stack.service(f"pop/{region}")["url"] for region in REGIONS]
    for url in pops:
        feed = feed_of(url)
        assert (feed["kind"], feed["stream"]) == ("redis", stream_key(FEED_SOURCE)), feed
    applied_before = {url: feed_of(url)["applied"] for url in pops}

    held, _ = purchase(prod_stack.state()["origin"], item_id, qty=2)
    expected = before["available"] - 2
    assert held["item"]["available"] == expected, held

    def seen() -> bool:
        return bool(http("GET", f"{pop['url']}/v1/items/{item_id}")[2]["available"] == expected)

    assert poll(STALENESS_BOUND_SECONDS, seen), f"the POP still shows {before['available']} available"

    # The change went origin → publisher → Redis stream: one upsert of the item at the hold's version.
    entries = poll(FEED_DEADLINE, lambda: stream_entries(backends, item_id))
    assert [(e["op"], int(e["version"])) for e in entries] == [("upsert", held["item"]["version"])], entries
    assert json.loads(entries[0]["patch"])["available"] == expected, entries
    position = Position.parse(entries[0]["pos"])
    with redis_client(backends) as client:
        checkpoint = client.get(checkpoint_key(FEED_SOURCE))
    assert checkpoint is not None and reached(checkpoint.decode(), position), checkpoint

    # Every POP read it from the stream through a consumer group of its own (its position is past the
    # entry) and says how far behind it is.
    with redis_client(backends) as client:
        groups = {group["name"].decode() for group in client.xinfo_groups(stream_key(FEED_SOURCE))}
    pop_groups = {feed_of(url)["group"] for url in pops}
    assert len(pop_groups) == len(pops) and pop_groups <= groups, (pop_groups, groups)
    for url in pops:
        feed = poll(FEED_DEADLINE, lambda url=url: feed_through(url, position))
        assert feed is not None, f"{url} never applied {entries[0]['pos']}: {feed_of(url)}"
        assert feed["connected"] and feed["group"].startswith("pop:"), feed
        assert feed["applied"] > applied_before[url], feed
        assert isinstance(feed["lag_seconds"], int | float) and feed["lag_seconds"] >= 0, feed
        assert isinstance(feed["lag_entries"], int) and feed["lag_entries"] >= 0, feed


async def test_the_origins_rows_are_in_postgresql(prod_stack: Stack, backends: Backends) -> None:
    pop = prod_stack.service("pop/na-east")
    _, item_id = await asyncio.to_thread(region_item, pop["url"], "na-east", 2)
    held, order = await asyncio.to_thread(purchase, prod_stack.state()["origin"], item_id, 3)
    assert not (prod_stack.data_dir / "origin" / "origin.db").exists(), "the origin fell back to SQLite"
    connection = await asyncpg.connect(backends.postgres_dsn, timeout=POSTGRES_TIMEOUT)
    try:
        row = await connection.fetchrow("SELECT hold_id, doc FROM orders WHERE id = $1", order["id"],
                                        timeout=POSTGRES_TIMEOUT)  # fmt: skip
        hold = await connection.fetchrow("SELECT status FROM holds WHERE id = $1", held["hold"]["id"],
                                         timeout=POSTGRES_TIMEOUT)  # fmt: skip
        item = await connection.fetchrow("SELECT doc FROM items WHERE id = $1", item_id, timeout=POSTGRES_TIMEOUT)
        changes = await connection.fetch("SELECT version, op FROM changes WHERE item_id = $1 ORDER BY seq", item_id,
                                         timeout=POSTGRES_TIMEOUT)  # fmt: skip
    finally:
        await connection.close(timeout=POSTGRES_TIMEOUT)
    assert row is not None, f"no row for order {order['id']} in PostgreSQL"
    assert row["hold_id"] == held["hold"]["id"]
    document = json.loads(row["doc"])
    assert (document["item_id"], document["qty"]) == (item_id, 3), document
    assert hold is not None and hold["status"] == "ordered", hold
    assert item is not None and json.loads(item["doc"])["available"] == held["item"]["available"], item
    assert [(change["version"], change["op"]) for change in changes][-1] == (held["item"]["version"], "upsert")


def test_status_reports_every_service_up_the_publisher_too(prod_stack: Stack) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ops.cli", "status", "--data-dir", str(prod_stack.data_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "running" in lines[0], lines[0]
    header = lines[1]
    health_at, detail_at = header.index("HEALTH"), header.index("DETAIL")
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {service["name"] for service in prod_stack.state()["services"]}
    assert "publisher" in rows and "predictor" not in rows, sorted(rows)
    for line in rows.values():
        assert line[health_at:detail_at].strip() == "up", line


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc (Linux)")
def test_ctrl_c_stops_everything_and_leaves_no_orphans(prod_stack: Stack) -> None:
    state = prod_stack.state()
    groups = {prod_stack.process.pid} | {pid for service in state["services"] for pid in service["pids"]}
    assert all(pid in _process_groups() for pid in {service["pid"] for service in state["services"]})
    prod_stack.process.send_signal(signal.SIGINT)  # what Ctrl-C in its terminal sends
    assert prod_stack.process.wait(60) == 0, prod_stack.log()
    leftovers = {pid: group for pid, group in _process_groups().items() if group in groups}
    assert not leftovers, f"processes left in the stack's groups: {leftovers}"
    assert prod_stack.state()["state"] == "stopped"
    assert "boxoffice up: stopped" in prod_stack.log()
