"""edge.feedfollow against a real origin on loopback (and a scripted upstream for broken feeds).

The origin is the real aiohttp application over a SQLite store seeded with the
tiny catalog of the origin tests; holds go through its HTTP API and the
follower long-polls it like a POP does. Waits are bounded polls of a
condition; nothing asserts on wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edge.errors import PeerError
from edge.feedfollow import FeedFollower, FollowOptions, parse_batch
from ops.backoff import Backoff
from ops.settings import Seconds
from origin.hlc import HybridClock
from origin.http import Origin, create_app
from origin.ledger import Ledger
from origin.settings import OriginSettings
from origin.store.base import Store
from origin.store.sqlite import SQLiteStore
from tests.origin.conftest import START, tiny_catalog

MakeServer = Callable[..., Awaitable[TestServer]]

WAIT_BOUND = 15.0  # generous: a loaded CI machine, never a figure we measure
# Short long-polls and backoff so that the outage tests move quickly.
FAST = FollowOptions(long_poll_wait=1.0, request_margin=2.0, connect_timeout=1.0, backoff_initial=0.02,
                     backoff_max=0.2, max_outage=None)  # fmt: skip


async def until(condition: Callable[[], bool], what: str, bound: float = WAIT_BOUND) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {bound:.0f} s: {what}")
        await asyncio.sleep(0.01)


@dataclass
class Recorder:
    """The POP's side of the callbacks: what it was told, in order."""

    changes: list[tuple[str, int]] = field(default_factory=list)
    patches: list[dict[str, Any]] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)
    fail_next_change: bool = False

    def on_change(self, item_id: str, version: int, patch: dict[str, Any]) -> None:
        if self.fail_next_change:
            self.fail_next_change = False
            raise RuntimeError("the POP's eviction broke")
        self.changes.append((item_id, version))
        self.patches.append(patch)

    def on_reset(self, reason: str) -> None:
        self.resets.append(reason)


@contextlib.asynccontextmanager
async def running(follower: FeedFollower) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(follower.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = SQLiteStore(tmp_path / "origin.db")
    await opened.open()
    venues, events, items = tiny_catalog()
    await opened.load_catalog(venues, events, items, START)
    try:
        yield opened
    finally:
        await opened.close()


def origin_app(store: Store) -> web.Application:
    settings = OriginSettings(feed_max_wait=Seconds(5.0))
    ledger = Ledger(store, HybridClock("test", time.time), time.time, settings.ledger_limits())
    return create_app(Origin(settings, store, ledger, time.time), background=False)


async def start_origin(store: Store, aiohttp_server: MakeServer, port: int | None = None) -> TestServer:
    # A short shutdown grace: stopping the server must not wait for the follower's long-poll.
    return await aiohttp_server(origin_app(store), port=port, shutdown_timeout=0.1)


async def hold(server: TestServer, item_id: str, qty: int = 1) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.make_url("/v1/holds"), json={"item_id": item_id, "qty": qty, "user_id": "u1"}) as resp,
    ):
        assert resp.status == 201, await resp.text()


def base_url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


async def test_edge_follower_delivers_origin_changes_in_order(store: Store, aiohttp_server: MakeServer) -> None:
    server = await start_origin(store, aiohttp_server)
    pop = Recorder()
    follower = FeedFollower(base_url(server), pop.on_change, pop.on_reset, options=FAST)
    async with running(follower):
        await until(lambda: follower.connected and follower.lag_seconds == 0.0, "follower at the head")
        assert len(pop.resets) == 1 and pop.resets[0].startswith("start")  # the purge after the first position
        await hold(server, "itm-1-ga", 2)
        await hold(server, "itm-1-s", 1)
        await hold(server, "itm-1-ga", 1)
        await hold(server, "itm-2-ga", 3)
        await until(lambda: len(pop.changes) >= 4, "four changes")
        assert pop.changes == [("itm-1-ga", 2), ("itm-1-s", 2), ("itm-1-ga", 3), ("itm-2-ga", 2)]
        assert pop.patches[0]["available"] == 8 and pop.patches[2]["available"] == 7
        assert pop.patches[1]["available_seats"] == ["2", "3", "4", "5", "6"]
        head = (await store.feed_bounds()).head_position.encode()
        await until(lambda: follower.position == head and follower.lag_seconds == 0.0, "caught up again")
        status = follower.status().to_document()
        assert status["applied"] == 4 and status["resets"] == 1 and status["connected"] is True
        assert status["caught_up"] is True and status["last_error"] is None and status["position"] == head
    assert pop.changes == [("itm-1-ga", 2), ("itm-1-s", 2), ("itm-1-ga", 3), ("itm-2-ga", 2)]  # nothing twice


