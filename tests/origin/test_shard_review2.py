"""Review of the shard role: placement readiness, the sync loop's backoff, shutdown with open long-polls.

Real servers on loopback: the primary is the origin app over SQLite (tests.origin.test_shard);
the shutdown test runs `python -m origin serve` as a real process and sends it SIGTERM.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from origin.hlc import HybridClock
from origin.http import Origin, OriginMetrics, create_app
from origin.ledger import Ledger
from origin.shard import Shard, ShardMetrics, upstream_session
from origin.store.factory import store_from_url
from tests.origin.conftest import LIMITS
from tests.origin.test_shard import MakeServer, Primary, shard_settings, start_primary

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as exits:
        yield exits


@pytest.fixture
async def primary(tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack) -> Primary:
    started = await start_primary(tmp_path / "primary.db", aiohttp_server)
    stack.push_async_callback(started.store.close)
    return started


class _NoJitter(random.Random):
    """Backoff of zero seconds, so a test can run a thousand failed steps quickly."""

    def uniform(self, a: float, b: float) -> float:
        return a


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_placed_event_not_copied_yet_answers_503_not_404(
    primary: Primary, tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    store = store_from_url(f"sqlite:{tmp_path / 'shard.db'}")
    await store.open()
    stack.push_async_callback(store.close)
    session = await stack.enter_async_context(upstream_session())
    metrics = OriginMetrics()
    settings = shard_settings(primary.url, events=("evt-1",))
    shard = Shard(settings, store, session, ShardMetrics(metrics.registry), clock=lambda: 0.0)
    ledger = Ledger(store, HybridClock("shard", lambda: 0.0), lambda: 0.0, LIMITS)
    origin = Origin(settings, store, ledger, lambda: 0.0, metrics=metrics, shard=shard)
    server = await aiohttp_server(create_app(origin, background=False))  # the test drives the follower
    await shard.step()  # bootstrap evt-1
    assert shard.mirrored == {"evt-1"} and shard.ready_error() is None

    shard.desired = frozenset({"evt-1", "evt-3"})  # the shard map now places evt-3 here too
    async with ClientSession() as client:
        for path in ("/v1/events/evt-3", "/v1/items/itm-3-0"):
            async with client.get(server.make_url(path)) as response:
                body = await response.json()
                assert response.status == 503, path
                assert body["error"]["code"] == "shard_not_ready"
                assert response.headers["Retry-After"] == str(Shard.NOT_READY_RETRY_AFTER)
        async with client.get(server.make_url("/v1/events/evt-1")) as response:
            assert response.status == 200  # events already copied are served meanwhile
        async with client.get(server.make_url("/v1/items/itm-1-ga")) as response:
            assert response.status == 200

        await shard.step()  # reconcile: copy evt-3, then follow
        assert "evt-3" in shard.mirrored
        async with client.get(server.make_url("/v1/events/evt-3")) as response:
            assert response.status == 200 and len((await response.json())["items"]) == 4
        for path in ("/v1/events/evt-2", "/v1/items/itm-2-ga", "/v1/items/nope"):
            async with client.get(server.make_url(path)) as response:
                assert response.status == 404, path  # not placed here: a real miss


async def test_sync_loop_survives_a_long_outage_of_its_upstream(tmp_path: Path, stack: AsyncExitStack) -> None:
    """The doubling backoff overflowed a float after ~1,024 failures and ended the loop for good."""
    store = store_from_url(f"sqlite:{tmp_path / 'shard.db'}")
    await store.open()
    stack.push_async_callback(store.close)
    session = await stack.enter_async_context(upstream_session())
    metrics = ShardMetrics(OriginMetrics().registry)
    settings = shard_settings(f"http://127.0.0.1:{_closed_port()}", upstream_timeout=1.0)
    shard = Shard(settings, store, session, metrics, rng=_NoJitter())
    task = asyncio.create_task(shard.run())
    try:
        for _ in range(1200):  # bounded: ~1 ms per refused connection
            if task.done() or metrics.errors.value("upstream_error") > 1100:
                break
            await asyncio.sleep(0.05)
        assert not task.done(), task.exception() if task.done() else None
        assert metrics.errors.value("upstream_error") > 1100
        assert shard.last_error is not None and "127.0.0.1" in shard.last_error
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _get(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, None


def test_sigterm_ends_open_long_polls_and_the_process_exits(tmp_path: Path) -> None:
    port = _closed_port()
    base = f"http://127.0.0.1:{port}"
    # A long grace period and a long poll: without waking the poll, the process
    # would only exit when the poll's `wait` (30 s) runs out.
    process = subprocess.Popen(
        [sys.executable, "-m", "origin", "serve", "--no-access-log", "--log-level", "warning", "--port", str(port),
         "--database", f"sqlite:{tmp_path}/p.db", "--seed-demo", "--demo-venues", "3", "--demo-events", "3",
         "--shutdown-timeout", "60s", "--feed-max-wait", "30s"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
    )  # fmt: skip
    try:
        health: Any = None
        for _ in range(300):
            status, health = _get(f"{base}/v1/health")
            if status == 200:
                break
            time.sleep(0.1)
        assert health is not None and health["head"]
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            poll = pool.submit(_get, f"{base}/v1/changes?since={health['head']}&wait=30", 60)
            time.sleep(1.0)  # let the poll reach its handler (not an assertion on time)
            assert not poll.done()
            process.send_signal(signal.SIGTERM)
            returncode = process.wait(20)  # generous: the poll alone would hold it for 30 s
            assert returncode == 0
            status, answer = poll.result(timeout=60)
        assert status in (200, 503)
        if status == 200:
            assert answer["changes"] == [] and answer["next"] == health["head"]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
