"""Steering rules with scripted POPs at the region centres of origin/cities.py."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from ipaddress import IPv4Address, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geodns.model import Choice, Location, Pop, PopHealth
from geodns.steering import choose_pops, client_fraction, shed_share
from ops.geo import EARTH_RADIUS_KM, great_circle_km
from origin.cities import REGION_DETAILS

POPS: tuple[Pop, ...] = tuple(
    Pop(region.id, (IPv4Address(f"127.0.0.{n}"),), region.lat, region.lon, capacity=1000.0)
    for n, region in enumerate(REGION_DETAILS, start=1)
)
POP_BY_ID = {pop.id: pop for pop in POPS}
ALL_HEALTHY: dict[str, PopHealth] = {pop.id: PopHealth(healthy=True) for pop in POPS}
# Enough client keys that a share's sampling error (~0.7 % at 4000) sits well
# inside the ±5 % the shedding tests allow.
CLIENT_KEYS = range(4000)
SHARE_TOLERANCE = 0.05


def at(lat: float, lon: float) -> Location:
    return Location(lat=lat, lon=lon, network=ip_network("198.51.100.0/24"))


NEW_YORK = at(40.71, -74.01)
LONDON = at(51.51, -0.13)
TOKYO = at(35.68, 139.69)
PERTH = at(-31.95, 115.86)


def choose(
    location: Location | None,
    *,
    pops: Sequence[Pop] = POPS,
    health: Mapping[str, PopHealth] = ALL_HEALTHY,
    count: int = 3,
    default_pool: Sequence[str] = ("na-east", "eu-west"),
    client_key: int = 0,
) -> Choice:
    return choose_pops(location, pops, health, count=count, default_pool=default_pool, client_key=client_key)


def ids(choice: Choice) -> list[str]:
    return [pop.id for pop in choice.pops]


def health_with(**overrides: PopHealth) -> dict[str, PopHealth]:
    return {**ALL_HEALTHY, **{key.replace("_", "-"): value for key, value in overrides.items()}}


# ---------------------------------------------------------------- distance


def test_great_circle_km_known_distances() -> None:
    assert great_circle_km(51.51, -0.13, 51.51, -0.13) == 0.0
    # London to Paris is about 344 km; New York to Los Angeles about 3940 km.
    assert great_circle_km(51.51, -0.13, 48.86, 2.35) == pytest.approx(344, rel=0.01)
    assert great_circle_km(40.71, -74.01, 34.05, -118.24) == pytest.approx(3940, rel=0.01)
    assert great_circle_km(0, 0, 0, 180) == pytest.approx(math.pi * EARTH_RADIUS_KM)
    assert great_circle_km(90, 0, -90, 0) == pytest.approx(math.pi * EARTH_RADIUS_KM)


# ---------------------------------------------------------------- nearest, failover, weight


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        (NEW_YORK, ["na-east", "na-west", "eu-west"]),
        (LONDON, ["eu-west", "eu-central", "me-central"]),  # Dubai 5474 km beats Ashburn 5917 km
        (TOKYO, ["ap-northeast", "ap-southeast", "ap-south"]),
        (PERTH, ["oc-east", "ap-southeast", "ap-south"]),  # Sydney 3291 km, Singapore 3914 km
    ],
)
def test_nearest_pops_first(location: Location, expected: list[str]) -> None:
    choice = choose(location)
    assert ids(choice) == expected
    assert not choice.all_down
    assert choice.shed_from == ()


def test_unhealthy_nearest_fails_over_to_next_nearest() -> None:
    choice = choose(NEW_YORK, health=health_with(na_east=PopHealth(healthy=False)))
    assert ids(choice) == ["na-west", "eu-west", "eu-central"]


def test_pop_without_health_entry_is_not_answered() -> None:
    health = {pop_id: value for pop_id, value in ALL_HEALTHY.items() if pop_id != "eu-west"}
    assert ids(choose(LONDON, health=health, count=1)) == ["eu-central"]


def test_count_limits_the_answer() -> None:
    assert ids(choose(TOKYO, count=1)) == ["ap-northeast"]
    assert len(choose(TOKYO, count=50).pops) == len(POPS)


@pytest.mark.parametrize(
    ("weight", "expected_first"),
    [
        (1.0, "eu-west"),  # Paris 344 km vs Frankfurt ~640 km
        (1.5, "eu-west"),  # 640 / 1.5 ≈ 427 km: still farther than Paris
        (2.0, "eu-central"),  # 640 / 2 ≈ 320 km: now nearer than Paris
    ],
)
def test_weight_divides_distance(weight: float, expected_first: str) -> None:
    pops = [replace(pop, weight=weight) if pop.id == "eu-central" else pop for pop in POPS]
    assert ids(choose(LONDON, pops=pops, count=1)) == [expected_first]


def test_ties_go_to_the_smaller_pop_id() -> None:
    twins = [Pop(pop_id, (), 10.0, 10.0, capacity=1.0) for pop_id in ("b", "c", "a")]
    health = {pop.id: PopHealth(healthy=True) for pop in twins}
    assert ids(choose(at(0, 0), pops=twins, health=health)) == ["a", "b", "c"]


# ---------------------------------------------------------------- load shedding


def first_pop_shares(location: Location, health: Mapping[str, PopHealth]) -> dict[str, float]:
    firsts = Counter(choose(location, health=health, client_key=key).pops[0].id for key in CLIENT_KEYS)
    return {pop_id: n / len(CLIENT_KEYS) for pop_id, n in firsts.items()}


def test_overloaded_pop_sheds_its_excess_share_to_the_next_nearest() -> None:
    # load 4x capacity: keep 1/4 of clients, shed 3/4 to na-west.
    shares = first_pop_shares(NEW_YORK, health_with(na_east=PopHealth(healthy=True, load=4000.0)))
    assert set(shares) == {"na-east", "na-west"}
    assert shares["na-east"] == pytest.approx(0.25, abs=SHARE_TOLERANCE)
    assert shares["na-west"] == pytest.approx(0.75, abs=SHARE_TOLERANCE)


def test_two_overloaded_pops_shed_independently() -> None:
    # Each sheds half; with independent per-POP decisions New York's clients
    # split 1/2 na-east, 1/4 na-west (half of the overflow), 1/4 eu-west.
    health = health_with(
        na_east=PopHealth(healthy=True, load=2000.0),
        na_west=PopHealth(healthy=True, load=2000.0),
    )
    shares = first_pop_shares(NEW_YORK, health)
    assert shares["na-east"] == pytest.approx(0.5, abs=SHARE_TOLERANCE)
    assert shares["na-west"] == pytest.approx(0.25, abs=SHARE_TOLERANCE)
    assert shares["eu-west"] == pytest.approx(0.25, abs=SHARE_TOLERANCE)


def test_shed_pop_is_demoted_not_dropped_and_named() -> None:
    health = health_with(na_east=PopHealth(healthy=True, load=1e9))  # sheds ~everyone
    choice = choose(NEW_YORK, health=health, count=len(POPS))
    assert choice.pops[-1].id == "na-east"
    assert choice.shed_from == ("na-east",)
    assert ids(choose(NEW_YORK, health=health, count=1)) == ["na-west"]


def test_a_lone_overloaded_pop_is_still_answered() -> None:
    health = {"na-east": PopHealth(healthy=True, load=1e9)}
    assert ids(choose(NEW_YORK, health=health)) == ["na-east"]


@pytest.mark.parametrize(
    ("load", "share"),
    [(None, 0.0), (500.0, 0.0), (1000.0, 0.0), (2000.0, 0.5), (4000.0, 0.75), (math.nan, 0.0), (math.inf, 0.0)],
)
def test_shed_share(load: float | None, share: float) -> None:
    assert shed_share(POP_BY_ID["na-east"], PopHealth(healthy=True, load=load)) == pytest.approx(share)


def test_zero_capacity_with_load_sheds_everything() -> None:
    assert shed_share(replace(POP_BY_ID["na-east"], capacity=0.0), PopHealth(healthy=True, load=1.0)) == 1.0


def test_load_at_capacity_sheds_nobody() -> None:
    health = health_with(na_east=PopHealth(healthy=True, load=1000.0))
    assert all(choose(NEW_YORK, health=health, client_key=key).pops[0].id == "na-east" for key in range(200))


def test_same_client_key_always_gets_the_same_answer() -> None:
    health = health_with(na_east=PopHealth(healthy=True, load=2000.0))
    for key in range(100):
        assert choose(NEW_YORK, health=health, client_key=key) == choose(NEW_YORK, health=health, client_key=key)


def test_client_fraction_is_stable_and_in_range() -> None:
    # Pinned values: the hash must not depend on the process (PYTHONHASHSEED) or
    # change silently between releases, or replicas would disagree on who is shed.
    assert client_fraction(0, "na-east") == 0.3286316478429535
    assert client_fraction(12345) == 0.9947421931131208
    assert client_fraction(0, "na-east") != client_fraction(0, "na-west")
    for key in (-1, 0, 1, 2**128 + 5, 2**200):
        assert 0.0 <= client_fraction(key) < 1.0


# ---------------------------------------------------------------- drained


def test_drained_pop_is_never_answered_even_when_healthy_and_nearest() -> None:
    pops = [replace(pop, drained=True) if pop.id == "na-east" else pop for pop in POPS]
    assert "na-east" not in ids(choose(NEW_YORK, pops=pops, count=len(POPS)))
    assert "na-east" not in ids(choose(NEW_YORK, pops=pops, health={}, count=len(POPS)))
    assert "na-east" not in ids(choose(None, pops=pops, default_pool=["na-east"]))


# ---------------------------------------------------------------- unknown location


def test_unknown_location_gets_the_default_pool_in_order() -> None:
    assert ids(choose(None, default_pool=["eu-west", "na-east"])) == ["eu-west", "na-east"]


def test_unknown_location_skips_unhealthy_and_unregistered_pool_members() -> None:
    health = health_with(eu_west=PopHealth(healthy=False))
    choice = choose(None, health=health, default_pool=["gone", "eu-west", "na-east", "na-east", "oc-east"])
    assert ids(choice) == ["na-east", "oc-east"]


def test_unknown_location_with_whole_pool_down_uses_all_healthy_pops_spread_by_client() -> None:
    health = health_with(na_east=PopHealth(healthy=False), eu_west=PopHealth(healthy=False))
    firsts = Counter(choose(None, health=health, client_key=key).pops[0].id for key in range(500))
    assert set(firsts) == set(POP_BY_ID) - {"na-east", "eu-west"}
    # Rotated, not always the alphabetically first POP.
    assert max(firsts.values()) < 500 / 3


def test_unknown_location_pool_sheds_load_too() -> None:
    health = health_with(na_east=PopHealth(healthy=True, load=1e9))
    assert ids(choose(None, health=health, default_pool=["na-east", "eu-west"])) == ["eu-west", "na-east"]


# ---------------------------------------------------------------- all down


def test_all_down_answers_the_nearest_anyway_and_says_so() -> None:
    choice = choose(NEW_YORK, health={}, count=2)
    assert ids(choice) == ["na-east", "na-west"]
    assert choice.all_down


def test_all_down_with_unknown_location_answers_default_pool_then_by_id() -> None:
    choice = choose(None, health={}, default_pool=["eu-west"], count=3)
    assert ids(choice) == ["eu-west", "af-south", "ap-northeast"]
    assert choice.all_down


def test_all_drained_gives_an_empty_all_down_choice() -> None:
    pops = [replace(pop, drained=True) for pop in POPS]
    assert choose(NEW_YORK, pops=pops) == Choice(pops=(), all_down=True)
    assert choose(None, pops=pops) == Choice(pops=(), all_down=True)


def test_no_pops_at_all_gives_an_empty_all_down_choice() -> None:
    assert choose(NEW_YORK, pops=[]) == Choice(pops=(), all_down=True)


# ---------------------------------------------------------------- determinism and bad input


def test_pop_order_does_not_matter() -> None:
    health = health_with(na_east=PopHealth(healthy=True, load=3000.0))
    for key in range(50):
        forward = choose(NEW_YORK, health=health, client_key=key, count=5)
        backward = choose(NEW_YORK, pops=POPS[::-1], health=health, client_key=key, count=5)
        assert forward == backward


@pytest.mark.parametrize(
    ("pops", "count", "message"),
    [
        (POPS, 0, "count"),
        ((*POPS, POPS[0]), 1, "duplicate POP id"),
        ((replace(POPS[0], weight=0.0),), 1, "weight"),
        ((replace(POPS[0], weight=math.nan),), 1, "weight"),
    ],
)
def test_bad_input_raises_value_error(pops: Sequence[Pop], count: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        choose(NEW_YORK, pops=pops, count=count)


# ---------------------------------------------------------------- properties


pop_strategy = st.builds(
    Pop,
    id=st.sampled_from([f"pop-{n}" for n in range(12)]),
    addresses=st.just(()),
    lat=st.floats(-90, 90),
    lon=st.floats(-180, 180),
    capacity=st.floats(0, 1e6),
    weight=st.floats(0.01, 100),
    drained=st.booleans(),
)
health_strategy = st.builds(
    PopHealth, healthy=st.booleans(), load=st.none() | st.floats(0, 1e7, allow_nan=False, allow_infinity=False)
)


@given(
    pops=st.lists(pop_strategy, max_size=12, unique_by=lambda pop: pop.id),
    health=st.dictionaries(st.sampled_from([f"pop-{n}" for n in range(12)]), health_strategy),
    location=st.none() | st.builds(at, st.floats(-90, 90), st.floats(-180, 180)),
    count=st.integers(1, 6),
    default_pool=st.lists(st.sampled_from([f"pop-{n}" for n in range(14)]), max_size=4),
    client_key=st.integers(0, 2**128 - 1),
)
def test_choice_properties(
    pops: list[Pop],
    health: dict[str, PopHealth],
    location: Location | None,
    count: int,
    default_pool: list[str],
    client_key: int,
) -> None:
    choice = choose(location, pops=pops, health=health, count=count, default_pool=default_pool, client_key=client_key)
    chosen = ids(choice)
    live = [pop for pop in pops if not pop.drained]
    assert set(chosen) <= {pop.id for pop in live}
    assert len(chosen) == len(set(chosen))
    assert len(chosen) == min(count, len(live)) or not choice.all_down
    assert len(chosen) <= count
    healthy_live = [pop for pop in live if health.get(pop.id, PopHealth(healthy=False)).healthy]
    assert choice.all_down == (not healthy_live)
    if healthy_live:
        assert all(health[pop_id].healthy for pop_id in chosen)
        assert len(chosen) == min(count, len(healthy_live)) or location is None
    assert set(choice.shed_from) <= {pop.id for pop in healthy_live}
    # Same inputs, same answer.
    assert choice == choose(
        location, pops=pops, health=health, count=count, default_pool=default_pool, client_key=client_key
    )
