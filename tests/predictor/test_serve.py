"""The predictor sidecar's HTTP API on loopback, with real models trained on a tiny generated workload."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
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
from ops.settings import Seconds
from origin.forecast import parse_forecast
from predictor.api import create_app
from predictor.dataset import purchase_rows, read_workload
from predictor.features import DAY_MS, PRESALE_ACTIONS, REQUEST_ACTIONS
from predictor.ingest import BatchLimits, BatchRefused, parse_batch
from predictor.models import load
from predictor.privacy import ConsentRegister
from predictor.serve_settings import ServeSettings
from predictor.service import build
from predictor.warmlist import due_onsales, next_push_at
from tests.support.edgepop import TOKEN, MakePop, Scripted, make_pop, make_upstream, upstream

__all__ = ["make_pop", "make_upstream", "upstream"]  # the POP fixtures, for the warm push test

BOUND = 20.0  # seconds; only a broken sidecar waits this long
BATCH = 1000


@dataclass
class FixedClock:
    """The sidecar's clock, held at a moment of the workload's window (POSIX seconds)."""

    at: float

    def __call__(self) -> float:
        return self.at


@dataclass
class Running:
    server: TestServer
    session: aiohttp.ClientSession
    clock: FixedClock
    predictor: Any

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, bytes]:
        async with self.session.request(method, self.url(path), **kwargs) as response:
            body = await response.read()
            return response.status, response.headers, body

    async def post_events(self, events: list[dict[str, Any]]) -> tuple[int, Any]:
        status, _, body = await self.request("POST", "/v1/events", json=events)
        return status, json.loads(body)

    async def metric(self, name: str) -> float:
        _, _, body = await self.request("GET", "/metrics")
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


StartSidecar = Callable[..., Any]


@pytest.fixture
async def start_sidecar(trained_workload: Any) -> AsyncIterator[StartSidecar]:
    servers: list[TestServer] = []
    sessions: list[aiohttp.ClientSession] = []
    predictors: list[Any] = []

    async def start(at_ms: int, background: bool = False, **overrides: Any) -> Running:
        options: dict[str, Any] = {
            "models": str(trained_workload.models_dir),
            "workload": str(trained_workload.workload_dir),
            "max_event_age": Seconds(3 * 24 * 3600),
            "reload_interval": Seconds(0),
        }
        options.update(overrides)
        settings = ServeSettings(**options)
        settings.validate()
        clock = FixedClock(at_ms / 1000)
        predictor = await asyncio.to_thread(build, settings, clock)
        predictors.append(predictor)
        server = TestServer(create_app(predictor, background=background), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=BOUND))
        sessions.append(session)
        return Running(server, session, clock, predictor)

    yield start
    for session in sessions:
        await session.close()
    for server in servers:
        await server.close()
    for predictor in predictors:
        predictor.executor.shutdown(wait=True)


def ms(column: Any) -> Any:
    return pd.to_datetime(column, utc=True).astype("datetime64[ms, UTC]").astype(np.int64).to_numpy()


def log_events(workload: Any, before_ms: int) -> list[dict[str, Any]]:
    """The workload's log before a moment as API events (region given: the POP that served it)."""
    log = workload.event_log
    ts = ms(log["ts"])
    keep = (ts < before_ms) & (
        ((log["session_id"] >= 0) & log["action"].isin(REQUEST_ACTIONS)) | log["action"].isin(PRESALE_ACTIONS)
    ).to_numpy()
    rows = log.loc[keep]
    return [
        {
            "id": f"log-{index}",
            "ts": int(when),
            "user_id": user,
            "action": action,
            "event_id": None if pd.isna(event) else str(event),
            "session_id": int(session),
            "region": region,
        }
        for index, when, user, action, event, session, region in zip(
            rows.index, ts[keep], rows["user_id"].astype(str), rows["action"].astype(str),
            rows["event_id"].astype(object), rows["session_id"], rows["user_region"].astype(str), strict=True,
        )
    ]  # fmt: skip


async def replay(running: Running, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), BATCH):
        status, answer = await running.post_events(events[start : start + BATCH])
        assert status == 200, answer
        assert answer["accepted"] == len(events[start : start + BATCH])


