"""Purchase and demand features: no leakage, batch == online, scripted values, bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest

from origin.catalog import build_catalog
from predictor.dataset import WorkloadTables, streams
from predictor.errors import PredictorError
from predictor.features import (
    ACTIVITY,
    FEATURES,
    HOUR_MS,
    MINUTE_MS,
    PRESALE_ACTIONS,
    PURCHASES,
    REQUEST_ACTIONS,
    EventFacts,
    Profiles,
    batch_raw,
    derive,
)
from predictor.forecast import DemandState, batch_counts, candidates, derive_demand, request_stream
from predictor.online import Activity, ActivityError, OnlineFeatures
from predictor.workload import Workload, WorkloadConfig, generate

TINY = WorkloadConfig(seed=3, days=1, users=3000, sessions_per_day=4000)


@pytest.fixture(scope="module")
def workload() -> Workload:
    return generate(TINY, build_catalog(2026, venues=30, events=300, start=TINY.start))


@pytest.fixture(scope="module")
def tables(workload: Workload) -> WorkloadTables:
    return WorkloadTables(
        directory=None,  # type: ignore[arg-type]
        summary={},
        event_log=workload.event_log,
        sessions=workload.sessions,
        users=workload.users,
        purchase_history=workload.purchase_history,
        event_plan=workload.event_plan,
    )


def ms(column: Any) -> Any:
    return column.astype("datetime64[ms, UTC]").astype(np.int64).to_numpy()


def session_queries(workload: Workload) -> Any:
    human = workload.sessions.loc[~workload.sessions["is_bot"]]
    return pd.DataFrame(
        {
            "user_id": human["user_id"].astype(str).to_numpy(),
            "event_id": human["event_id"].astype(str).to_numpy(),
            "now_ms": ms(human["arrived_at"]),
        }
    )


def activities(workload: Workload) -> list[Activity]:
    log = workload.event_log
    rows = log.loc[
        ((log["session_id"] >= 0) & log["action"].isin(REQUEST_ACTIONS)) | log["action"].isin(PRESALE_ACTIONS)
    ]
    return [
        Activity(int(ts), user, action, None if pd.isna(event) else str(event), int(session))
        for ts, user, action, event, session in zip(
            ms(rows["ts"]),
            rows["user_id"].astype(str),
            rows["action"].astype(str),
            rows["event_id"].astype(object),
            rows["session_id"],
            strict=True,
        )
    ]


def online_with_history(tables: WorkloadTables) -> OnlineFeatures:
    online = OnlineFeatures(tables.facts, tables.profiles)
    history = tables.purchase_history
    for user, ts, genre, artist in zip(
        history["user_id"].astype(str),
        ms(history["purchased_at"]),
        history["genre"].astype(str),
        history["artist"].astype(str),
        strict=True,
    ):
        online.add_past_purchase(user, int(ts), genre, artist)
    return online


def test_batch_and_online_give_the_same_rows(workload: Workload, tables: WorkloadTables) -> None:
    facts = tables.facts
    queries = session_queries(workload)
    batch = derive(batch_raw(streams(tables, facts), queries, facts), tables.profiles, facts)
    online = online_with_history(tables)
    feed = activities(workload)
    sample = queries.sort_values("now_ms", kind="stable").iloc[::15]
    position = 0
    compared = 0
    for index, query in sample.iterrows():
        # everything before the cut-off, and the rows at its very millisecond (which must not count)
        while position < len(feed) and feed[position].ts_ms <= query["now_ms"]:
            online.update(feed[position])
            position += 1
        row = online.rows([(query["user_id"], query["event_id"])], int(query["now_ms"]))
        np.testing.assert_allclose(
            row.iloc[0].to_numpy(), batch.loc[index].to_numpy(), equal_nan=True, err_msg=str(index)
        )
        compared += 1
    assert compared > 200
    assert list(batch.columns) == list(FEATURES)
    # the sample exercised the counters, not just zeros
    assert (batch.loc[sample.index, "user_actions"] > 0).mean() > 0.3
    assert (batch.loc[sample.index, "purchases"] > 0).mean() > 0.3


def test_a_future_event_does_not_change_a_past_row(workload: Workload, tables: WorkloadTables) -> None:
    facts = tables.facts
    sessions = session_queries(workload)
    cut_off = int(sessions["now_ms"].median())  # one cut-off for all: a row after it is in every query's future
    queries = sessions.iloc[::5].drop_duplicates("user_id").assign(now_ms=cut_off).reset_index(drop=True)
    base_streams = streams(tables, facts)
    before = batch_raw(base_streams, queries, facts)

    def with_rows(offset_ms: int) -> dict[str, Any]:
        """Each query's user views, holds and buys its event `offset_ms` after the cut-off."""
        extra = pd.DataFrame(
            {
                "ts": queries["now_ms"].to_numpy() + offset_ms,
                "user": queries["user_id"].to_numpy(),
                "session": np.full(len(queries), 10**9),
                "action": "purchase",
                "event": queries["event_id"].to_numpy(),
            }
        )
        known = facts.frame.reindex(extra["event"].to_numpy())
        extra["genre"] = known["genre"].to_numpy()
        extra["artist"] = known["artist"].to_numpy()
        extra["new_session"], extra["fast"], extra["session_depth"] = True, False, 1
        changed = dict(base_streams)
        for name, columns in (
            (ACTIVITY, list(base_streams[ACTIVITY].columns)),
            (PURCHASES, ["ts", "user", "genre", "artist"]),
        ):
            both = pd.concat([base_streams[name], extra[columns]], ignore_index=True)
            changed[name] = both.sort_values("ts", kind="stable").reset_index(drop=True)
        return changed

    for future in (0, 1, HOUR_MS):
        after = batch_raw(with_rows(future), queries, facts)
        pd.testing.assert_frame_equal(before, after)
    # the same rows a millisecond *before* the cut-off do count: the check above can fail
    earlier = batch_raw(with_rows(-1), queries, facts)
    assert (earlier["purchases"] == before["purchases"] + 1).all()
    assert (earlier["user_event_views"] == before["user_event_views"]).all()  # a purchase is not a view