async def test_edge_follower_resets_when_its_position_was_pruned(store: Store, aiohttp_server: MakeServer) -> None:
    server = await start_origin(store, aiohttp_server)
    first = Recorder()
    follower = FeedFollower(base_url(server), first.on_change, first.on_reset, options=FAST)
    async with running(follower):
        await until(lambda: follower.connected, "connected")
        await hold(server, "itm-1-ga")
        await until(lambda: first.changes == [("itm-1-ga", 2)], "the first change")
    old_position = follower.position
    assert old_position is not None

    # While the follower is stopped: two changes, then a prune of the whole feed.
    await hold(server, "itm-1-s")
    await hold(server, "itm-2-ga")
    far_future = datetime.now(UTC) + timedelta(days=1)
    assert await store.prune(keep_changes=0, changes_before=far_future, idempotency_before=START) > 0

    pop = Recorder()
    restarted = FeedFollower(base_url(server), pop.on_change, pop.on_reset, options=FAST, position=old_position)
    async with running(restarted):
        await until(lambda: len(pop.resets) == 1, "a reset on 410")
        assert "retention" in pop.resets[0]
        assert pop.changes == []  # the pruned changes are covered by the purge, never skipped silently
        head = (await store.feed_bounds()).head_position.encode()
        await until(lambda: restarted.position == head, "the new snapshot position")
        await hold(server, "itm-1-ga")
        await until(lambda: pop.changes == [("itm-1-ga", 3)], "the change after the reset")
        assert restarted.resets == 1

    # A position from another history (a restored or re-created database) is gone too.
    stranger = Recorder()
    foreign = FeedFollower(base_url(server), stranger.on_change, stranger.on_reset, options=FAST,
                           position="otherhistory:2")  # fmt: skip
    async with running(foreign):
        await until(lambda: len(stranger.resets) == 1 and foreign.connected, "a reset for another epoch")
        assert "history" in stranger.resets[0]
        assert foreign.position == (await store.feed_bounds()).head_position.encode()


async def test_edge_follower_backs_off_while_the_origin_is_down_then_resumes(
    store: Store, aiohttp_server: MakeServer
) -> None:
    server = await start_origin(store, aiohttp_server)
    port = server.port
    assert port is not None
    pop = Recorder()
    options = FollowOptions(long_poll_wait=1.0, request_margin=2.0, connect_timeout=1.0, backoff_initial=0.02,
                            backoff_max=0.2, max_outage=0.3)  # fmt: skip
    follower = FeedFollower(base_url(server), pop.on_change, pop.on_reset, options=options)
    async with running(follower):
        await until(lambda: follower.connected, "connected")
        await hold(server, "itm-1-ga")
        await until(lambda: pop.changes == [("itm-1-ga", 2)], "the first change")
        position = follower.position

        await server.close()
        await until(lambda: not follower.connected and follower.last_error is not None, "the outage noticed")
        await until(lambda: follower.status().consecutive_failures >= 3, "retries with backoff")
        # Down longer than max_outage: the POP is told to purge, once per outage.
        await until(lambda: len(pop.resets) == 2, "the outage reset")
        assert "unreachable" in pop.resets[1]
        assert follower.position == position
        lag = follower.lag_seconds
        assert lag is not None and lag > 0

        restarted = await start_origin(store, aiohttp_server, port=port)
        await until(lambda: follower.connected, "reconnected to the new server on the same port")
        await hold(restarted, "itm-1-s")
        await until(lambda: pop.changes == [("itm-1-ga", 2), ("itm-1-s", 2)], "the change after recovery")
        assert len(pop.resets) == 2  # resumed from its position: the same history, nothing pruned
        assert follower.status().consecutive_failures == 0


# A scripted upstream: broken feeds the real origin never produces -----------


@dataclass
class Script:
    """Answers of a fake upstream, one per `/v1/changes` request; then empty long-polls."""

    answers: list[tuple[int, Any]]
    requests: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/snapshot", self.snapshot)
        app.router.add_get("/v1/changes", self.changes)
        return app

    async def snapshot(self, request: web.Request) -> web.Response:
        return web.json_response({"position": "ep1:0", "items": [], "next_after": None})

    async def changes(self, request: web.Request) -> web.Response:
        since = request.query["since"]
        self.requests.append(since)
        if self.answers:
            status, body = self.answers.pop(0)
            if isinstance(body, str):
                return web.Response(status=status, text=body, content_type="application/json")
            return web.json_response(body, status=status)
        await asyncio.sleep(0.05)
        return web.json_response({"changes": [], "next": since, "head": since})


def change(seq: int, item_id: str, version: int) -> dict[str, Any]:
    stamp = f"{int(time.time() * 1000):013d}-00000-origin"
    return {"pos": f"ep1:{seq}", "item_id": item_id, "version": version, "hlc": stamp, "op": "upsert",
            "patch": {"available": version}}  # fmt: skip


