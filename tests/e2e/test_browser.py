"""End-to-end test 2 of issue 7: headless Chromium loads the storefront through a real POP.

The stack: the origin (SQLite, the seeded demo catalog, served in-process on
a loopback port), a POP in front of it (edge.service.build, hints on), and a
predictor answering the hint contract of edge/hints.py. The real `boxoffice
predictor serve` answers hints only with a trained purchase model (`predictor
generate` and `train`, far beyond this test's time) and hints what that model
scores, so the predictor here is a small aiohttp app that hints, to every
user, one event document (the real predictor's hint shape) and the first items
of that event.

Chromium is Debian's (/usr/bin/chromium), driven by Playwright with its
executable path set; Playwright's own browser downloads are never used. Each
phase runs in a fresh profile (an empty --user-data-dir):

1. A user logs in on the demo page and consents; the service worker installs,
   controls the page, fetches the user's hints and prefetches them (the POP
   counts prefetch requests). Opening the hinted event's page answers the
   hinted item from the prefetch cache: the page marks its row.
2. The same under `Save-Data: on`: the worker prefetches nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edge.hints import format_rfc3339
from origin.http import create_app
from origin.service import build_origin, open_store, seed_demo_catalog
from origin.settings import OriginSettings
from tests.support.edgepop import MakePop, RunningPop, client, make_pop, until

__all__ = ["client", "make_pop"]  # fixtures, re-exported for pytest

CHROMIUM = os.environ.get("BOXOFFICE_CHROMIUM", "/usr/bin/chromium")
async_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed (pip install playwright)")
pytestmark = [
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
    pytest.mark.timeout(90),
]

MakeServer = Callable[..., Awaitable[TestServer]]
SECRET = "e2e-user-secret"
HINTED_ITEMS = 2  # item documents hinted, besides the event document
PAGE_WAIT_MS = 20_000  # generous: only a broken stack waits this long
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclasses.dataclass
class Stack:
    pop: RunningPop
    region: str
    event_id: str
    hinted: list[str]  # item ids the predictor hints
    other: str  # an item id of the same event it does not hint
    asked: list[str]  # users the predictor was asked about

    @property
    def prefetched(self) -> int:
        stats = self.pop.app.prefetch
        return stats.prefetched + stats.prefetched_unattributed


@pytest.fixture
async def stack(tmp_path: Path, aiohttp_server: MakeServer, make_pop: MakePop) -> AsyncIterator[Stack]:
    settings = dataclasses.replace(
        OriginSettings(),
        data_dir=str(tmp_path / "origin"),
        shardmap_file=str(tmp_path / "shardmap.json"),
        demo_venues=12,
        demo_events=40,
        access_log=False,
    )
    (tmp_path / "origin").mkdir()
    store = open_store(settings)
    await store.open()
    try:
        await seed_demo_catalog(store, settings, only_if_empty=False)
        events = await store.events(None, None, 100)
        # An event with a few items, in some region: the POP serves that region.
        chosen = None
        for event in events:
            items = await store.event_items(event.id)
            if len(items) > HINTED_ITEMS:
                chosen = event, [item.id for item in items]
                break
        assert chosen is not None, "the demo catalog has no event with several items"
        event, item_ids = chosen
        async with contextlib.AsyncExitStack() as exits:
            origin = await build_origin(settings, store, exits)
            origin_server = await aiohttp_server(create_app(origin), shutdown_timeout=0.1)
            asked: list[str] = []
            predictor_server = await aiohttp_server(
                predictor_app(
                    [f"/v1/events/{event.id}", *(f"/v1/items/{item_id}" for item_id in item_ids[:HINTED_ITEMS])],
                    asked,
                ),
                shutdown_timeout=0.1,
            )
            running = await make_pop(
                [str(origin_server.make_url("")).rstrip("/")],
                user_secret=SECRET,
                predictor=str(predictor_server.make_url("")).rstrip("/"),
                region=event.region,
            )
            yield Stack(running, event.region, event.id, item_ids[:HINTED_ITEMS], item_ids[HINTED_ITEMS], asked)
    finally:
        await store.close()


def predictor_app(urls: list[str], asked: list[str]) -> web.Application:
    """The hint contract of edge/hints.py: every user gets `urls`, best first, for five minutes."""

    async def hints(request: web.Request) -> web.Response:
        user_id = request.match_info["user_id"]
        asked.append(user_id)
        body = {
            "user_id": user_id,
            "hints": [{"url": url, "score": round(0.9 - 0.1 * rank, 2)} for rank, url in enumerate(urls)],
            "expires_at": format_rfc3339(time.time() + 300),
        }
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/v1/hints/{user_id}", hints)
    return app


@contextlib.asynccontextmanager
async def chromium(profile: Path, **context_options: Any) -> AsyncIterator[Any]:
    """A persistent Chromium context on a new (so empty) profile directory; closed on exit."""
    async with async_api.async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, **context_options
        )
        try:
            yield context
        finally:
            await context.close()


async def log_in_with_consent(page: Any, base: str, user_id: str) -> None:
    await page.goto(base + "/", wait_until="load")
    await page.wait_for_selector('body[data-ready="true"]', timeout=PAGE_WAIT_MS)
    await page.fill("#user-id", user_id)
    await page.click("#login-button")
    await page.wait_for_selector(f'#user[data-user="{user_id}"]', timeout=PAGE_WAIT_MS)
    await page.check("#consent")


async def first_source(page: Any, item_id: str) -> str:
    row = f'tr[data-item="{item_id}"][data-first-source]'
    await page.wait_for_selector(row, timeout=PAGE_WAIT_MS)
    source: str = await page.get_attribute(row, "data-first-source")
    return source


async def test_service_worker_prefetches_hints_and_the_page_shows_it(stack: Stack, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{stack.pop.port}"
    async with chromium(tmp_path / "profile") as context:
        page = context.pages[0] if context.pages else await context.new_page()
        # Uncaught script errors and Content-Security-Policy refusals would show here.
        page_errors: list[str] = []
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        page.on(
            "console", lambda message: page_errors.append(message.text) if "Content Security" in message.text else None
        )
        await log_in_with_consent(page, base, "u-e2e")
        await page.wait_for_selector('#sw-state[data-state="controlling"]', timeout=PAGE_WAIT_MS)
        assert await page.evaluate("navigator.serviceWorker.controller !== null")
        assert await page.evaluate("navigator.serviceWorker.controller.scriptURL") == base + "/sw.js"
        await page.wait_for_selector('#prefetch-state[data-state="done"]', timeout=PAGE_WAIT_MS)
        assert await page.get_attribute("#prefetch-state", "data-count") == str(1 + HINTED_ITEMS)

        # The worker asked the POP for the hints and fetched each hinted URL as a prefetch.
        assert "u-e2e" in stack.asked
        assert stack.pop.app.prefetch.prefetched == 1 + HINTED_ITEMS

        # The home page listed events near the POP (its region), read through the POP.
        titles = await page.locator("ul.events li").count()
        assert titles > 0

        await page.goto(f"{base}/events/{stack.event_id}", wait_until="load")
        await page.wait_for_selector("#event-source", timeout=PAGE_WAIT_MS)
        assert await page.get_attribute("#event-source", "data-source") == "prefetch"
        assert await page.locator("#event-source .prefetch-marker").is_visible()
        for item_id in stack.hinted:
            assert await first_source(page, item_id) == "prefetch", item_id
            assert await page.locator(f'tr[data-item="{item_id}"] .prefetch-marker').is_visible()
        assert await first_source(page, stack.other) != "prefetch"
        assert not await page.locator(f'tr[data-item="{stack.other}"] .prefetch-marker').is_visible()
        # Each figure says how old it is (edge reads are advisory).
        age_text = await page.locator(f'tr[data-item="{stack.other}"] .age').inner_text()
        assert age_text == "just now" or age_text.endswith("old"), age_text
        # The worker reports each use to the POP (hint precision).
        await until(lambda: stack.pop.app.prefetch.used == 1 + HINTED_ITEMS, "the POP saw the prefetches used")

        # The status page charts the POP's samples, drawn in the page (inline SVG).
        stack.pop.app.sample_status(wall_now=time.time(), monotonic_now=time.monotonic())
        await page.goto(f"{base}/_edge/status", wait_until="load")
        await page.wait_for_selector('#summary[data-samples="1"]', timeout=PAGE_WAIT_MS)
        assert await page.locator('#chart svg rect.band[data-state="closed"]').count() == 1
        assert await page.locator("#chart svg .rate").count() >= 1
    assert page_errors == []


async def test_under_save_data_the_worker_prefetches_nothing(stack: Stack, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{stack.pop.port}"
    async with chromium(tmp_path / "profile", extra_http_headers={"Save-Data": "on"}) as context:
        page = context.pages[0] if context.pages else await context.new_page()
        await log_in_with_consent(page, base, "u-saver")
        await page.wait_for_selector('#sw-state[data-state="controlling"]', timeout=PAGE_WAIT_MS)
        await page.wait_for_selector('#prefetch-state[data-state="save-data"]', timeout=PAGE_WAIT_MS)

        await page.goto(f"{base}/events/{stack.event_id}", wait_until="load")
        await page.wait_for_selector('body[data-ready="true"]', timeout=PAGE_WAIT_MS)
        await page.wait_for_selector('#prefetch-state[data-state="save-data"]', timeout=PAGE_WAIT_MS)
        await page.wait_for_selector("#event-source", timeout=PAGE_WAIT_MS)
        assert await page.get_attribute("#event-source", "data-source") != "prefetch"
        for item_id in stack.hinted:
            assert await first_source(page, item_id) != "prefetch", item_id
        assert stack.prefetched == 0
        assert "u-saver" not in stack.asked