def facts_and_profiles() -> tuple[EventFacts, Profiles]:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    events = [
        SimpleNamespace(
            id="evt-a", region="eu-west", genre="rock", artist="The Band", popularity=0.02,
            onsale_at=start + timedelta(hours=1), starts_at=start + timedelta(days=10),
        ),
        SimpleNamespace(
            id="evt-b", region="na-east", genre="jazz", artist="Trio", popularity=0.001,
            onsale_at=start - timedelta(days=5), starts_at=start + timedelta(days=40),
        ),
    ]  # fmt: skip
    users = pd.DataFrame(
        {
            "user_id": ["usr-1", "usr-2"],
            "region": ["eu-west", "na-east"],
            "favourite_genre": ["rock", "jazz"],
            "favourite_artists": ["The Band|Other", ""],
            "past_presale_registrations": [2, 0],
            "consent": [True, True],
        }
    )
    return EventFacts.from_catalog(events), Profiles.from_users(users)


def test_scripted_history_gives_the_expected_features() -> None:
    facts, profiles = facts_and_profiles()
    online = OnlineFeatures(facts, profiles)
    t0 = round(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
    online.add_past_purchase("usr-1", t0 - 30 * 24 * HOUR_MS, "rock", "The Band")
    online.add_past_purchase("usr-1", t0 - 10 * 24 * HOUR_MS, "jazz", "Trio")
    script = [
        Activity(t0, "usr-1", "search", None, 7),
        Activity(t0 + 20_000, "usr-1", "event_view", "evt-a", 7),
        Activity(t0 + 21_000, "usr-1", "item_view", "evt-a", 7),  # 1 s later: a fast request
        Activity(t0 + 60_000, "usr-1", "hold", "evt-a", 7),
        Activity(t0 + 10 * MINUTE_MS, "usr-1", "event_view", "evt-b", 8),
        Activity(t0 + 11 * MINUTE_MS, "usr-1", "presale_register", "evt-a"),
    ]
    for activity in script:
        online.update(activity)
    now = t0 + 70 * MINUTE_MS
    row = online.row("usr-1", "evt-a", now)
    assert row["region_match"] == 1.0
    assert row["favourite_genre"] == 1.0
    assert row["favourite_artist"] == 1.0
    assert row["past_presale_registrations"] == 2.0
    assert row["purchases"] == 2.0
    assert row["days_since_purchase"] == pytest.approx(10 + 70 / (24 * 60))
    assert row["genre_purchase_share"] == 0.5
    assert row["artist_purchases"] == 1.0
    assert row["user_actions"] == 5.0
    assert row["user_sessions"] == 2.0
    assert row["actions_per_session"] == 2.5
    assert row["last_session_depth"] == 1.0
    assert row["minutes_since_action"] == pytest.approx(60.0)
    assert row["user_actions_1h"] == 1.0  # only the view at +10 min is inside [now - 1 h, now)
    assert row["user_event_views"] == 2.0
    assert row["minutes_since_event_view"] == pytest.approx(70 - 21 / 60)
    assert row["user_event_holds"] == 1.0
    assert row["genre_view_share"] == pytest.approx(2 / 3)
    assert row["presale_registered"] == 1.0
    assert row["presale_invited"] == 0.0
    assert row["fast_action_share"] == pytest.approx(1 / 5)
    assert row["hold_share"] == pytest.approx(1 / 5)
    assert row["hours_since_onsale"] == pytest.approx(70 / 60 - 1)
    assert row["in_onsale_hour"] == 1.0
    assert row["days_to_show"] == pytest.approx(10 - 70 / (24 * 60))
    assert row["event_requests_1h"] == 0.0
    assert row["event_requests_24h"] == 3.0
    # a stranger: no history, NaN where undefined
    stranger = online.row("usr-2", "evt-a", now)
    assert stranger["user_actions"] == 0.0
    assert np.isnan(stranger["minutes_since_action"])
    assert np.isnan(stranger["actions_per_session"])
    assert stranger["region_match"] == 0.0
    # forgetting a user drops their counters, not the event's
    online.forget("usr-1")
    forgotten = online.row("usr-1", "evt-a", now)
    assert forgotten["user_actions"] == 0.0
    assert forgotten["purchases"] == 0.0
    assert forgotten["event_requests_24h"] == 3.0


@pytest.mark.parametrize(
    ("activity", "message"),
    [
        (Activity(0, "", "search"), "user_id"),
        (Activity(0, "usr-1", "teleport", "evt-a"), "unknown action"),
        (Activity(0, "usr-1", "event_view", None, 1), "needs an event_id"),
        (Activity(0, "usr-1", "event_view", "evt-zzz", 1), "unknown event"),
        (Activity(0, "usr-1", "event_view", "evt-a"), "session_id"),
    ],
)
def test_bad_activity_is_refused_by_name(activity: Activity, message: str) -> None:
    facts, profiles = facts_and_profiles()
    online = OnlineFeatures(facts, profiles)
    with pytest.raises(ActivityError, match=message):
        online.update(activity)
    assert not online.knows("usr-1")


def test_rows_refuse_an_unknown_event() -> None:
    facts, profiles = facts_and_profiles()
    with pytest.raises(PredictorError, match="evt-nope"):
        OnlineFeatures(facts, profiles).rows([("usr-1", "evt-nope")], 0)


def test_demand_counts_batch_equal_online(workload: Workload, tables: WorkloadTables) -> None:
    facts = tables.facts
    horizon = 15 * MINUTE_MS
    requests = request_stream(workload.event_log)
    now = int(requests["ts"].iloc[len(requests) * 2 // 3]) + 1
    queries = candidates(requests, facts, [now], horizon)
    batch = derive_demand(queries, batch_counts(requests, queries, horizon), facts, horizon)
    state = DemandState(facts, horizon)
    for ts, region, event in requests.itertuples(index=False):
        if ts < now:
            state.update(int(ts), region, event)
    online_queries, online = state.rows(now)
    key = ["region", "event"]
    assert len(queries) > 50
    assert sorted(map(tuple, queries[key].to_numpy())) == sorted(map(tuple, online_queries[key].to_numpy()))
    left = batch.assign(pair=[f"{r}/{e}" for r, e in queries[key].to_numpy()]).sort_values("pair")
    right = online.assign(pair=[f"{r}/{e}" for r, e in online_queries[key].to_numpy()]).sort_values("pair")
    pd.testing.assert_frame_equal(left.reset_index(drop=True), right.reset_index(drop=True))
    assert left["pair_requests_1h"].min() >= 1 or left["onsale_in_horizon"].max() == 1
