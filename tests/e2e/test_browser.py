"""End-to-end test 2 of issue 7: headless Chromium loads the storefront through a real POP.

The stack, all in this process on loopback ports: the origin (SQLite), a POP
in front of it (edge.service.build, hints on) and the real predictor sidecar
(predictor.service.build and predictor.api.create_app: what `boxoffice
predictor serve --models DIR --workload DIR` serves), its models trained on
a tiny generated workload (tests/support/trained.py, ~5 s once per process).

The workload is laid over the real clock (its last day is today) because
the POP and the browser judge hint lists by the real time. The origin loads
the very catalog the workload ran over, so every event the predictor hints
is a page the origin serves. Before the browser starts, the workload's
activity so far is replayed into the predictor through `POST /v1/events`, as
POPs would have sent it, and the demo user is a consenting human of the
workload the model now scores above the hint threshold: its hints are event
documents (``/v1/events/{id}``), the shape the predictor hints.

Chromium is Debian's (/usr/bin/chromium), driven by Playwright with its
executable path set; Playwright's own browser downloads are never used. Each
phase runs in a fresh profile (an empty --user-data-dir):

1. The demo user logs in and consents; the service worker installs, controls
   the page, fetches the user's hints (the POP asks the predictor) and
   prefetches them (the POP counts prefetch requests). Opening the top hinted
   event's page answers its event document from the prefetch cache: the page
   marks it. Its item documents, never hinted, come from the POP.
2. The same user under `Save-Data: on`: the worker prefetches nothing and the
   predictor is never asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from edge.hints import HintServiceStats
from ops.settings import HOUR, Seconds
from origin.http import create_app as create_origin_app
from origin.service import build_origin, open_store
from origin.settings import OriginSettings
from predictor.api import Predictor
from predictor.api import create_app as create_predictor_app
from predictor.serve_settings import ServeSettings
from predictor.service import build as build_predictor
from tests.support.edgepop import MakePop, RunningPop, client, make_pop, until
from tests.support.trained import TrainedWorkload, engaged_humans, log_events, trained_workload, window_around

__all__ = ["client", "make_pop"]  # fixtures, re-exported for pytest

CHROMIUM = os.environ.get("BOXOFFICE_CHROMIUM", "/usr/bin/chromium")
async_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed (pip install playwright)")
pytestmark = [
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
    pytest.mark.timeout(90),
]

MakeServer = Callable[..., Awaitable[TestServer]]
SECRET = "e2e-user-secret"
PAGE_WAIT_MS = 20_000  # generous: only a broken stack waits this long
REQUEST_BOUND = 20.0  # seconds; one replayed batch or hint request on a busy two-core host
REPLAY_BATCH: Final = 1000  # events per POST /v1/events (the sidecar's max_batch_events default)
# The replay reaches back to the workload's start, at most two days ago (window_around).
REPLAY_AGE: Final = Seconds(72 * HOUR)
# Engaged users tried as the demo user; on the tiny workload the first one has hints at any hour.
DEMO_CANDIDATES: Final = 20
HINT_RESULTS: Final = ("hints", "bot", "empty", "unknown")  # predictor_hints_served_total's labels
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
class RunningPredictor:
    predictor: Predictor
    url: str
    user: str  # the demo user: a consenting human of the workload with hints
    hints: list[str]  # the URLs hinted to them, best first

    @property
    def hint_answers(self) -> float:
        """Hint requests the predictor answered so far, whatever the answer."""
        return sum(self.predictor.metrics.hints.value(result) for result in HINT_RESULTS)


@dataclasses.dataclass
class Stack:
    pop: RunningPop
    predictor: RunningPredictor
    region: str
    event_id: str  # the top hinted event
    items: list[str]  # its items (never hinted: the predictor hints event documents)
    hint_answers_before: float  # the predictor's hint answers before any browser ran

    @property
    def prefetched(self) -> int:
        stats = self.pop.app.prefetch
        return stats.prefetched + stats.prefetched_unattributed

    @property
    def hint_lookups(self) -> HintServiceStats:
        """The POP's own counters of its predictor lookups."""
        assert self.pop.app.hints is not None, "the POP was built without hints"
        return self.pop.app.hints.stats


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedWorkload:
    return trained_workload(tmp_path_factory.getbasetemp(), window_around(datetime.now(UTC)))


