"""The shard manager's decisions: each rule scripted, then random forecast sequences."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from origin.cities import REGIONS
from origin.placement import (
    ORIGIN,
    SECONDARY_REGION,
    Forecast,
    InvalidForecast,
    Placement,
    PlacementConfig,
    Plan,
    ShardChange,
    ShardPlacement,
    build_shard_map,
    nearest_other_regions,
    plan,
)
from tests.origin.conftest import START

MINUTE = timedelta(minutes=1)
CONFIG = PlacementConfig(
    create_threshold=50.0,
    retire_threshold=20.0,
    cool_down=10 * MINUTE,
    min_shard_lifetime=30 * MINUTE,
    max_events_per_shard=3,
)
FUZZ = settings(max_examples=150, deadline=None)


def shard(shard_id: str, region: str, *events: str, created_at: datetime = START) -> ShardPlacement:
    return ShardPlacement(shard_id, region, created_at, frozenset(events))


def events_of(placement: Placement) -> dict[str, frozenset[str]]:
    return {placed.shard_id: placed.events for placed in placement.shards}


def apply_plan(placement: Placement, the_plan: Plan) -> dict[str, tuple[str, frozenset[str]]]:
    """What a backend ends up running after performing only the plan's deltas."""
    running = {placed.shard_id: (placed.region, placed.events) for placed in placement.shards}
    for shard_id in the_plan.retire:
        del running[shard_id]  # with whatever it still mirrored: retiring drops everything
    for change in the_plan.changes:
        region, events = running[change.shard_id]
        assert not change.add & events and change.drop <= events
        running[change.shard_id] = (region, (events | change.add) - change.drop)
    for new in the_plan.create:
        assert new.shard_id not in running
        running[new.shard_id] = (new.region, new.events)
    return running


# --- P1 / P6: placing ----------------------------------------------------------------------------


def test_p1_a_hot_event_gets_a_new_shard_and_a_route() -> None:
    result = plan({"eu-west": {"evt-1": 80.0}}, Placement(), CONFIG, START)
    assert [(new.shard_id, new.region, new.events) for new in result.create] == [
        ("eu-west-1", "eu-west", frozenset({"evt-1"}))
    ]
    assert (result.retire, result.changes) == ((), ())
    assert result.placement.next_shard_number == 2
    assert result.shard_map["evt-1"]["eu-west"] == ("eu-west-1", ORIGIN)
    # eu-central fails over to eu-west, so its fans get the nearer mirror too.
    assert result.shard_map["evt-1"]["eu-central"] == ("eu-west-1", ORIGIN)


def test_p6_demand_between_the_thresholds_places_nothing() -> None:
    result = plan({"eu-west": {"evt-1": 49.9, "evt-2": 20.0}}, Placement(), CONFIG, START)
    assert result.is_noop
    assert result.shard_map == {}


def test_p1_fills_the_fullest_healthy_shard_with_room_then_creates() -> None:
    placement = Placement(
        (
            shard("eu-west-1", "eu-west", "a"),
            shard("eu-west-2", "eu-west", "b", "c"),
            shard("eu-west-3", "eu-west", "d", "e"),
        ),
        next_shard_number=4,
    )
    hot = {"eu-west": dict.fromkeys("abcde", 60.0) | {"f": 90.0, "g": 70.0, "h": 55.0}}
    result = plan(hot, placement, CONFIG, START, unhealthy={"eu-west-3"})
    # f (hottest) fills eu-west-2 (fullest with room); g goes to eu-west-1, then h too; eu-west-3 is down.
    assert result.changes == (
        ShardChange("eu-west-1", frozenset({"g", "h"}), frozenset()),
        ShardChange("eu-west-2", frozenset({"f"}), frozenset()),
    )
    assert result.create == ()
    more = plan({"eu-west": hot["eu-west"] | {"i": 51.0}}, result.placement, CONFIG, START, unhealthy={"eu-west-3"})
    assert [(new.shard_id, new.events) for new in more.create] == [("eu-west-4", frozenset({"i"}))]


def test_p1_places_each_region_separately() -> None:
    forecast = {"eu-west": {"evt-1": 60.0}, "ap-northeast": {"evt-1": 60.0}}
    result = plan(forecast, Placement(), CONFIG, START)
    assert sorted((new.region, new.shard_id) for new in result.create) == [
        ("ap-northeast", "ap-northeast-1"),
        ("eu-west", "eu-west-2"),
    ]


# --- P2–P5: keeping and dropping -----------------------------------------------------------------


