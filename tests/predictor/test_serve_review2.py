"""Review of the predictor sidecar: bad input, a broken model file, privacy, memory bounds, item hints.

Real sidecars on loopback over the tiny trained workload (tests/support/trained.py); no timing
assertions: every wait is a bounded poll on a condition.
"""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import threading
import time
import types
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest
from aiohttp.test_utils import TestServer

from edge.hints import is_hintable_url, parse_predictor_hints
from ops.settings import Seconds, SettingsError
from predictor.api import Predictor, create_app
from predictor.features import EventFacts
from predictor.scoring import MAX_HINTS, Scorer
from predictor.serve_settings import ServeSettings
from predictor.service import build
from predictor.sidecar import CatalogData, Sidecar
from tests.support.trained import TrainedWorkload, engaged_humans, log_events

BOUND = 20.0  # seconds; only a broken sidecar waits this long
BATCH = 1000


@dataclass
class FixedClock:
    at: float

    def __call__(self) -> float:
        return self.at


@dataclass
class Running:
    server: TestServer
    session: aiohttp.ClientSession
    predictor: Predictor

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, bytes]:
        async with self.session.request(method, str(self.server.make_url(path)), **kwargs) as response:
            return response.status, response.headers, await response.read()

    async def post_events(self, events: list[dict[str, Any]]) -> tuple[int, Any]:
        status, _, body = await self.request("POST", "/v1/events", json=events)
        return status, json.loads(body)

    async def replay(self, events: list[dict[str, Any]]) -> None:
        for start in range(0, len(events), BATCH):
            status, answer = await self.post_events(events[start : start + BATCH])
            assert status == 200, answer


Start = Callable[..., Any]


@pytest.fixture
async def start(trained_workload: TrainedWorkload) -> AsyncIterator[Start]:
    running: list[Running] = []

    async def begin(at_ms: int, background: bool = False, **overrides: Any) -> Running:
        options: dict[str, Any] = {
            "models": str(trained_workload.models_dir),
            "workload": str(trained_workload.workload_dir),
            "max_event_age": Seconds(3 * 24 * 3600),
            "reload_interval": Seconds(0),
            **overrides,
        }
        settings = ServeSettings(**options)
        settings.validate()
        predictor = await asyncio.to_thread(build, settings, FixedClock(at_ms / 1000))
        server = TestServer(create_app(predictor, background=background), host="127.0.0.1")
        await server.start_server()
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=BOUND))
        running.append(Running(server, session, predictor))
        return running[-1]

    yield begin
    for one in running:
        await one.session.close()
        await one.server.close()
        one.predictor.executor.shutdown(wait=True)