@dataclass(frozen=True)
class Scene:
    """A moment of the workload, a consenting human the model expects to buy, a bot, a non-consenting user."""

    at_ms: int
    human: str
    human_event: str
    bot: str
    refuser: str


@pytest.fixture(scope="module")
def scene(trained_workload: Any) -> Scene:
    tables = read_workload(trained_workload.workload_dir)
    rows = purchase_rows(tables)
    probability = load(trained_workload.models_dir, "purchase").predict(rows.features)
    users = tables.users.set_index("user_id")
    second_day = rows.now_ms >= int(ms(pd.Series([trained_workload.workload.config.start]))[0]) + DAY_MS
    for i in np.argsort(-probability, kind="stable").tolist():
        user = str(rows.user_id[i])
        if second_day[i] and probability[i] >= 0.3 and bool(users.loc[user, "consent"]):
            at, event = int(rows.now_ms[i]), str(rows.event_id[i])
            break
    else:
        raise AssertionError("no consenting human the model expects to buy on the second day")
    log = tables.event_log
    before = log.loc[(ms(log["ts"]) < at) & (log["session_id"] >= 0)]
    actions = before.groupby("user_id")["action"].size()
    bots = [u for u in actions.index if users.loc[u, "is_bot"] and users.loc[u, "consent"] and actions[u] >= 20]
    refusers = [u for u in actions.index if not users.loc[u, "is_bot"] and not users.loc[u, "consent"]]
    assert bots and refusers
    return Scene(at, user, event, str(bots[0]), str(refusers[0]))


# The whole path: events in, hints, forecast, metrics ---------------------------------


async def test_replayed_events_give_hints_to_a_consenting_human_and_none_to_bots_or_refusers(
    start_sidecar: StartSidecar, trained_workload: Any, scene: Scene
) -> None:
    running = await start_sidecar(scene.at_ms)
    await replay(running, log_events(trained_workload.workload, scene.at_ms))

    status, headers, body = await running.request("GET", f"/v1/hints/{scene.human}")
    assert status == 200, body
    assert headers["Cache-Control"] == "private, no-store"
    hint_list = parse_predictor_hints(body, user_id=scene.human, now=time.time())  # the POP's own validation
    assert json.loads(body)["hints"], body
    urls = [hint["url"] for hint in json.loads(body)["hints"]]
    assert f"/v1/events/{scene.human_event}" in urls
    assert all(is_hintable_url(url) for url in urls)
    assert all(hint["score"] >= 0.1 for hint in json.loads(body)["hints"])
    assert len(urls) <= 5
    assert hint_list.user_id == scene.human

    status, _, body = await running.request("GET", f"/v1/hints/{scene.bot}")
    assert status == 200
    assert json.loads(body)["hints"] == []
    assert 'predictor_hints_served_total{result="bot"} 1' in (await running.request("GET", "/metrics"))[2].decode()

    status, _, _ = await running.request("GET", f"/v1/hints/{scene.refuser}")
    assert status == 404  # nothing is kept about a user without consent
    assert not running.predictor.sidecar.online.knows(scene.refuser)

    # the demand forecast from the same events, in the shard manager's format
    status, _, body = await running.request("GET", "/v1/forecast")
    assert status == 200, body
    forecast = parse_forecast(json.loads(body))
    assert sum(len(rates) for rates in forecast.values()) > 0
    assert json.loads(body)["horizon_s"] == 900

    metrics = (await running.request("GET", "/metrics"))[2].decode()
    assert "predictor_events_ingested_total " in metrics
    assert 'predictor_hints_served_total{result="hints"} 1' in metrics
    assert 'predictor_scoring_seconds_count{answer="hints"}' in metrics
    # the shard autoscalers' external metric: the forecast summed per region
    for region, rates in forecast.items():
        total = sum(rates.values())
        assert f'boxoffice_forecast_requests_per_second{{region="{region}"}}' in metrics
        assert total >= 0