def test_p3_p4_p5_an_event_is_dropped_only_after_a_whole_cool_down_below_retire() -> None:
    placement = Placement((shard("eu-west-1", "eu-west", "a", "b"),), next_shard_number=2)
    quiet = {"eu-west": {"a": 19.0, "b": 80.0}}
    first = plan(quiet, placement, CONFIG, START)  # P3: the timer starts
    assert first.is_noop
    assert dict(first.placement.shards[0].quiet_since) == {"a": START}
    almost = plan(quiet, first.placement, CONFIG, START + 10 * MINUTE - timedelta(seconds=1))  # P4
    assert almost.is_noop
    dropped = plan(quiet, almost.placement, CONFIG, START + 10 * MINUTE)  # P5
    assert dropped.changes == (ShardChange("eu-west-1", frozenset(), frozenset({"a"})),)
    assert dict(dropped.placement.shards[0].quiet_since) == {}
    assert dropped.shard_map.keys() == {"b"}


def test_p2_demand_back_above_retire_resets_the_timer() -> None:
    placement = Placement((shard("eu-west-1", "eu-west", "a"),), next_shard_number=2)
    low, middling = {"eu-west": {"a": 5.0}}, {"eu-west": {"a": 25.0}}
    state = plan(low, placement, CONFIG, START).placement
    state = plan(middling, state, CONFIG, START + 9 * MINUTE).placement  # P2: below create, above retire
    assert dict(state.shards[0].quiet_since) == {}
    assert plan(low, state, CONFIG, START + 12 * MINUTE).is_noop  # a new cool-down starts here
    assert not plan(low, plan(low, state, CONFIG, START + 12 * MINUTE).placement, CONFIG, START + 22 * MINUTE).is_noop


def test_a_zero_cool_down_drops_at_once() -> None:
    config = PlacementConfig(create_threshold=50.0, retire_threshold=20.0, cool_down=timedelta(0))
    placement = Placement((shard("eu-west-1", "eu-west", "a", created_at=START - config.min_shard_lifetime),), 2)
    result = plan({}, placement, config, START)
    assert result.retire == ("eu-west-1",)
    assert result.changes == ()  # a retired shard gets no drop list


def test_moving_events_only_names_the_difference() -> None:
    placement = Placement((shard("eu-west-1", "eu-west", "a", "b"),), next_shard_number=2)
    config = PlacementConfig(create_threshold=50.0, retire_threshold=20.0, cool_down=timedelta(0))
    result = plan({"eu-west": {"b": 30.0, "c": 60.0}}, placement, config, START)
    assert result.changes == (ShardChange("eu-west-1", frozenset({"c"}), frozenset({"a"})),)


# --- S1–S3: shards --------------------------------------------------------------------------------


def test_s1_s2_an_empty_shard_retires_only_after_its_minimum_lifetime() -> None:
    young = Placement((shard("eu-west-1", "eu-west", created_at=START),), next_shard_number=2)
    assert plan({}, young, CONFIG, START + 29 * MINUTE).is_noop  # S2
    retired = plan({}, young, CONFIG, START + 30 * MINUTE)  # S1
    assert retired.retire == ("eu-west-1",)
    assert retired.placement == Placement((), next_shard_number=2)
    again = plan({"eu-west": {"x": 99.0}}, retired.placement, CONFIG, START + 31 * MINUTE)
    assert [new.shard_id for new in again.create] == ["eu-west-2"]  # ids are never reused


def test_s2_an_empty_young_shard_is_reused_before_creating() -> None:
    young = Placement((shard("eu-west-1", "eu-west"),), next_shard_number=2)
    result = plan({"eu-west": {"x": 99.0}}, young, CONFIG, START + 5 * MINUTE)
    assert result.create == ()
    assert result.changes == (ShardChange("eu-west-1", frozenset({"x"}), frozenset()),)


def test_s3_an_unhealthy_shard_keeps_its_events_but_gets_no_new_ones() -> None:
    placement = Placement((shard("eu-west-1", "eu-west", "a"),), next_shard_number=2)
    result = plan({"eu-west": {"a": 80.0, "b": 80.0}}, placement, CONFIG, START, unhealthy={"eu-west-1"})
    assert events_of(result.placement) == {"eu-west-1": {"a"}, "eu-west-2": {"b"}}


# --- M1–M3: the shard map -------------------------------------------------------------------------