def epoch_ms(value: Any) -> int:
    return int(pd.Timestamp(value).tz_convert("UTC").value // 1_000_000)


@pytest.fixture(scope="module")
def moment(trained_workload: TrainedWorkload) -> int:
    """Noon of the workload's second day: its on-sales and users are around."""
    return epoch_ms(trained_workload.workload.config.start) + 36 * 3600 * 1000


def view(n: int, user: str, event_id: str, at_ms: int, **fields: Any) -> dict[str, Any]:
    doc = {"id": f"r2-{n}", "ts": at_ms - 60_000 + n, "user_id": user, "action": "event_view",
           "event_id": event_id, "session_id": 1}  # fmt: skip
    doc.update(fields)
    return doc


def some_event(trained: TrainedWorkload) -> str:
    return str(trained.workload.event_plan["event_id"].iloc[0])


# Bad input: a clear 400, never a 500 ---------------------------------------------------


async def test_a_deeply_nested_consent_body_is_a_400_not_a_crash(start: Start, moment: int) -> None:
    running = await start(moment)
    status, _, body = await running.request("PUT", "/v1/users/u-1/consent", data=b"[" * 100_000)
    assert status == 400, body
    assert json.loads(body)["error"]["code"] == "bad_request"


@pytest.mark.parametrize("action", [["event_view"], {"a": 1}])
async def test_an_action_of_the_wrong_json_type_is_a_400_naming_it(
    start: Start, moment: int, trained_workload: TrainedWorkload, action: Any
) -> None:
    running = await start(moment)
    status, answer = await running.post_events([view(0, "u-1", some_event(trained_workload), moment, action=action)])
    assert status == 400, answer
    assert answer["error"]["message"].startswith("events[0].action"), answer


# The model reloader survives a broken model file --------------------------------------


async def test_the_reloader_survives_a_broken_model_and_loads_the_next(
    start: Start, moment: int, trained_workload: TrainedWorkload, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(trained_workload.models_dir, models)
    running = await start(moment, background=True, models=str(models), reload_interval=Seconds(0.05))
    meta = json.loads((models / "demand-v1.meta.json").read_text())
    shutil.copy(models / "demand-v1.json", models / "demand-v2.json")
    # a demand model whose horizon is not a number: loadable, but unusable
    (models / "demand-v2.meta.json").write_text(
        json.dumps({**meta, "version": 2, "model_file": "demand-v2.json", "horizon_s": "soon"})
    )
    deadline = time.monotonic() + BOUND
    while not any(not task.done() and task.get_name() == "predictor-reload" for task in asyncio.all_tasks()):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # a few reload rounds over the broken version (the outcome is asserted below)
    shutil.copy(models / "demand-v1.json", models / "demand-v3.json")
    (models / "demand-v3.meta.json").write_text(json.dumps({**meta, "version": 3, "model_file": "demand-v3.json"}))
    while running.predictor.model_versions()["demand"] != 3:
        assert time.monotonic() < deadline, "the reloader died on the broken version"
        await asyncio.sleep(0.05)
    status, _, body = await running.request("GET", "/v1/forecast")
    assert status == 200, body


# Privacy -----------------------------------------------------------------------------


def traces(root: Any, needle: str) -> list[str]:
    """Where `needle` appears in the object graph under `root`: strings equal to or containing it,
    in Python containers, objects, numpy object arrays and pandas frames (whatever their string dtype)."""
    found: list[str] = []
    seen: set[int] = set()
    stack: list[Any] = [root]
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.FrameType,
            types.CodeType, threading.Thread)  # fmt: skip
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        if isinstance(obj, str):
            if needle in obj:
                found.append(obj)
            continue
        if isinstance(obj, bytes | bytearray):
            if needle.encode() in obj:
                found.append(repr(obj))
            continue
        if isinstance(obj, pd.DataFrame):
            stack.extend([obj.index, *(obj[column] for column in obj.columns), *map(str, obj.columns)])
            continue
        if isinstance(obj, pd.Series | pd.Index):
            if obj.dtype == object or pd.api.types.is_string_dtype(obj.dtype):
                stack.extend(obj.tolist())
            if isinstance(obj, pd.Series):
                stack.append(obj.index)
            continue
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                stack.extend(obj.ravel().tolist())
            elif obj.dtype.kind in "US":
                stack.extend(str(value) for value in obj.ravel().tolist())
            continue
        stack.extend(gc.get_referents(obj))
    return found


async def test_delete_leaves_no_trace_of_a_seeded_user_anywhere(
    start: Start, moment: int, trained_workload: TrainedWorkload
) -> None:
    history = trained_workload.workload.purchase_history
    users = trained_workload.workload.users.set_index("user_id")
    buyers = [u for u in history["user_id"].astype(str) if bool(users.loc[u, "consent"])]
    user = buyers[0]  # a consenting profile of the workload, with purchase history
    running = await start(moment)
    sidecar = running.predictor.sidecar
    assert sidecar.users.get(user) is not None
    events = [view(n, user, some_event(trained_workload), moment, id=f"{user}/{n}", region="eu-west") for n in range(3)]
    assert (await running.post_events(events))[0] == 200
    assert (await running.request("GET", f"/v1/hints/{user}"))[0] == 200
    assert sidecar.users.get(user).pending_hints is not None
    assert traces(running.predictor, user)  # the walk does see the user while they are known

    status, _, _ = await running.request("DELETE", f"/v1/users/{user}")
    assert status == 204
    assert traces(running.predictor, user) == []  # profile, features, dedup ids, hint cache, workload tables
    _, _, metrics = await running.request("GET", "/metrics")
    assert user not in metrics.decode()
    # a retry of the deleted user's batch is applied again (it is new to the sidecar), as nothing of it is left
    assert (await running.post_events(events))[1] == {"accepted": 3, "duplicates": 0}


async def test_a_user_without_consent_leaves_nothing_under_their_id(
    start: Start, moment: int, trained_workload: TrainedWorkload
) -> None:
    users = trained_workload.workload.users
    refuser = str(users.loc[~users["consent"].to_numpy(dtype=bool), "user_id"].iloc[0])
    running = await start(moment)
    events = [view(n, refuser, some_event(trained_workload), moment, id=f"{refuser}#{n}", region="na-east")
              for n in range(3)]  # fmt: skip
    assert (await running.post_events(events))[1] == {"accepted": 3, "duplicates": 0}
    assert (await running.post_events(events))[1] == {"accepted": 0, "duplicates": 3}  # retries still deduplicated
    assert (await running.request("GET", f"/v1/hints/{refuser}"))[0] == 404
    assert traces(running.predictor, refuser) == []


async def test_location_is_kept_only_when_given(start: Start, moment: int, trained_workload: TrainedWorkload) -> None:
    running = await start(moment)
    sidecar = running.predictor.sidecar
    event_id = some_event(trained_workload)
    assert (await running.request("PUT", "/v1/users/u-where/consent", json={"consent": True}))[0] == 200
    assert (await running.post_events([view(0, "u-where", event_id, moment)]))[0] == 200
    assert sidecar.users.get("u-where").region is None  # neither the consent nor the event said where
    assert (await running.post_events([view(1, "u-where", event_id, moment, region="ap-south")]))[0] == 200
    assert sidecar.users.get("u-where").region == "ap-south"


# Memory bounds and the scoring thread ------------------------------------------------


def test_a_flood_of_distinct_users_and_ids_stays_bounded(trained_workload: TrainedWorkload) -> None:
    from predictor.ingest import IncomingEvent

    facts = EventFacts.from_plan(trained_workload.workload.event_plan)
    scorer = Scorer.load(trained_workload.models_dir)
    sidecar = Sidecar(CatalogData(facts, {}), scorer, 0.1, 60_000, max_users=50, dedup_capacity=100)
    event_id = str(facts.frame.index[0])
    now = int(facts.frame["onsale_ms"].iloc[0])
    for n in range(1000):
        consent = None if n % 2 else True
        sidecar.ingest([IncomingEvent(f"id-{n}", now + n, f"u-{n}", "event_view", event_id, None, 1, None, consent,
                                      False)])  # fmt: skip
    assert len(sidecar.users) == 50
    assert len(sidecar.online._users) <= 50
    assert len(sidecar.online._sequence) <= 50
    assert len(sidecar._seen_ids) == 100
    assert sidecar.events_applied == 1000


async def test_past_the_queue_bound_requests_get_503_and_the_queued_ones_are_answered(
    start: Start, moment: int
) -> None:
    running = await start(moment, max_queued_calls=3)
    predictor = running.predictor
    gate = threading.Event()
    blocker = predictor.executor.submit(gate.wait, BOUND)  # the scoring thread is busy
    try:
        queued = [asyncio.ensure_future(running.request("GET", "/v1/warm/eu-west")) for _ in range(3)]
        deadline = time.monotonic() + BOUND
        while predictor.queued_calls < 3:
            assert time.monotonic() < deadline, "the requests did not queue"
            await asyncio.sleep(0.01)
        status, headers, body = await running.request("GET", "/v1/warm/eu-west")
        assert status == 503, body
        assert json.loads(body)["error"]["code"] == "overloaded"
        assert int(headers["Retry-After"]) >= 1
        status, _, _ = await running.request("POST", "/v1/events", json=[])
        assert status == 503  # batches too: their bodies would wait in memory
    finally:
        gate.set()
    assert blocker.result() is True
    assert [status for status, _, _ in await asyncio.gather(*queued)] == [200, 200, 200]
    assert predictor.queued_calls == 0


class _ThreadRecordingScorer(Scorer):
    """The real scorer, noting the thread each scoring call ran on."""

    threads: list[str]

    def score(self, features: Any) -> Any:
        self.threads.append(threading.current_thread().name)
        return super().score(features)


async def test_scoring_never_runs_on_the_event_loop(start: Start, trained_workload: TrainedWorkload) -> None:
    at = epoch_ms(trained_workload.workload.config.start) + 36 * 3600 * 1000
    (user, _), *_ = engaged_humans(trained_workload, at, 1)
    running = await start(at)
    loaded = running.predictor.sidecar.scorer
    spy = _ThreadRecordingScorer(loaded.purchase, loaded.demand)
    object.__setattr__(spy, "threads", [])  # a frozen dataclass
    running.predictor.sidecar.use_scorer(spy)
    await running.replay(log_events(trained_workload.workload, at))
    assert (await running.request("GET", f"/v1/hints/{user}"))[0] == 200
    assert spy.threads
    assert all(name.startswith("predictor-sidecar") for name in spy.threads), spy.threads


# Item hints ---------------------------------------------------------------------------


async def test_hinted_events_bring_their_most_viewed_items_within_the_handful(
    start: Start, trained_workload: TrainedWorkload
) -> None:
    at = epoch_ms(trained_workload.workload.config.start) + 36 * 3600 * 1000
    running = await start(at, hint_threshold=0.05)
    await running.replay(log_events(trained_workload.workload, at))
    sidecar = running.predictor.sidecar
    for user, event_id in engaged_humans(trained_workload, at, 20):
        items = sidecar.catalog.items_by_event[event_id]
        status, _, body = await running.request("GET", f"/v1/hints/{user}")
        if len(items) >= 2 and status == 200 and f"/v1/events/{event_id}" in body.decode():
            break
    else:
        raise AssertionError("no engaged human with an event hinted")
    # other visitors (no consent: only the event's totals keep them) open the event's second item
    popular = items[1]
    others = [view(n, f"v-{n}", event_id, at, action="item_view", item_id=popular, id=f"iv-{n}")
              for n in range(40)]  # fmt: skip
    others.append(view(40, "v-x", event_id, at, action="item_view", item_id="itm-not-in-catalog", id="iv-x"))
    assert (await running.post_events(others))[0] == 200
    sidecar.users.get(user).pending_hints = None  # other users' events do not refresh this user's list

    status, _, body = await running.request("GET", f"/v1/hints/{user}")
    assert status == 200, body
    hints = json.loads(body)["hints"]
    parse_predictor_hints(body, user_id=user, now=time.time())  # the POP accepts it
    scores = {hint["url"]: hint["score"] for hint in hints}
    assert len(hints) <= MAX_HINTS
    assert all(is_hintable_url(url) and score >= 0.05 for url, score in scores.items())
    page = scores[f"/v1/events/{event_id}"]
    share = (40 + 1) / (40 + len(items))  # the item's smoothed share of the event's item views
    assert page * share >= 0.05  # the premise: the popular item qualifies (the page scores about 0.4)
    if len(hints) < MAX_HINTS:  # a slot was left for it
        assert scores[f"/v1/items/{popular}"] == pytest.approx(page * share, abs=2e-6)
    assert f"/v1/items/{items[0]}" not in scores  # nobody requested it: never guessed
    item_urls = [url for url in scores if url.startswith("/v1/items/")]
    assert all(scores[url] <= max(s for u, s in scores.items() if u.startswith("/v1/events/")) for url in item_urls)
    assert "/v1/items/itm-not-in-catalog" not in scores
    # event pages come first: an item never displaces a page that qualifies
    pages = [url for url in scores if url.startswith("/v1/events/")]
    assert pages == list(scores)[: len(pages)]


def test_only_requested_items_are_hinted_likeliest_first(trained_workload: TrainedWorkload) -> None:
    sidecar = Sidecar.__new__(Sidecar)  # only the item ranking is exercised
    items = ("itm-a", "itm-b", "itm-c", "itm-d")
    sidecar.catalog = CatalogData(EventFacts.from_plan(trained_workload.workload.event_plan), {"evt-x": items})
    sidecar._item_views = {}
    assert sidecar._likely_items("evt-x") == []  # nobody opened a seat map: no guess
    sidecar._item_views = {"evt-x": {"itm-d": 2, "itm-c": 6, "itm-b": 2}}
    assert sidecar._likely_items("evt-x") == [("itm-c", 7 / 14), ("itm-b", 3 / 14), ("itm-d", 3 / 14)]
    sidecar.hint_threshold = 0.1
    hints = sidecar._with_items([("evt-x", 0.8), ("evt-y", 0.2)])
    third = round(0.8 * 3 / 14, 6)
    assert hints == (("/v1/events/evt-x", 0.8), ("/v1/events/evt-y", 0.2), ("/v1/items/itm-c", 0.4),
                     ("/v1/items/itm-b", third), ("/v1/items/itm-d", third))  # fmt: skip
    sidecar.hint_threshold = 0.3
    assert sidecar._with_items([("evt-x", 0.8)]) == (("/v1/events/evt-x", 0.8), ("/v1/items/itm-c", 0.4))


async def test_a_demand_model_gone_while_a_forecast_waits_is_a_503_not_a_500(start: Start, moment: int) -> None:
    running = await start(moment)
    predictor = running.predictor
    gate = threading.Event()
    blocker = predictor.executor.submit(gate.wait, BOUND)
    without_demand = Scorer(predictor.sidecar.scorer.purchase, None)
    # queued ahead of the request, which still sees a demand model when it arrives
    swap = predictor.executor.submit(predictor.sidecar.use_scorer, without_demand)
    try:
        pending = asyncio.ensure_future(running.request("GET", "/v1/forecast"))
        deadline = time.monotonic() + BOUND
        while predictor.queued_calls < 1:
            assert time.monotonic() < deadline, "the forecast did not queue"
            await asyncio.sleep(0.01)
    finally:
        gate.set()
    status, _, body = await pending
    assert blocker.result() is True
    assert swap.result() is True
    assert status == 503, body
    assert json.loads(body)["error"]["code"] == "no_demand_model"


async def test_an_ndjson_line_may_hold_a_unicode_line_separator_in_a_string(
    start: Start, moment: int, trained_workload: TrainedWorkload
) -> None:
    running = await start(moment)
    event_id = some_event(trained_workload)
    lines = [json.dumps(view(n, "u-ls", event_id, moment, note="a\u2028b"), ensure_ascii=False) for n in range(2)]
    status, _, body = await running.request(
        "POST", "/v1/events", data="\r\n".join(lines).encode(), headers={"Content-Type": "application/x-ndjson"}
    )
    assert status == 200, body  # JSON allows U+2028 in a string; only "\n" ends an NDJSON line
    assert json.loads(body) == {"accepted": 2, "duplicates": 0}


def test_a_clock_skew_beyond_the_online_windows_margin_is_refused() -> None:
    from predictor.online import MAX_AHEAD_MS

    ok = ServeSettings(models="m", max_clock_skew=Seconds(MAX_AHEAD_MS / 1000))
    ok.validate()
    with pytest.raises(SettingsError, match="max_clock_skew"):
        ServeSettings(models="m", max_clock_skew=Seconds(MAX_AHEAD_MS / 1000 + 1)).validate()
