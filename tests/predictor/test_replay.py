"""The cache replay: Belady's bound, the edge's own classes, warming, and gap closure on scripted traces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.lru import LruCache
from edge.s3fifo import S3FifoCache
from predictor.belady import NEVER, belady_hits, next_uses, replay_belady
from predictor.cachemetrics import (
    gap_closure,
    in_onsale_windows,
    ratio,
    warmed_first_request_misses,
)
from predictor.features import EventFacts
from predictor.hinteval import HintFigures, choose_operating_point, first_requests, replay_model_hints
from predictor.modelinputs import roc_points
from predictor.replay import ObjectTable, ReplayError, Trace, WarmLoad, lru_cache, replay, s3fifo_cache
from predictor.warming import (
    ForecastWarmList,
    ModelForecast,
    ModelWarmList,
    OnsaleSchedule,
    OracleWarmList,
    OracleWideWarmList,
    millis,
    warm_loads,
)

MINUTE_MS = 60_000


def make_objects(sizes: list[int], items_per_event: int = 0) -> ObjectTable:
    """Objects 0..n-1 with the given sizes; if items_per_event, objects form events of 1 page + that many items."""
    count = len(sizes)
    urls = tuple(f"/v1/items/obj-{number}" for number in range(count))
    if items_per_event:
        group = items_per_event + 1
        events = count // group
        event_of = np.repeat(np.arange(events, dtype=np.int64), group)
        event_object = np.arange(events, dtype=np.int64) * group
        items = tuple(tuple(range(event * group + 1, event * group + group)) for event in range(events))
    else:
        events = 0
        event_of = np.full(count, -1, dtype=np.int64)
        event_object = np.zeros(0, dtype=np.int64)
        items = ()
    return ObjectTable(
        urls=urls,
        sizes=np.array(sizes, dtype=np.int64),
        event_of=event_of,
        event_ids=tuple(f"evt-{event}" for event in range(events)),
        event_object=event_object,
        items_of_event=items,
        number={url: number for number, url in enumerate(urls)},
    )


def make_trace(
    keys: list[int], times: list[int] | None = None, sessions: list[int] | None = None, users: list[str] | None = None
) -> Trace:
    count = len(keys)
    return Trace(
        pop_id="test-pop",
        times=np.array(times if times is not None else list(range(count)), dtype=np.int64),
        objects=np.array(keys, dtype=np.int64),
        sessions=np.array(sessions if sessions is not None else [0] * count, dtype=np.int64),
        users=np.array(users if users is not None else ["usr-1"] * count, dtype=object),
        is_bot=np.zeros(count, dtype=np.bool_),
        uncacheable=0,
    )


# ------------------------------------------------------------------------------------------- Belady


def test_next_uses_point_at_the_following_request_of_the_same_key() -> None:
    following = next_uses(np.array([5, 7, 5, 5, 7, 9], dtype=np.int64))
    assert following.tolist() == [2, 4, 3, NEVER, NEVER, NEVER]


@settings(max_examples=150, deadline=None)
@given(
    keys=st.lists(st.integers(min_value=0, max_value=29), min_size=1, max_size=400),
    slots=st.integers(min_value=10, max_value=24),
)
def test_belady_never_loses_to_lru_or_s3fifo_on_equal_sizes(keys: list[int], slots: int) -> None:
    objects = make_objects([100] * 30)
    trace = make_trace(keys)
    capacity = slots * 100  # S3-FIFO's small queue (10 %) then holds at least one object
    belady = int(replay_belady(trace, objects, capacity).hits.sum())
    lru = int(replay(trace, objects, "lru", lru_cache(capacity)).hits.sum())
    s3fifo = int(replay(trace, objects, "s3fifo", s3fifo_cache(capacity)).hits.sum())
    assert belady >= lru
    assert belady >= s3fifo


@settings(max_examples=100, deadline=None)
@given(
    keys=st.lists(st.integers(min_value=0, max_value=19), min_size=1, max_size=300),
    sizes=st.lists(st.integers(min_value=1, max_value=400), min_size=20, max_size=20),
    capacity=st.integers(min_value=1, max_value=2_000),
)
def test_belady_with_variable_sizes_hits_only_what_it_holds(keys: list[int], sizes: list[int], capacity: int) -> None:
    # Not a bound for variable sizes (the module says so), but every hit must be a repeat of an object that fits.
    hits = belady_hits(np.array(keys, dtype=np.int64), np.array(sizes, dtype=np.int64), capacity)
    seen: set[int] = set()
    for key, hit in zip(keys, hits, strict=True):
        if hit:
            assert key in seen
            assert sizes[key] <= capacity
        seen.add(key)


def test_belady_bypasses_the_object_needed_last() -> None:
    # a b c a b c with room for two: MIN keeps a and b, bypasses c twice.
    hits = belady_hits(np.array([0, 1, 2, 0, 1, 2], dtype=np.int64), np.ones(3, dtype=np.int64), 2)
    assert list(hits) == [0, 0, 0, 1, 1, 0]


def test_belady_refuses_a_capacity_below_one() -> None:
    with pytest.raises(ValueError, match="capacity"):
        belady_hits(np.array([0], dtype=np.int64), np.ones(1, dtype=np.int64), 0)


# ------------------------------------------------------------------------------- the edge's classes


def test_the_replay_drives_the_edge_classes() -> None:
    assert isinstance(lru_cache(1_000), LruCache)
    assert isinstance(s3fifo_cache(1_000), S3FifoCache)
    objects = make_objects([100] * 12)
    trace = make_trace([0, 1, 2, 0, 3, 4, 5, 0, 1, 6, 7, 8, 9, 10, 11, 0, 1, 2])
    for cache in (S3FifoCache[int, bool](1_000), LruCache[int, bool](1_000)):
        result = replay(trace, objects, "policy", cache)
        # The counters are the edge class's own: the replay went through its get and put.
        assert cache.stats.hits == int(result.hits.sum())
        assert cache.stats.misses == len(trace) - int(result.hits.sum())
        assert cache.stats.evictions > 0


def test_an_object_larger_than_the_small_queue_is_never_cached_by_s3fifo() -> None:
    objects = make_objects([100, 5_000])
    trace = make_trace([1, 1, 1, 0, 0])
    result = replay(trace, objects, "s3fifo", s3fifo_cache(10_000))
    assert result.hits.tolist() == [False, False, False, False, True]


def test_encode_names_a_url_outside_the_catalog() -> None:
    with pytest.raises(ReplayError, match="/v1/nowhere"):
        make_objects([100]).encode(["/v1/nowhere"])


# --------------------------------------------------------------------------------------- warming


def onsale_scenario() -> tuple[ObjectTable, Trace, OnsaleSchedule, int]:
    """Event 0 (objects 0..5) goes on sale at 60 min; objects 6.. are background traffic before and after."""
    objects = make_objects([500] * 60, items_per_event=5)  # 10 events of a page and 5 items
    onsale = 60 * MINUTE_MS
    rng = np.random.default_rng(7)
    keys: list[int] = []
    times: list[int] = []
    for minute in range(75):
        for second in range(0, 60, 5):
            keys.append(int(rng.integers(6, 60)))
            times.append(minute * MINUTE_MS + second * 1000)
    for offset, key in enumerate([0, 1, 2, 0, 3, 1, 4, 5, 0, 2]):
        keys.append(key)
        times.append(onsale + 2_000 + offset * 1_000 + 1)
    order = np.argsort(np.array(times), kind="stable")
    trace = make_trace([keys[i] for i in order], [times[i] for i in order])
    schedule = OnsaleSchedule(np.array([0]), np.array([onsale]), np.array([20.0]))
    return objects, trace, schedule, onsale


def test_oracle_warming_gives_warmed_objects_no_first_request_miss() -> None:
    objects, trace, schedule, onsale = onsale_scenario()
    # Room for every object: the warm list fits without evicting anything read (admit_if_room's rule).
    capacity = 40_000
    oracle = OracleWarmList({"test-pop": trace}, objects, schedule, budget_bytes=capacity // 4)
    loads = warm_loads(oracle, "test-pop", schedule, objects, lead_ms=MINUTE_MS, window_ms=15 * MINUTE_MS)
    assert [load.at for load in loads] == [onsale - MINUTE_MS]
    assert sorted(loads[0].objects) == [0, 1, 2, 3, 4, 5]
    warmed = replay(trace, objects, "s3fifo+oracle", s3fifo_cache(capacity), loads)
    assert sorted(warmed.warm[0].admitted) == [0, 1, 2, 3, 4, 5]
    misses = warmed_first_request_misses(trace, warmed)
    assert misses.total == 6
    assert misses.hits == 0
    cold = replay(trace, objects, "s3fifo", s3fifo_cache(capacity))
    onsale_requests = trace.objects < 6
    assert ratio(cold.hits, onsale_requests).hits < ratio(warmed.hits, onsale_requests).hits


def test_the_forecast_list_looks_only_before_its_time() -> None:
    objects, trace, schedule, onsale = onsale_scenario()
    forecast = ForecastWarmList({"test-pop": trace}, objects, schedule, budget_bytes=10_000)
    at = datetime.fromtimestamp((onsale - MINUTE_MS) / 1000, tz=UTC)
    counts = forecast.past_counts("test-pop", at)
    # Objects 0..5 are requested only after the on-sale: nothing of them is counted before it.
    assert counts[:6].sum() == 0
    assert counts.sum() == int((trace.times < onsale - MINUTE_MS).sum())
    urls = forecast("test-pop", at, timedelta(minutes=16))
    assert {objects.number[url] for url in urls} == set(range(6))  # the on-sale event's page and items
    assert forecast("test-pop", at, timedelta(seconds=30)) == []  # no on-sale in that window


def test_a_warm_load_skips_what_is_cached_and_counts_it() -> None:
    objects = make_objects([100] * 20)
    trace = make_trace([0, 1, 2, 3], [0, 10, 20, 30])
    result = replay(trace, objects, "s3fifo", s3fifo_cache(2_000), [WarmLoad(15, (0, 1, 5, 5), 100)])
    assert result.warm[0].already_cached == (0, 1)
    assert result.warm[0].admitted == (5,)


# ------------------------------------------------------------------------------------- gap closure


def test_gap_closure_on_a_hand_made_trace() -> None:
    # a b c a b c with room for two equal objects: LRU thrashes (0 hits), MIN hits a and b again (2 of 6).
    objects = make_objects([1, 1, 1])
    trace = make_trace([0, 1, 2, 0, 1, 2])
    lru = ratio(replay(trace, objects, "lru", LruCache[int, bool](2)).hits).value
    belady = ratio(replay_belady(trace, objects, 2).hits).value
    assert lru == 0.0
    assert belady == pytest.approx(2 / 6)
    assert gap_closure(1 / 6, lru, belady) == pytest.approx(0.5)
    assert gap_closure(belady, lru, belady) == pytest.approx(1.0)
    assert gap_closure(lru, lru, belady) == pytest.approx(0.0)
    assert gap_closure(0.5, lru, belady) == pytest.approx(1.5)  # warming can beat demand-only MIN
    assert gap_closure(0.5, 0.4, 0.4) is None  # no gap: undefined, not a division by zero
    assert gap_closure(None, 0.1, 0.2) is None


def test_onsale_windows_cover_only_the_window_after_each_onsale() -> None:
    trace = make_trace([0, 0, 0, 0, 0], [0, 59_999, 60_000, 60_000 + 14 * MINUTE_MS, 60_000 + 15 * MINUTE_MS])
    schedule = OnsaleSchedule(np.array([0]), np.array([60_000]), np.array([4.0]))
    assert in_onsale_windows(trace, schedule, 15 * MINUTE_MS).tolist() == [False, False, True, True, False]


# ------------------------------------------------------------------------------- model warm lists


class CountModel:
    """A stand-in demand model: it forecasts the pair's requests over the last horizon (persistence).

    The real xgboost model is exercised end to end in test_report.py; here the point is what the
    forecast may read, which a transparent model shows exactly."""

    def predict(self, features: pd.DataFrame) -> npt.NDArray[np.float64]:
        return np.asarray(features["pair_requests_h"].to_numpy(dtype=np.float64) + 1.0)


def forecast_scenario() -> tuple[ObjectTable, EventFacts, pd.DataFrame, int]:
    """Events evt-0 and evt-1 (pages 0 and 3, items 1-2 and 4-5); eu-west asks for evt-0 before `at`,
    and for evt-1 only at and after `at`."""
    objects = make_objects([500] * 6, items_per_event=2)
    start = datetime(2026, 1, 5, tzinfo=UTC)
    at = millis(start) + 2 * 60 * MINUTE_MS
    plan = pd.DataFrame(
        {
            "event_id": ["evt-0", "evt-1"],
            "region": ["eu-west", "eu-west"],
            "genre": ["rock", "jazz"],
            "artist": ["a", "b"],
            "popularity": [1.0, 1.0],
            "onsale_at": pd.to_datetime([start - timedelta(days=1)] * 2),
            "starts_at": pd.to_datetime([start + timedelta(days=30)] * 2),
        }
    )
    before = [(at - 5 * MINUTE_MS + i, "eu-west", "evt-0") for i in range(3)]
    after = [(at + i, "eu-west", "evt-1") for i in range(50)]
    requests = pd.DataFrame(before + after, columns=["ts", "region", "event"])
    return objects, EventFacts.from_plan(plan), requests, at


def test_the_model_forecast_reads_only_requests_before_the_warm_time() -> None:
    objects, facts, requests, at = forecast_scenario()
    forecast = ModelForecast(CountModel(), requests, facts, [at], horizon_ms=15 * MINUTE_MS)
    expected = forecast.expected("eu-west", at, 15 * MINUTE_MS)
    assert expected == {"evt-0": 4.0}  # 3 requests in the last horizon + 1; evt-1's 50 later ones unseen
    assert forecast.expected("eu-west", at, 30 * MINUTE_MS) == {"evt-0": 8.0}  # scaled to the window
    assert forecast.expected("ap-south", at, 15 * MINUTE_MS) == {}
    only_before = ModelForecast(CountModel(), requests.loc[requests["ts"] < at], facts, [at], 15 * MINUTE_MS)
    assert only_before.expected("eu-west", at, 15 * MINUTE_MS) == expected
    demand = forecast.event_demand(objects)("eu-west", millis_to_datetime(at), timedelta(minutes=15), [0, 1])
    assert demand == {0: 4.0, 1: 0.0}


def millis_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def test_the_wide_model_list_ranks_objects_by_forecast_and_past_counts() -> None:
    objects, facts, requests, at = forecast_scenario()
    forecast = ModelForecast(CountModel(), requests, facts, [at], horizon_ms=15 * MINUTE_MS)
    # At the POP, item 2 of evt-0 was requested twice before `at`, the page once.
    trace = make_trace([0, 2, 2, 4], [at - 3000, at - 2000, at - 1000, at + 10])
    wide = ModelWarmList({"eu-west": trace}, objects, forecast, budget_bytes=10_000)
    urls = wide("eu-west", millis_to_datetime(at), timedelta(minutes=15))
    assert [objects.number[url] for url in urls] == [2, 0, 1]  # evt-1 is not forecast: nothing of it
    assert wide("eu-west", millis_to_datetime(at), timedelta(minutes=15)) == urls
    small = ModelWarmList({"eu-west": trace}, objects, forecast, budget_bytes=1_000)
    assert [objects.number[url] for url in small("eu-west", millis_to_datetime(at), timedelta(minutes=15))] == [2, 0]


def test_the_wide_oracle_lists_the_window_requests_most_requested_first() -> None:
    objects = make_objects([500] * 6, items_per_event=2)
    trace = make_trace([5, 1, 1, 4, 1, 4, 0], [0, 10, 20, 30, 40, 50, 200])
    oracle = OracleWideWarmList({"test-pop": trace}, objects, budget_bytes=10_000)
    urls = oracle("test-pop", millis_to_datetime(10), timedelta(milliseconds=100))
    assert [objects.number[url] for url in urls] == [1, 4]


# ------------------------------------------------------------------------------------- model hints


def hint_scenario() -> tuple[ObjectTable, Trace]:
    """One event (page 0, items 1..4). Session 1 (usr-a) opens the page then items 1 and 2; session 2
    (usr-b) opens the page and nothing else; session 3 is a user without consent; earlier views make
    item 1 then item 2 the most viewed."""
    objects = make_objects([100, 200, 200, 200, 200], items_per_event=4)
    keys = [1, 1, 2, 0, 1, 2, 0, 0, 1]
    times = [0, 1, 2, 100, 110, 120, 130, 140, 150]
    sessions = [9, 9, 9, 1, 1, 1, 2, 3, 3]
    users = ["usr-z", "usr-z", "usr-z", "usr-a", "usr-a", "usr-a", "usr-b", "usr-c", "usr-c"]
    return objects, make_trace(keys, times, sessions, users)


def test_model_hints_are_scored_per_session_and_event_and_summed_by_threshold() -> None:
    objects, trace = hint_scenario()
    consenting = {"usr-a", "usr-b", "usr-z"}
    positions = first_requests(trace, objects, consenting, from_ms=100)
    assert positions.tolist() == [3, 6]  # the first request naming the event in sessions 1 and 2
    groups = replay_model_hints(trace, objects, consenting, {(1, 0): 0.7, (2, 0): 0.2}, 1, [100])
    # Session 1: at the page, item 1 (most viewed) is prefetched and then opened (covered); at that first
    # item view item 2 is prefetched and opened (covered); at item 2, item 3 is prefetched and never opened.
    # Session 2: item 1 is prefetched at the page and never opened.
    assert groups.hints.tolist() == [3, 1]
    assert groups.covered_views.tolist() == [2, 0]
    assert groups.first_item_views == (2,)
    high = groups.at(0.5, 0)
    assert (high.prefetched_bytes, high.used_bytes, high.covered_views) == (600, 400, 2)
    assert high.precision == pytest.approx(400 / 600)
    assert high.coverage == pytest.approx(1.0)
    everyone = groups.at(0.1, 0)
    assert everyone.precision == pytest.approx(400 / 800)
    assert groups.at(0.9, 0).hints == 0


def test_the_operating_point_is_chosen_on_validation_and_reported_on_test() -> None:
    objects, trace = hint_scenario()
    consenting = {"usr-a", "usr-b"}
    # Session 1 is in the validation period, session 2 in the test period.
    groups = replay_model_hints(trace, objects, consenting, {(1, 0): 0.7, (2, 0): 0.7}, 1, [100, 125])
    assert groups.period.tolist() == [0, 1]
    point = choose_operating_point([groups], [0.1, 0.5], min_precision=0.5, min_coverage=0.3)
    assert point is not None
    assert point.validation == groups.at(point.threshold, 0)
    assert point.validation.precision == pytest.approx(400 / 600)
    assert point.test == HintFigures(1, 200, 0, 0, 0)  # session 2's hint was never used
    assert "precision >= 0.5" in point.rule
    assert choose_operating_point([groups], [0.9], 0.5, 0.3) is None  # no group that high: nothing to pick


def test_roc_points_run_from_the_origin_to_the_corner() -> None:
    points = roc_points([True, False, True, False], [0.9, 0.1, 0.8, 0.3])
    assert points["fpr"][0] == 0.0 and points["tpr"][0] == 0.0
    assert points["fpr"][-1] == 1.0 and points["tpr"][-1] == 1.0
    assert points["tpr"][2] == 1.0 and points["fpr"][2] == 0.0  # a perfect ranking