@pytest.fixture
async def predictor(trained: TrainedWorkload, aiohttp_server: MakeServer) -> AsyncIterator[RunningPredictor]:
    """The real sidecar on the real clock, fed the workload's activity so far, with a demo user who has hints."""
    settings = ServeSettings(
        models=str(trained.models_dir),
        workload=str(trained.workload_dir),
        max_event_age=REPLAY_AGE,
        reload_interval=Seconds(0),
    )
    settings.validate()
    served = await asyncio.to_thread(build_predictor, settings)
    try:
        server = await aiohttp_server(create_predictor_app(served), shutdown_timeout=0.1)
        url = str(server.make_url("")).rstrip("/")
        now_ms = round(time.time() * 1000)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_BOUND)) as session:
            await replay(session, url, await asyncio.to_thread(log_events, trained.workload, now_ms))
            candidates = await asyncio.to_thread(engaged_humans, trained, now_ms, DEMO_CANDIDATES)
            user, hints = await first_with_hints(session, url, [user for user, _ in candidates])
        yield RunningPredictor(served, url, user, hints)
    finally:
        served.executor.shutdown(wait=True, cancel_futures=True)


async def replay(session: aiohttp.ClientSession, url: str, events: list[dict[str, Any]]) -> None:
    """POST the events in batches, as POPs would have; every one must be applied."""
    assert events, "the workload has no activity before now"
    for start in range(0, len(events), REPLAY_BATCH):
        batch = events[start : start + REPLAY_BATCH]
        async with session.post(f"{url}/v1/events", json=batch) as response:
            answer = await response.json()
            assert response.status == 200, answer
            assert answer == {"accepted": len(batch), "duplicates": 0}, answer


async def first_with_hints(session: aiohttp.ClientSession, url: str, users: list[str]) -> tuple[str, list[str]]:
    """The first of `users` the predictor gives hints, and those hints.

    Asking fixes the user's list for the predictor's hint lifetime (5 minutes), so the POP,
    asking later, gets the same list.
    """
    for user in users:
        async with session.get(f"{url}/v1/hints/{user}") as response:
            document = await response.json()
            assert response.status == 200, document  # the workload's consenting users are known
        if document["hints"]:
            return user, [hint["url"] for hint in document["hints"]]
    pytest.fail(f"none of the {len(users)} most engaged consenting humans of the workload has hints now")