async def test_edge_follower_survives_garbage_gaps_and_a_failing_callback(aiohttp_server: MakeServer) -> None:
    script = Script([
        (500, {"error": {"status": 500, "code": "internal_error", "message": "boom"}}),
        (200, "{not json"),
        (200, {"changes": [{"pos": "ep1:1", "item_id": "a"}], "next": "ep1:1", "head": "ep1:1"}),
        (200, {"changes": [change(1, "a", 2), change(2, "b", 2)], "next": "ep1:2", "head": "ep1:3"}),
        # Record 3 is missing: the POP is told to purge, then 4 and 5 apply.
        (200, {"changes": [change(4, "c", 2), change(5, "a", 3)], "next": "ep1:5", "head": "ep1:5"}),
    ])  # fmt: skip
    server = await aiohttp_server(script.app(), shutdown_timeout=0.1)
    pop = Recorder()
    follower = FeedFollower(base_url(server), pop.on_change, pop.on_reset, options=FAST)
    async with running(follower):
        await until(lambda: pop.changes[:4] == [("a", 2), ("b", 2), ("c", 2), ("a", 3)], "changes up to the gap")
        # A duplicate of 5 (at-least-once) is ignored; 6 makes the callback fail once, then is redelivered.
        pop.fail_next_change = True
        script.answers.append(
            (200, {"changes": [change(5, "a", 3), change(6, "b", 3)], "next": "ep1:6", "head": "ep1:6"})
        )
        script.answers.append((200, {"changes": [change(6, "b", 3)], "next": "ep1:6", "head": "ep1:6"}))
        await until(lambda: len(pop.changes) == 5, "the change whose callback failed, redelivered")
        assert pop.changes[4] == ("b", 3)
        await until(lambda: follower.position == "ep1:6" and follower.lag_seconds == 0.0, "at the head")
    assert pop.changes == [("a", 2), ("b", 2), ("c", 2), ("a", 3), ("b", 3)]
    assert pop.resets[0].startswith("start") and "gap" in pop.resets[1] and len(pop.resets) == 2
    assert script.requests[:3] == ["ep1:0", "ep1:0", "ep1:0"]  # no progress past errors
    assert follower.last_error is not None and "on_change" in follower.last_error


def test_edge_backoff_stays_within_its_bounds() -> None:
    lowest = Backoff(0.1, 5.0, lambda: 0.0)
    assert [lowest.next_delay() for _ in range(8)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.5, 2.5])
    highest = Backoff(0.1, 5.0, lambda: 0.999999)
    delays = [highest.next_delay() for _ in range(200)]
    assert delays[:3] == pytest.approx([0.1, 0.2, 0.4], rel=1e-5) and max(delays) <= 5.0
    seeded = Backoff(0.1, 5.0, random.Random(7).random)
    assert all(0.05 <= seeded.next_delay() <= 5.0 for _ in range(1000))
    seeded.reset()
    assert seeded.next_delay() <= 0.1


@pytest.mark.parametrize(
    "doc",
    [
        None,
        {"changes": {}},
        {"changes": [], "next": 5, "head": "e:1"},
        {"changes": [], "next": "e:-1", "head": "e:1"},
        {"changes": [{"pos": "e:1", "item_id": "a", "version": True, "patch": {}}], "next": "e:1", "head": "e:1"},
        {"changes": [{"pos": "e:1", "item_id": "a", "version": 2, "patch": []}], "next": "e:1", "head": "e:1"},
        {"changes": [{"pos": "e:1", "item_id": "", "version": 2, "patch": {}}], "next": "e:1", "head": "e:1"},
    ],
)
def test_edge_feed_answers_out_of_contract_are_peer_errors(doc: Any) -> None:
    with pytest.raises(PeerError):
        parse_batch(doc)


def test_edge_feed_answer_with_a_bad_stamp_still_applies() -> None:
    batch = parse_batch({"changes": [{"pos": "e:1", "item_id": "a", "version": 2, "hlc": "yesterday", "patch": {}}],
                         "next": "e:1", "head": "e:1"})  # fmt: skip
    assert batch.records[0].hlc_wall is None and batch.records[0].item_id == "a"


def test_edge_follow_options_name_the_bad_key() -> None:
    with pytest.raises(ValueError, match="batch_limit"):
        FollowOptions(batch_limit=0).validate()
    with pytest.raises(ValueError, match="max_outage"):
        FollowOptions(max_outage=0).validate()
    with pytest.raises(ValueError, match="backoff_max"):
        FollowOptions(backoff_initial=1.0, backoff_max=0.5).validate()
