"""Three gaps of issue 3 closed: keyed retries of local holds, grants returned on SIGTERM, shard map epochs.

1. A retried ``POST /v1/holds`` with the same Idempotency-Key at a shard that
   answers it locally replays the first answer; the same key with another
   body is refused with 422; a key first forwarded to the owner keeps going
   there. Against a real primary and shard on loopback (in-process apps).
2. A shard *process* sent SIGTERM gives its grants back before it exits: the
   primary lists none for it and sells the stock at once.
3. The shard map's ETag names the stored file's epoch, so a map rebuilt after
   the file was lost never answers 304 to an ETag of the lost history.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer

from ops.settings import Seconds
from origin import escrow as core
from origin.errors import StoredDataError
from origin.hlc import HybridClock
from origin.http import Origin, create_app
from origin.lease import Allotment
from origin.leasing import Leasing
from origin.ledger import HoldRequest, Ledger
from origin.metadata import ShardMapService, add_shardmap_routes
from origin.model import GENERAL_ADMISSION
from origin.settings import OriginSettings
from origin.shardsales import ShardSales
from origin.store.base import Store
from origin.store.factory import store_from_url
from tests.origin.conftest import LIMITS, START, FakeTime, tiny_catalog
from tests.origin.test_shard_sales import POLICY, TOKEN, Primary, start_shard, wait_until

MakeServer = Callable[..., Awaitable[TestServer]]
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]
PROCESS_WAIT_STEPS = 300  # × 0.1 s: the bound of every wait on a real process


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as exits:
        yield exits


@pytest.fixture
async def primary(tmp_path: Path, fake_time: FakeTime, aiohttp_server: MakeServer, stack: AsyncExitStack) -> Primary:
    """A primary over SQLite: the shard's idempotency does not depend on the primary's backend."""
    store = store_from_url(f"sqlite:{tmp_path / 'primary.db'}")
    await store.open()
    stack.push_async_callback(store.close)
    venues, events, items = tiny_catalog()
    await store.load_catalog(venues, events, items, START)
    ledger = Ledger(store, HybridClock("primary", fake_time), fake_time, LIMITS)
    leasing = Leasing(store, ledger, POLICY, TOKEN)
    settings = OriginSettings(feed_max_wait=Seconds(5.0), shard_token=TOKEN)
    origin = Origin(settings, store, ledger, fake_time, leasing=leasing)
    server = await aiohttp_server(create_app(origin, background=False))
    return Primary(origin, leasing, server)


@pytest.fixture
async def shard_store(tmp_path: Path, stack: AsyncExitStack) -> Store:
    store = store_from_url(f"sqlite:{tmp_path / 'shard.db'}")
    await store.open()
    stack.push_async_callback(store.close)
    return store


async def post_hold(
    client: ClientSession, base: str, body: dict[str, Any], key: str | None = None
) -> tuple[int, dict[str, Any], bool]:
    """(status, body, replayed) of one POST /v1/holds."""
    headers = {} if key is None else {"Idempotency-Key": key}
    async with client.post(f"{base}/v1/holds", json=body, headers=headers) as response:
        return response.status, await response.json(), response.headers.get("Idempotent-Replayed") == "true"


# 1. Keyed retries of local holds ------------------------------------------------------------------


async def test_a_retried_local_hold_replays_and_another_body_is_refused(
    primary: Primary, shard_store: Store, fake_time: FakeTime, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    node = await start_shard(primary, shard_store, fake_time, aiohttp_server, stack, lease_items=("itm-1-ga",))
    await wait_until(lambda: node.granted("itm-1-ga"), "grant")
    shard_url = str(node.server.make_url("")).rstrip("/")
    body = {"item_id": "itm-1-ga", "qty": 2, "user_id": "u1"}
    async with ClientSession() as client:
        status, first, replayed = await post_hold(client, shard_url, body, key="k-1")
        assert status == 201 and first["hold"]["id"].startswith("hld-s1-") and not replayed
        status, again, replayed = await post_hold(client, shard_url, body, key="k-1")
        assert status == 201 and replayed and again == first
        assert node.sales.escrows["itm-1-ga"].free == 3  # 5 granted, one hold of 2

        status, refused, _ = await post_hold(client, shard_url, {**body, "qty": 1}, key="k-1")
        assert status == 422 and refused["error"]["code"] == "idempotency_key_reused"
        status, other, replayed = await post_hold(client, shard_url, body, key="k-2")
        assert status == 201 and not replayed and other["hold"]["id"] != first["hold"]["id"]
        assert node.sales.escrows["itm-1-ga"].free == 1
    assert primary.hold_requests() == 0  # every answer, replays included, was local


async def test_a_key_first_forwarded_stays_with_the_owner_after_a_grant(
    primary: Primary, shard_store: Store, fake_time: FakeTime, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    node = await start_shard(primary, shard_store, fake_time, aiohttp_server, stack, lease_items=("itm-1-s",))
    await wait_until(lambda: node.granted("itm-1-s"), "grant")
    shard_url = str(node.server.make_url("")).rstrip("/")
    body = {"item_id": "itm-1-ga", "qty": 2, "user_id": "u1"}
    async with ClientSession() as client:
        status, first, _ = await post_hold(client, shard_url, body, key="k-fwd")
        assert status == 201 and "shard_id" not in first  # no allotment of itm-1-ga yet: the origin's hold
        await node.sales.request_lease("itm-1-ga", None)
        assert await node.granted("itm-1-ga")
        status, again, replayed = await post_hold(client, shard_url, body, key="k-fwd")
        assert status == 201 and replayed and again["hold"]["id"] == first["hold"]["id"]
    assert node.sales.escrows["itm-1-ga"].free == 5  # the retry took nothing locally
    assert primary.hold_requests() == 2


async def test_remembered_keys_are_bounded_in_number_and_age(shard_store: Store, fake_time: FakeTime) -> None:
    settings = OriginSettings(
        role="shard", shard_id="s1", upstream="http://127.0.0.1:9", idempotency_retention=Seconds(3600.0)
    )
    async with aiohttp.ClientSession() as session:
        sales = ShardSales(settings, shard_store, session, wall_clock=fake_time, hold_keys_kept=2)
        granted = Allotment("s1", 1, 8, sales.now() + timedelta(hours=2))
        sales.escrows["itm-1-ga"] = core.on_grant(core.new_escrow("itm-1-ga", "s1", exclusive=False), granted)
        request = HoldRequest("itm-1-ga", 1, "u1", None, None)

        def hold_id(key: str) -> tuple[str, bool]:
            answer = sales.hold_with_key(request, key)
            assert answer is not None
            body, replayed = answer
            return str(body["hold"]["id"]), replayed

        first, _ = hold_id("a")
        assert hold_id("a") == (first, True)
        hold_id("b")
        hold_id("c")  # a third key: "a", the oldest, is forgotten
        assert hold_id("a")[1] is False
        assert len(sales.escrows["itm-1-ga"].holds) == 4  # a, b, c and the second a
        assert hold_id("c")[1] is True
        fake_time.advance(3601)  # past idempotency_retention: "c" is forgotten too
        assert hold_id("c")[1] is False


# 2. SIGTERM returns the grants ------------------------------------------------------------------------


def _request(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, None


def _wait_for(check: Callable[[], bool], what: str) -> None:
    for _ in range(PROCESS_WAIT_STEPS):
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting: {what}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_sigterm_returns_the_grants_before_the_shard_exits(tmp_path: Path, unused_tcp_port_factory: Any) -> None:
    primary_port, shard_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    primary_url, shard_url = f"http://127.0.0.1:{primary_port}", f"http://127.0.0.1:{shard_port}"
    common = [sys.executable, "-m", "origin", "serve", "--no-access-log", "--log-level", "warning",
              "--shard-token", TOKEN]  # fmt: skip
    primary = subprocess.Popen(
        [*common, "--port", str(primary_port), "--database", f"sqlite:{tmp_path}/p.db", "--seed-demo",
         "--demo-venues", "12", "--demo-events", "30"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    processes = [primary]
    try:
        _wait_for(lambda: _request("GET", f"{primary_url}/v1/health")[0] == 200, "the primary")
        _, listing = _request("GET", f"{primary_url}/v1/events?region=eu-west&limit=100")
        ga = None
        for event in listing["events"]:
            _, doc = _request("GET", f"{primary_url}/v1/events/{event['id']}")
            ga = next(
                (item for item in doc["items"] if item["kind"] == GENERAL_ADMISSION and item["available"] > 0), None
            )
            if ga is not None:
                break
        assert ga is not None, "the demo catalog has a general-admission item in eu-west"
        units = ga["available"]  # the whole pool: the origin can sell none of it while the shard holds it
        shard = subprocess.Popen(
            [*common, "--role", "shard", "--shard-id", "s1", "--region", "eu-west", "--events", ga["event_id"],
             "--listen", f"127.0.0.1:{shard_port}", "--upstream", primary_url, "--data-dir", str(tmp_path / "s1"),
             "--lease-items", ga["id"], "--lease-units", str(units), "--lease-high-watermark", str(units + 1),
             "--lease-low-watermark", "0", "--shutdown-timeout", "5s"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(shard)

        def leases() -> list[dict[str, Any]]:
            status, doc = _request("GET", f"{primary_url}/v1/leases?shard_id=s1", token=TOKEN)
            assert status == 200
            found: list[dict[str, Any]] = doc["leases"]
            return found

        _wait_for(lambda: [lease["units"] for lease in leases()] == [units], "the shard's grant")
        hold = {"item_id": ga["id"], "qty": 1, "user_id": "u1"}
        _wait_for(lambda: _request("POST", f"{shard_url}/v1/holds", hold)[0] == 201, "a local hold at the shard")
        status, refused = _request("POST", f"{primary_url}/v1/holds", hold)
        assert status == 409, refused  # everything is allotted to the shard

        shard.send_signal(signal.SIGTERM)
        shard.wait(timeout=30)
        assert shard.returncode == 0
        assert leases() == []
        status, sold = _request("POST", f"{primary_url}/v1/holds", {**hold, "qty": min(units, 8)})
        assert status == 201, sold
    finally:
        for process in reversed(processes):
            _stop(process)
    assert primary.returncode == 0


# 3. Shard map epochs ----------------------------------------------------------------------------------

SHARDMAP_TOKEN = "map-token"


def placement() -> dict[str, Any]:
    return {
        "shards": {"eu-west-1": {"region": "eu-west", "url": "http://127.0.0.1:8110", "events": ["evt-1"],
                                 "healthy": True}},
        "events": {"evt-1": {"eu-west": ["eu-west-1", "origin"]}},
    }  # fmt: skip


async def map_client(path: Path, aiohttp_client: MakeClient) -> Client:
    service = ShardMapService(path, "http://127.0.0.1:8100", SHARDMAP_TOKEN, time.time)
    service.load()
    app = web.Application()
    add_shardmap_routes(app, service)
    return await aiohttp_client(app)


async def test_a_lost_map_file_starts_a_new_epoch_and_old_etags_do_not_match(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    path = tmp_path / "shardmap.json"
    auth = {"Authorization": f"Bearer {SHARDMAP_TOKEN}"}
    client = await map_client(path, aiohttp_client)
    put = await client.put("/v1/shardmap", json=placement(), headers=auth)
    assert put.status == 200 and (await put.json())["version"] == 1
    old_etag = put.headers["ETag"]
    response = await client.get("/v1/shardmap")
    first = await response.json()
    assert response.headers["ETag"] == old_etag and first["epoch"] in old_etag
    assert (await client.get("/v1/shardmap", headers={"If-None-Match": old_etag})).status == 304
    restarted = await map_client(path, aiohttp_client)  # the same file: the same epoch and ETag
    assert (await restarted.get("/v1/shardmap", headers={"If-None-Match": old_etag})).status == 304

    path.unlink()  # the file is lost; the origin restarts and the manager publishes again
    rebuilt = await map_client(path, aiohttp_client)
    put = await rebuilt.put("/v1/shardmap", json=placement(), headers=auth)
    assert (await put.json())["version"] == 1 and put.headers["ETag"] != old_etag
    response = await rebuilt.get("/v1/shardmap", headers={"If-None-Match": old_etag})
    assert response.status == 200
    doc = await response.json()
    assert doc["epoch"] != first["epoch"] and doc["version"] == first["version"]
    assert json.loads(path.read_bytes())["epoch"] == doc["epoch"]


async def test_a_map_file_without_an_epoch_is_given_one_and_keeps_it(
    tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    path = tmp_path / "shardmap.json"
    old = {"version": 4, "generated_at": "2026-11-01T12:00:00Z", "origin": {"url": "http://127.0.0.1:8100"},
           **placement()}  # fmt: skip
    path.write_text(json.dumps(old))
    client = await map_client(path, aiohttp_client)
    response = await client.get("/v1/shardmap")
    doc = await response.json()
    assert doc["version"] == 4 and doc["shards"] == old["shards"] and isinstance(doc["epoch"], str)
    etag = response.headers["ETag"]
    again = await map_client(path, aiohttp_client)  # the epoch made for the old file was stored with it
    assert (await again.get("/v1/shardmap", headers={"If-None-Match": etag})).status == 304

    path.write_text(json.dumps({**old, "epoch": 17}))
    with pytest.raises(StoredDataError, match="epoch"):
        ShardMapService(path, "http://127.0.0.1:8100", SHARDMAP_TOKEN, time.time).load()