async def test_a_bot_label_on_an_event_stops_hints(start_sidecar: StartSidecar, scene: Scene) -> None:
    running = await start_sidecar(scene.at_ms)
    event = {"id": "b-1", "ts": scene.at_ms - 1000, "user_id": "u-label", "action": "event_view",
             "event_id": scene.human_event, "session_id": 1, "consent": True, "bot": True}  # fmt: skip
    assert (await running.post_events([event]))[0] == 200
    status, _, body = await running.request("GET", "/v1/hints/u-label")
    assert status == 200
    assert json.loads(body)["hints"] == []
    assert running.predictor.sidecar.users.get("u-label").bot


# Batches: bounded, validated, all or nothing, idempotent -----------------------------


def event(scene: Scene, n: int, **fields: Any) -> dict[str, Any]:
    doc = {"id": f"e-{n}", "ts": scene.at_ms - 60_000 + n, "user_id": "u-7", "action": "event_view",
           "event_id": scene.human_event, "session_id": 3, "consent": True}  # fmt: skip
    doc.update(fields)
    return doc


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"action": "teleport"}, "events[1].action"),
        ({"event_id": "evt-999999"}, "events[1].event_id"),
        ({"ts": "yesterday"}, "events[1].ts"),
        ({"user_id": "../etc"}, "events[1].user_id"),
        ({"session_id": -1}, "events[1].session_id"),
        ({"region": "moon"}, "events[1].region"),
        ({"consent": "yes"}, "events[1].consent"),
        ({"id": ""}, "events[1].id"),
    ],
)
async def test_a_malformed_batch_is_refused_whole_naming_the_field(
    start_sidecar: StartSidecar, scene: Scene, bad: dict[str, Any], named: str
) -> None:
    running = await start_sidecar(scene.at_ms)
    status, answer = await running.post_events([event(scene, 0), event(scene, 1, **bad)])
    assert status == 400
    assert answer["error"]["message"].startswith(named), answer
    assert running.predictor.sidecar.events_applied == 0  # the valid first event was not applied either
    assert (await running.request("GET", "/v1/hints/u-7"))[0] == 404  # nor its consent
    assert await running.metric('predictor_batches_refused_total{status="400"}') == 1


async def test_oversized_and_unparsable_batches_are_refused(start_sidecar: StartSidecar, scene: Scene) -> None:
    running = await start_sidecar(scene.at_ms, max_batch_events=3, max_body=4096)
    status, answer = await running.post_events([event(scene, n) for n in range(4)])
    assert status == 413
    assert "at most 3" in answer["error"]["message"]
    status, _, body = await running.request("POST", "/v1/events", data=b"[" + b" " * 5000 + b"]")
    assert status == 413, body
    status, _, body = await running.request("POST", "/v1/events", data=b"[{")
    assert status == 400
    assert "not JSON" in json.loads(body)["error"]["message"]
    status, _, body = await running.request("POST", "/v1/events", data=b"[]")
    assert status == 400
    status, _, body = await running.request("POST", "/v1/events", json={"events": [event(scene, 0)]})
    assert status == 400
    assert "JSON array" in json.loads(body)["error"]["message"]
    assert running.predictor.sidecar.events_applied == 0


async def test_ndjson_batches_are_accepted_and_a_retry_counts_once(start_sidecar: StartSidecar, scene: Scene) -> None:
    running = await start_sidecar(scene.at_ms)
    lines = "\n".join(json.dumps(event(scene, n)) for n in range(3)).encode()
    headers = {"Content-Type": "application/x-ndjson"}
    status, _, body = await running.request("POST", "/v1/events", data=lines, headers=headers)
    assert status == 200
    assert json.loads(body) == {"accepted": 3, "duplicates": 0}
    online = running.predictor.sidecar.online
    counted = online.row("u-7", scene.human_event, scene.at_ms)["user_actions"]
    status, _, body = await running.request("POST", "/v1/events", data=lines, headers=headers)  # the retry
    assert json.loads(body) == {"accepted": 0, "duplicates": 3}
    assert counted == 3
    assert online.row("u-7", scene.human_event, scene.at_ms)["user_actions"] == counted


# Privacy ------------------------------------------------------------------------------