@pytest.fixture
async def stack(
    tmp_path: Path,
    aiohttp_server: MakeServer,
    make_pop: MakePop,
    trained: TrainedWorkload,
    predictor: RunningPredictor,
) -> AsyncIterator[Stack]:
    settings = dataclasses.replace(
        OriginSettings(),
        data_dir=str(tmp_path / "origin"),
        shardmap_file=str(tmp_path / "shardmap.json"),
        access_log=False,
    )
    (tmp_path / "origin").mkdir()
    store = open_store(settings)
    await store.open()
    try:
        catalog = trained.catalog
        await store.load_catalog(catalog.venues, catalog.events, catalog.items, datetime.now(UTC))
        top = predictor.hints[0]
        assert top.startswith("/v1/events/"), predictor.hints  # the predictor hints event documents
        event = await store.event(top.removeprefix("/v1/events/"))
        assert event is not None, f"the origin lacks the hinted {top}"
        items = [item.id for item in await store.event_items(event.id)]
        assert items, f"{event.id} has no items"
        async with contextlib.AsyncExitStack() as exits:
            origin = await build_origin(settings, store, exits)
            origin_server = await aiohttp_server(create_origin_app(origin), shutdown_timeout=0.1)
            running = await make_pop(
                [str(origin_server.make_url("")).rstrip("/")],
                user_secret=SECRET,
                predictor=predictor.url,
                region=event.region,
            )
            yield Stack(running, predictor, event.region, event.id, items, predictor.hint_answers)
    finally:
        await store.close()


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
    user, hints = stack.predictor.user, stack.predictor.hints
    async with chromium(tmp_path / "profile") as context:
        page = context.pages[0] if context.pages else await context.new_page()
        # Uncaught script errors and Content-Security-Policy refusals would show here.
        page_errors: list[str] = []
        page.on("pageerror", lambda error: page_errors.append(str(error)))
        page.on(
            "console", lambda message: page_errors.append(message.text) if "Content Security" in message.text else None
        )
        await log_in_with_consent(page, base, user)
        await page.wait_for_selector('#sw-state[data-state="controlling"]', timeout=PAGE_WAIT_MS)
        assert await page.evaluate("navigator.serviceWorker.controller !== null")
        assert await page.evaluate("navigator.serviceWorker.controller.scriptURL") == base + "/sw.js"
        await page.wait_for_selector('#prefetch-state[data-state="done"]', timeout=PAGE_WAIT_MS)
        assert await page.get_attribute("#prefetch-state", "data-count") == str(len(hints))

        # The POP asked the real predictor, took its list as valid, and the worker fetched each hinted
        # URL as a prefetch.
        assert stack.predictor.hint_answers > stack.hint_answers_before
        assert stack.hint_lookups.predictor_requests >= 1
        assert stack.hint_lookups.failures == 0
        assert stack.pop.app.prefetch.prefetched == len(hints)

        # The home page listed events near the POP (its region), read through the POP.
        titles = await page.locator("ul.events li").count()
        assert titles > 0

        await page.goto(f"{base}/events/{stack.event_id}", wait_until="load")
        await page.wait_for_selector("#event-source", timeout=PAGE_WAIT_MS)
        assert await page.get_attribute("#event-source", "data-source") == "prefetch"
        assert await page.locator("#event-source .prefetch-marker").is_visible()
        # Item documents are not hinted (the predictor hints event pages): they come from the POP.
        other = stack.items[0]
        assert await first_source(page, other) != "prefetch"
        assert not await page.locator(f'tr[data-item="{other}"] .prefetch-marker').is_visible()
        # Each figure says how old it is (edge reads are advisory).
        age_text = await page.locator(f'tr[data-item="{other}"] .age').inner_text()
        assert age_text == "just now" or age_text.endswith("old"), age_text
        # The worker reports the use to the POP (hint precision): one hinted page was opened.
        await until(lambda: stack.pop.app.prefetch.used >= 1, "the POP saw the prefetched event document used")
        assert stack.pop.app.prefetch.used == 1

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
        # The user the predictor has hints for: Save-Data alone must stop the prefetching.
        await log_in_with_consent(page, base, stack.predictor.user)
        await page.wait_for_selector('#sw-state[data-state="controlling"]', timeout=PAGE_WAIT_MS)
        await page.wait_for_selector('#prefetch-state[data-state="save-data"]', timeout=PAGE_WAIT_MS)

        await page.goto(f"{base}/events/{stack.event_id}", wait_until="load")
        await page.wait_for_selector('body[data-ready="true"]', timeout=PAGE_WAIT_MS)
        await page.wait_for_selector('#prefetch-state[data-state="save-data"]', timeout=PAGE_WAIT_MS)
        await page.wait_for_selector("#event-source", timeout=PAGE_WAIT_MS)
        assert await page.get_attribute("#event-source", "data-source") != "prefetch"
        assert await first_source(page, stack.items[0]) != "prefetch"
        assert stack.prefetched == 0
        assert stack.predictor.hint_answers == stack.hint_answers_before
        assert stack.hint_lookups.predictor_requests == 0
