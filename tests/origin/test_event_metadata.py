"""Event metadata edits end to end: PATCH /v1/events/{id} on a real primary, its change record, a real shard's merge.

The primary is the origin app on an in-process aiohttp server over SQLite; the
shard is origin.shard's follower over its own SQLite store, bootstrapped from
the primary's snapshot over loopback.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from ops.settings import Seconds
from origin.changefeed import EVENT_RECORD_VERSION, OP_EVENT, ChangeRecord, Position
from origin.errors import BadRequest
from origin.hlc import HybridClock, Stamp
from origin.http import Origin, create_app
from origin.ledger import Ledger
from origin.lww import STAMPS_KEY
from origin.metadata_edits import edit_event
from origin.settings import OriginSettings
from origin.shard import UPSTREAM_SOURCE, ChangesDoc, Shard
from origin.store.base import Store
from origin.store.factory import store_from_url
from tests.origin.conftest import LIMITS, START
from tests.origin.test_shard import catalog, shard_settings, start_shard, wait_until

MakeServer = Callable[..., Awaitable[TestServer]]
TOKEN = "admin-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Primary:
    def __init__(self, store: Store, server: TestServer) -> None:
        self.store = store
        self.server = server

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def patch(self, event_id: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with ClientSession() as session:
            response = await session.patch(f"{self.url}/v1/events/{event_id}", json=body, headers=headers or AUTH)
            return response.status, await response.json()

    async def get(self, path: str) -> Any:
        async with ClientSession() as session, session.get(f"{self.url}{path}") as response:
            assert response.status == 200
            return await response.json()


async def start_primary(path: Path, aiohttp_server: MakeServer, token: str = TOKEN) -> Primary:
    store = store_from_url(f"sqlite:{path}")
    await store.open()
    venues, events, items = catalog()
    await store.load_catalog(venues, events, items, START)
    settings = OriginSettings(feed_max_wait=Seconds(5.0), admin_token=token)
    ledger = Ledger(store, HybridClock("primary", time.time), time.time, LIMITS)
    server = await aiohttp_server(create_app(Origin(settings, store, ledger, time.time), background=False))
    return Primary(store, server)


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as exits:
        yield exits


@pytest.fixture
async def primary(tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack) -> Primary:
    started = await start_primary(tmp_path / "primary.db", aiohttp_server)
    stack.push_async_callback(started.store.close)
    return started


async def event_records(store: Store) -> list[ChangeRecord]:
    return [record for record in await store.changes(0, 1_000) if record.op == OP_EVENT]


# The write path ---------------------------------------------------------------------


async def test_a_patch_edits_the_event_stamps_it_and_appends_an_event_record(primary: Primary) -> None:
    head = (await primary.store.feed_bounds()).head
    tiers = [{"name": "Front", "amount": 9500}]
    status, body = await primary.patch("evt-1", {"name": "Band Live (new date)", "price_tiers": tiers})
    assert status == 200, body
    assert body["changed"] == ["name", "price_tiers"]
    doc = (await primary.get("/v1/events/evt-1"))["event"]
    assert doc["name"] == "Band Live (new date)"
    assert doc["artist"] == "Band"  # untouched
    assert doc["price_tiers"] == [{"name": "Front", "amount": 9500, "currency": "EUR"}]
    assert doc[STAMPS_KEY] == {"name": body["hlc"], "price_tiers": body["hlc"]}
    assert Stamp.decode(body["hlc"]).node == "primary"
    listed = (await primary.get("/v1/events?region=eu-west"))["events"]
    assert [event["name"] for event in listed if event["id"] == "evt-1"] == ["Band Live (new date)"]
    # One record, in the feed every follower reads.
    changes = await primary.get(f"/v1/changes?since={primary.store.epoch}:{head}")
    assert [(c["item_id"], c["op"], c["version"]) for c in changes["changes"]] == [
        ("evt-1", OP_EVENT, EVENT_RECORD_VERSION)
    ]
    record = changes["changes"][0]
    assert record["hlc"] == body["hlc"]
    assert record["patch"] == {
        "name": "Band Live (new date)",
        "price_tiers": [{"name": "Front", "amount": 9500, "currency": "EUR"}],
        STAMPS_KEY: {"name": body["hlc"], "price_tiers": body["hlc"]},
    }


async def test_a_later_edit_gets_a_higher_stamp_and_wins(primary: Primary) -> None:
    _, first = await primary.patch("evt-1", {"genre": "punk"})
    _, second = await primary.patch("evt-1", {"genre": "post-punk", "artist": "Band II"})
    assert Stamp.decode(second["hlc"]) > Stamp.decode(first["hlc"])
    event = await primary.store.event("evt-1")
    assert event is not None and (event.genre, event.artist) == ("post-punk", "Band II")
    assert len(await event_records(primary.store)) == 2


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"available": 3}, "'available'"),
        ({"name": "x", "capacity": 1}, "'capacity'"),
        ({"venue_id": "ven-2"}, "'venue_id'"),
        ({"name": None}, "'name'"),
        ({"artist": ""}, "'artist'"),
        ({"genre": 7}, "'genre'"),
        ({"price_tiers": []}, "'price_tiers'"),
        ({"price_tiers": [{"name": "A", "amount": -1}]}, "'price_tiers[0].amount'"),
        ({"price_tiers": [{"name": "A", "amount": 1, "currency": "USD"}]}, "'price_tiers[0].currency'"),
        ({"price_tiers": [{"name": "A", "amount": 1, "available": 4}]}, "'price_tiers[0].available'"),
        ({}, "metadata field"),
        ([1], "JSON merge patch object"),
    ],
)
async def test_bad_patches_are_refused_with_400_naming_the_field(primary: Primary, body: Any, named: str) -> None:
    status, answer = await primary.patch("evt-1", body)
    assert status == 400
    assert named in answer["error"]["message"]
    assert await event_records(primary.store) == []
    event = await primary.store.event("evt-1")
    assert event is not None and event.name == "Band Live" and event.metadata_stamps == {}


async def test_a_body_that_is_not_json_is_a_400(primary: Primary) -> None:
    async with ClientSession() as session:
        response = await session.patch(f"{primary.url}/v1/events/evt-1", data=b"{nope", headers=AUTH)
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "bad_request"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}])
async def test_no_or_wrong_token_is_a_401(primary: Primary, headers: dict[str, str]) -> None:
    async with ClientSession() as session:
        response = await session.patch(f"{primary.url}/v1/events/evt-1", json={"name": "x"}, headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert await event_records(primary.store) == []


async def test_an_empty_token_setting_refuses_every_edit(
    tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    locked = await start_primary(tmp_path / "locked.db", aiohttp_server, token="")
    stack.push_async_callback(locked.store.close)
    status, _ = await locked.patch("evt-1", {"name": "x"}, headers={"Authorization": "Bearer "})
    assert status == 401


async def test_an_unknown_event_is_a_404(primary: Primary) -> None:
    status, answer = await primary.patch("evt-404", {"name": "x"})
    assert status == 404
    assert answer["error"]["code"] == "not_found"


# A real shard -----------------------------------------------------------------------


async def feed_from(primary: Primary, after: int) -> ChangesDoc:
    """The primary's records after `after`, as the shard's follower would receive them."""
    bounds = await primary.store.feed_bounds()
    records = tuple(await primary.store.changes(after, 1_000))
    return ChangesDoc(records, bounds.head_position, bounds.head_position)


async def bootstrapped_shard(
    primary: Primary, tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> tuple[Shard, Store]:
    store = store_from_url(f"sqlite:{tmp_path / 'shard.db'}")
    await store.open()
    stack.push_async_callback(store.close)
    shard, server = await start_shard(store, shard_settings(primary.url), aiohttp_server, stack)

    async def caught_up() -> bool:
        head = (await primary.store.feed_bounds()).head_position.encode()
        return await store.checkpoint(UPSTREAM_SOURCE) == head

    await wait_until(caught_up, "bootstrap")
    await server.close()  # the follower stops; the records below are delivered by hand
    return shard, store


async def test_a_shard_converges_to_the_edit_and_ignores_a_redelivered_or_older_record(
    primary: Primary, tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    shard, store = await bootstrapped_shard(primary, tmp_path, aiohttp_server, stack)
    checkpoint = shard.checkpoint
    assert checkpoint is not None
    status, edit = await primary.patch("evt-1", {"name": "Renamed", "genre": "punk"})
    assert status == 200
    batch = await feed_from(primary, checkpoint.seq)
    assert [record.op for record in batch.records] == [OP_EVENT]
    own_head = (await store.feed_bounds()).head
    await shard.apply_batch(batch)
    assert await store.event("evt-1") == await primary.store.event("evt-1")
    # Republished in the shard's own feed, for its POPs and followers.
    own = await event_records(store)
    assert [(r.item_id, r.hlc, r.patch) for r in own] == [("evt-1", edit["hlc"], batch.records[0].patch)]
    assert (await store.feed_bounds()).head == own_head + 1
    # The same record again, and an older edit of the same field: nothing changes, nothing is republished.
    older = Stamp(Stamp.decode(edit["hlc"]).wall_ms - 1, 0, "elsewhere").encode()
    stale = ChangeRecord(
        Position(batch.head.epoch, batch.head.seq + 1),
        "evt-1",
        EVENT_RECORD_VERSION,
        older,
        OP_EVENT,
        {"name": "Stale name", STAMPS_KEY: {"name": older}},
    )
    await shard.apply_batch(batch)
    await shard.apply_batch(ChangesDoc((stale,), stale.pos, stale.pos))
    event = await store.event("evt-1")
    assert event is not None and (event.name, event.genre) == ("Renamed", "punk")
    assert (await store.feed_bounds()).head == own_head + 1
    assert shard.metrics.applied.value("duplicate") == 2
    # An event the shard does not mirror is not ours.
    await primary.patch("evt-2", {"name": "Elsewhere"})
    await shard.apply_batch(await feed_from(primary, batch.head.seq))
    assert await store.event("evt-2") is None
    assert shard.metrics.applied.value("not_ours") >= 1


async def test_a_following_shard_picks_up_an_edit_from_the_live_feed(
    primary: Primary, tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    store = store_from_url(f"sqlite:{tmp_path / 'live-shard.db'}")
    await store.open()
    stack.push_async_callback(store.close)
    shard, _ = await start_shard(store, shard_settings(primary.url), aiohttp_server, stack)

    async def caught_up() -> bool:
        head = (await primary.store.feed_bounds()).head_position.encode()
        return await store.checkpoint(UPSTREAM_SOURCE) == head

    await wait_until(caught_up, "bootstrap")
    status, _ = await primary.patch("evt-1", {"name": "Renamed live"})
    assert status == 200

    async def renamed() -> bool:
        event = await store.event("evt-1")
        return event is not None and event.name == "Renamed live"

    await wait_until(renamed, "the shard applied the event record from its follow loop")
    await wait_until(caught_up, "the shard's checkpoint passed the event record")
    assert await store.event("evt-1") == await primary.store.event("evt-1")
    assert shard.health()["last_error"] in (None, "")


async def test_a_resnapshot_merges_event_metadata_instead_of_overwriting_it(
    primary: Primary, tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    shard, store = await bootstrapped_shard(primary, tmp_path, aiohttp_server, stack)
    assert shard.checkpoint is not None
    # The shard learns of a write newer than anything the primary's snapshot holds
    # (another writer's edit that reached the shard first).
    newer = Stamp(int(time.time() * 1000) + 10_000, 0, "zeta").encode()
    ahead = ChangeRecord(
        Position(shard.checkpoint.epoch, shard.checkpoint.seq),
        "evt-3",
        EVENT_RECORD_VERSION,
        newer,
        OP_EVENT,
        {"artist": "Quartet", STAMPS_KEY: {"artist": newer}},
    )
    await shard.apply_batch(ChangesDoc((ahead,), shard.checkpoint, shard.checkpoint))
    status, _ = await primary.patch("evt-3", {"artist": "Duo", "name": "Third (late show)"})
    assert status == 200
    await shard.full_snapshot("test")
    event = await store.event("evt-3")
    assert event is not None
    assert event.artist == "Quartet"  # the newer stamp survives the snapshot
    assert event.name == "Third (late show)"  # the primary's newer field arrives with it
    assert event.metadata_stamps["artist"] == newer


# Every backend ----------------------------------------------------------------------


async def test_an_edit_and_its_record_commit_together_on_every_backend(seeded: Store, ledger: Ledger) -> None:
    head = (await seeded.feed_bounds()).head
    edit = await edit_event(seeded, ledger, "evt-2", {"artist": "Solo Trio"}, START)
    event = await seeded.event("evt-2")
    assert event is not None and event.artist == "Solo Trio" and event.metadata_stamps == {"artist": edit.hlc}
    records = await seeded.changes(head, 10)
    assert [(r.item_id, r.op, r.hlc, r.patch) for r in records] == [
        ("evt-2", OP_EVENT, edit.hlc, {"artist": "Solo Trio", STAMPS_KEY: {"artist": edit.hlc}})
    ]
    # A refused edit leaves neither the event nor the feed changed (one transaction).
    with pytest.raises(BadRequest, match="'available'"):
        await edit_event(seeded, ledger, "evt-2", {"artist": "Nope", "available": 1}, START)
    assert await seeded.event("evt-2") == event
    assert (await seeded.feed_bounds()).head == head + 1