async def test_delete_removes_everything_about_a_user(start_sidecar: StartSidecar, scene: Scene) -> None:
    running = await start_sidecar(scene.at_ms)
    assert (await running.post_events([event(scene, n, region="eu-west") for n in range(5)]))[0] == 200
    sidecar = running.predictor.sidecar
    assert (await running.request("GET", "/v1/hints/u-7"))[0] == 200
    record = sidecar.users.get("u-7")
    assert record.region == "eu-west"
    assert record.pending_hints is not None
    assert sidecar.online.knows("u-7")

    status, _, _ = await running.request("DELETE", "/v1/users/u-7")
    assert status == 204
    assert (await running.request("GET", "/v1/hints/u-7"))[0] == 404
    assert sidecar.users.get("u-7") is None
    assert not sidecar.online.knows("u-7")
    assert not sidecar.knows("u-7")
    assert sidecar.online.row("u-7", scene.human_event, scene.at_ms)["user_actions"] == 0
    assert (await running.request("DELETE", "/v1/users/u-7"))[0] == 204  # idempotent


async def test_consent_is_required_and_can_be_withdrawn(start_sidecar: StartSidecar, scene: Scene) -> None:
    running = await start_sidecar(scene.at_ms)
    anonymous = event(scene, 0, user_id="u-anon")
    del anonymous["consent"]
    assert (await running.post_events([anonymous]))[0] == 200
    assert (await running.request("GET", "/v1/hints/u-anon"))[0] == 404
    sidecar = running.predictor.sidecar
    assert not sidecar.online.knows("u-anon")  # only the event's totals kept it

    status, _, _ = await running.request("PUT", "/v1/users/u-anon/consent", json={"consent": True})
    assert status == 200
    assert sidecar.users.get("u-anon").region is None  # location only when given
    status, _, body = await running.request("GET", "/v1/hints/u-anon")
    assert status == 200
    assert json.loads(body)["user_id"] == "u-anon"
    status, _, _ = await running.request("PUT", "/v1/users/u-anon/consent", json={"consent": False})
    assert status == 200
    assert (await running.request("GET", "/v1/hints/u-anon"))[0] == 404
    status, _, body = await running.request("PUT", "/v1/users/u-anon/consent", json={"consent": "maybe"})
    assert status == 400


async def test_unknown_or_invalid_users_and_pops_are_404(start_sidecar: StartSidecar, scene: Scene) -> None:
    running = await start_sidecar(scene.at_ms)
    assert (await running.request("GET", "/v1/hints/nobody"))[0] == 404
    assert (await running.request("GET", "/v1/hints/%2E%2E"))[0] == 404
    status, _, body = await running.request("GET", "/v1/warm/mars-1")
    assert status == 404
    assert "no POP" in json.loads(body)["error"]["message"]


# Warm lists -----------------------------------------------------------------------------


async def test_warm_push_reaches_a_real_pop_which_then_serves_hits(
    start_sidecar: StartSidecar, trained_workload: Any, upstream: Scripted, make_pop: MakePop
) -> None:
    plan = trained_workload.workload.event_plan
    onsale = ms(plan["onsale_at"])
    start = int(ms(pd.Series([trained_workload.workload.config.start]))[0])
    inside = np.flatnonzero((onsale > start) & (onsale < start + 2 * DAY_MS))
    chosen = int(inside[np.argmax(plan["popularity"].to_numpy()[inside])])
    event_id, region, opens = str(plan["event_id"].iloc[chosen]), str(plan["region"].iloc[chosen]), int(onsale[chosen])

    pop = await make_pop([upstream.url])
    running = await start_sidecar(
        opens - 30_000, background=True, pops=(f"pop-a@{region}={pop.url('')}",), warm_token=TOKEN
    )
    page = f"/v1/events/{event_id}"
    key = pop.pop.key_for(page)
    deadline = time.monotonic() + BOUND
    while pop.pop.cache.peek(key) is None:
        assert time.monotonic() < deadline, "the warm push did not reach the POP"
        await asyncio.sleep(0.02)
    assert upstream.counts[page] == 1
    async with running.session.get(pop.url(page)) as response:
        assert response.status == 200
        assert response.headers["X-Cache"] == "HIT"
    assert upstream.counts[page] == 1  # served from the warmed cache, not fetched again
    assert await running.metric('predictor_warm_pushes_total{pop="pop-a",outcome="ok"}') == 1
    assert opens in running.predictor.pushed

    status, _, body = await running.request("GET", "/v1/warm/pop-a")
    assert status == 200
    doc = json.loads(body)
    assert doc["region"] == region
    assert doc["urls"][0] == {"url": page, "priority": 1.0}
    assert all(entry["url"].startswith(("/v1/events/", "/v1/items/")) for entry in doc["urls"])