def test_m1_m2_a_failed_primary_moves_its_region_to_the_secondary() -> None:
    placement = Placement(
        (shard("eu-central-1", "eu-central", "a"), shard("eu-west-1", "eu-west", "a", "b")), next_shard_number=3
    )
    healthy = build_shard_map(placement, CONFIG)
    assert healthy["a"] == {
        "eu-central": ("eu-central-1", "eu-west-1", ORIGIN),
        "eu-west": ("eu-west-1", "eu-central-1", ORIGIN),
    }
    assert healthy["b"] == {"eu-central": ("eu-west-1", ORIGIN), "eu-west": ("eu-west-1", ORIGIN)}
    failed = build_shard_map(placement, CONFIG, unhealthy={"eu-west-1"})
    assert failed["a"] == {"eu-central": ("eu-central-1", ORIGIN), "eu-west": ("eu-central-1", ORIGIN)}
    assert failed["b"] == {"eu-central": (ORIGIN,), "eu-west": (ORIGIN,)}
    # The plan publishes the same map, with the same health.
    assert plan({}, placement, CONFIG, START, unhealthy={"eu-west-1"}).shard_map == failed


def test_m3_regions_without_a_nearby_mirror_are_absent() -> None:
    placement = Placement((shard("eu-west-1", "eu-west", "a"),), next_shard_number=2)
    assert "ap-northeast" not in build_shard_map(placement, CONFIG)["a"]