async def test_a_refused_warm_push_is_counted_not_retried(
    start_sidecar: StartSidecar, trained_workload: Any, upstream: Scripted, make_pop: MakePop
) -> None:
    plan = trained_workload.workload.event_plan
    start = int(ms(pd.Series([trained_workload.workload.config.start]))[0])
    onsale = ms(plan["onsale_at"])
    opens = int(onsale[(onsale > start)].min())
    pop = await make_pop([upstream.url])
    running = await start_sidecar(
        opens - 30_000, background=True, pops=(f"{plan['region'].iloc[0]}={pop.url('')}",), warm_token="wrong"
    )
    deadline = time.monotonic() + BOUND
    name = f'predictor_warm_pushes_total{{pop="{plan["region"].iloc[0]}",outcome="refused"}}'
    while await running.metric(name) != 1:
        assert time.monotonic() < deadline, "the refused push was not counted"
        await asyncio.sleep(0.05)
    assert upstream.total == 0


# Models -----------------------------------------------------------------------------------


async def test_a_newer_model_version_is_picked_up(
    start_sidecar: StartSidecar, trained_workload: Any, scene: Scene, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(trained_workload.models_dir, models)
    running = await start_sidecar(scene.at_ms, background=True, models=str(models), reload_interval=Seconds(0.05))
    assert running.predictor.model_versions()["purchase"] == 1
    meta = json.loads((models / "purchase-v1.meta.json").read_text())
    shutil.copy(models / "purchase-v1.json", models / "purchase-v2.json")
    meta.update({"version": 2, "model_file": "purchase-v2.json"})
    (models / "purchase-v2.meta.json").write_text(json.dumps(meta))
    deadline = time.monotonic() + BOUND
    while running.predictor.model_versions()["purchase"] != 2:
        assert time.monotonic() < deadline, "the newer model was not loaded"
        await asyncio.sleep(0.05)
    status, _, body = await running.request("GET", "/v1/health")
    assert status == 200
    assert json.loads(body)["models"] == {"purchase": 2, "demand": 1}


# Cores ----------------------------------------------------------------------------------


def test_parse_batch_reads_rfc3339_and_refuses_stale_or_future_times() -> None:
    limits = BatchLimits(10, 60_000, 5_000)
    now = 1_767_571_200_000  # 2026-01-05T00:00:00Z
    doc = {"id": "a", "ts": "2026-01-04T23:59:30Z", "user_id": "u", "action": "search", "session_id": 0}
    (parsed,) = parse_batch(json.dumps([doc]).encode(), "application/json", limits, {"evt-1"}, now)
    assert parsed.ts_ms == now - 30_000
    assert parsed.event_id is None
    for ts, words in ((now - 61_000, "old"), (now + 6_000, "future")):
        with pytest.raises(BatchRefused, match=words):
            parse_batch(json.dumps([{**doc, "ts": ts}]).encode(), "", limits, {"evt-1"}, now)


def test_push_schedule_pushes_each_onsale_once_a_lead_before() -> None:
    onsales = np.array([10_000, 10_000, 50_000])
    assert due_onsales(onsales, 5_000, 2_000, set()) == []
    assert next_push_at(onsales, 5_000, 2_000) == 8_000
    assert due_onsales(onsales, 8_000, 2_000, set()) == [10_000]
    assert due_onsales(onsales, 9_000, 2_000, {10_000}) == []
    assert next_push_at(onsales, 10_000, 2_000) == 48_000
    assert next_push_at(onsales, 60_000, 2_000) is None


def test_the_consent_register_is_bounded_least_recent_first() -> None:
    register = ConsentRegister(capacity=2)
    register.consent("a")
    register.consent("b")
    register.touch("a")
    _, evicted = register.consent("c")
    assert evicted == ["b"]
    assert register.get("a") is not None
    assert len(register) == 2