def test_secondaries_come_from_the_nearest_region_centre() -> None:
    assert set(SECONDARY_REGION) == set(REGIONS)
    assert SECONDARY_REGION["eu-west"] == "eu-central" and SECONDARY_REGION["eu-central"] == "eu-west"
    assert SECONDARY_REGION["na-east"] == "na-west" and SECONDARY_REGION["ap-south"] == "me-central"
    assert nearest_other_regions([]) == {}


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "forecast",
    [{"mars-north": {"a": 1.0}}, {"eu-west": {"a": -1.0}}, {"eu-west": {"a": math.nan}}, {"eu-west": {"a": math.inf}}],
)
def test_a_bad_forecast_is_a_precise_error(forecast: Forecast) -> None:
    with pytest.raises(InvalidForecast):
        plan(forecast, Placement(), CONFIG, START)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"create_threshold": 0.0}, "create_threshold"),
        ({"retire_threshold": 50.0}, "retire_threshold"),
        ({"cool_down": -MINUTE}, "cool_down"),
        ({"min_shard_lifetime": -MINUTE}, "min_shard_lifetime"),
        ({"max_events_per_shard": 0}, "max_events_per_shard"),
        ({"secondary_region": {"eu-west": "eu-west"}}, "secondary_region"),
        ({"secondary_region": {"eu-west": "mars"}}, "secondary_region"),
    ],
)
def test_config_errors_name_the_key(overrides: Mapping[str, object], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        PlacementConfig(**overrides)  # type: ignore[arg-type]


# --- properties -----------------------------------------------------------------------------------

PAIRS = [(region, event) for region in ("eu-west", "eu-central", "na-east") for event in ("a", "b", "c", "d")]
steps = st.integers(min_value=0, max_value=int(3 * CONFIG.cool_down / MINUTE)).map(lambda minutes: minutes * MINUTE)


def placed_pairs(placement: Placement) -> set[tuple[str, str]]:
    return {(placed.region, event) for placed in placement.shards for event in placed.events}


@FUZZ
@given(
    around_create=st.booleans(),
    rounds=st.lists(
        st.tuples(
            steps, st.lists(st.floats(min_value=-15.0, max_value=15.0), min_size=len(PAIRS), max_size=len(PAIRS))
        ),
        min_size=1,
        max_size=25,
    ),
)
def test_a_forecast_oscillating_around_one_threshold_never_flaps(
    around_create: bool, rounds: list[tuple[timedelta, list[float]]]
) -> None:
    config = PlacementConfig(
        create_threshold=CONFIG.create_threshold,
        retire_threshold=CONFIG.retire_threshold,
        cool_down=CONFIG.cool_down,
        min_shard_lifetime=CONFIG.min_shard_lifetime,
        max_events_per_shard=len(PAIRS),
    )
    threshold = config.create_threshold if around_create else config.retire_threshold
    now = START
    placement = Placement()
    if not around_create:  # start with everything placed, as a hot spell would leave it
        placement = plan(_forecast(dict.fromkeys(PAIRS, 99.0)), placement, config, now).placement
    status = {pair: pair in placed_pairs(placement) for pair in PAIRS}
    flips = dict.fromkeys(PAIRS, 0)
    shard_moves: dict[str, int] = {}
    for step, wobbles in rounds:
        now += step
        demand = {pair: threshold + wobble for pair, wobble in zip(PAIRS, wobbles, strict=True)}
        result = plan(_forecast(demand), placement, config, now)
        placement = result.placement
        for pair in PAIRS:
            placed = pair in placed_pairs(placement)
            flips[pair] += placed != status[pair]
            status[pair] = placed
        for region in [new.region for new in result.create] + [_region(sid) for sid in result.retire]:
            shard_moves[region] = shard_moves.get(region, 0) + 1
    assert max(flips.values()) <= 1, flips
    assert max(shard_moves.values(), default=0) <= 1, shard_moves


@st.composite
def forecast_rounds(draw: st.DrawFn) -> list[tuple[timedelta, dict[tuple[str, str], float], frozenset[str]]]:
    demand = st.one_of(st.sampled_from([0.0, 19.9, 20.0, 49.9, 50.0, 200.0]), st.floats(min_value=0.0, max_value=120.0))
    rounds = []
    for _ in range(draw(st.integers(min_value=1, max_value=14))):
        step = draw(steps)
        forecast = draw(st.dictionaries(st.sampled_from(PAIRS), demand, max_size=len(PAIRS)))
        down = draw(
            st.frozensets(
                st.sampled_from([f"{r}-{n}" for r in ("eu-west", "eu-central", "na-east") for n in range(1, 6)]),
                max_size=3,
            )
        )
        rounds.append((step, forecast, down))
    return rounds


@FUZZ
@given(rounds=forecast_rounds())
def test_every_plan_keeps_the_rules(
    rounds: list[tuple[timedelta, dict[tuple[str, str], float], frozenset[str]]],
) -> None:
    now = START
    placement = Placement()
    ever_created: set[str] = set()
    low_since: dict[tuple[str, str], datetime] = {}  # the oracle's own cool-down clock per placed pair
    created_at: dict[str, datetime] = {}
    for step, demand, unhealthy in rounds:
        now += step
        before = placed_pairs(placement)
        result = plan(_forecast(demand), placement, CONFIG, now, unhealthy)
        after = placed_pairs(result.placement)

        # Deltas reproduce the new placement: placement changes never re-copy the rest.
        assert apply_plan(placement, result) == {
            placed.shard_id: (placed.region, placed.events) for placed in result.placement.shards
        }
        # Every hot pair is placed in its region, once, within the shard size limit.
        assert {pair for pair, rate in demand.items() if rate >= CONFIG.create_threshold} <= after
        pairs = [(placed.region, event) for placed in result.placement.shards for event in placed.events]
        assert len(pairs) == len(set(pairs))
        assert all(len(placed.events) <= CONFIG.max_events_per_shard for placed in result.placement.shards)
        # Only hot pairs are added; a pair is dropped only after a whole cool-down below retire.
        for pair in after - before:
            assert demand.get(pair, 0.0) >= CONFIG.create_threshold
        for pair in before:
            if demand.get(pair, 0.0) >= CONFIG.retire_threshold:
                low_since.pop(pair, None)
            else:
                low_since.setdefault(pair, now)
        for pair in before - after:
            assert now - low_since.pop(pair) >= CONFIG.cool_down
        # New shards have new names; retired ones lived long enough and were empty.
        for new in result.create:
            assert new.shard_id not in ever_created and new.events
            ever_created.add(new.shard_id)
            created_at[new.shard_id] = now
        for shard_id in result.retire:
            assert now - created_at[shard_id] >= CONFIG.min_shard_lifetime
        _check_map(result, unhealthy)
        placement = result.placement


def _check_map(result: Plan, unhealthy: frozenset[str]) -> None:
    mirror = {(placed.region, event): placed.shard_id for placed in result.placement.shards for event in placed.events}
    events = {event for _, event in mirror}
    assert set(result.shard_map) == events
    for event in events:
        expected_regions = {
            region for region in REGIONS if (region, event) in mirror or (SECONDARY_REGION[region], event) in mirror
        }
        assert set(result.shard_map[event]) == expected_regions
        for region, route in result.shard_map[event].items():
            assert route[-1] == ORIGIN and ORIGIN not in route[:-1]
            primary, secondary = mirror.get((region, event)), mirror.get((SECONDARY_REGION[region], event))
            assert route[:-1] == tuple(s for s in (primary, secondary) if s is not None and s not in unhealthy)


def _forecast(demand: Mapping[tuple[str, str], float]) -> dict[str, dict[str, float]]:
    forecast: dict[str, dict[str, float]] = {}
    for (region, event), rate in demand.items():
        forecast.setdefault(region, {})[event] = max(rate, 0.0)
    return forecast


def _region(shard_id: str) -> str:
    return shard_id.rsplit("-", 1)[0]
