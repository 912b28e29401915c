"""The demo catalog: determinism, geography, Zipf popularity, schedules and items."""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from origin.catalog import SEED_HLC, Catalog, build_catalog, summarize
from origin.cities import CITIES, CURRENCIES, CURRENCY_BY_COUNTRY, REGION_BY_ID, REGIONS, cities_in, currency_of
from origin.model import GENERAL_ADMISSION, SEATED

START = datetime(2025, 11, 25, 21, 30, tzinfo=UTC)

# (lat_min, lat_max, lon_min, lon_max): a generous box around each region's cities,
# written independently of the city table so a typo in a coordinate shows up here.
REGION_BOXES = {
    "na-east": (24, 50, -98, -65),
    "na-west": (18, 56, -160, -95),
    "sa-east": (-45, 0, -80, -34),
    "eu-west": (36, 59, -11, 6),
    "eu-central": (37, 62, 4, 30),
    "af-south": (-36, 2, 15, 42),
    "me-central": (20, 35, 30, 60),
    "ap-south": (5, 35, 66, 92),
    "ap-northeast": (22, 46, 115, 146),
    "ap-southeast": (-10, 25, 99, 126),
    "oc-east": (-47, -26, 113, 179),
}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return build_catalog(42, start=START)


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dlat, dlon = phi2 - phi1, math.radians(lon2 - lon1)
    half = math.sin(dlat / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlon / 2) ** 2
    return 2 * 6371 * math.asin(math.sqrt(half))


# --- cities ---------------------------------------------------------------------------------------


def test_city_table_covers_every_region_with_enough_cities() -> None:
    assert len(CITIES) >= 120
    assert set(REGIONS) == set(REGION_BOXES) == set(REGION_BY_ID)
    for region in REGIONS:
        assert len(cities_in(region)) >= 6, region
    assert len({(city.name, city.country) for city in CITIES}) == len(CITIES)


def test_city_coordinates_and_codes_are_plausible() -> None:
    for city in CITIES:
        assert re.fullmatch(r"[A-Z]{2}", city.country), city
        lat_min, lat_max, lon_min, lon_max = REGION_BOXES[city.region]
        assert lat_min <= city.lat <= lat_max and lon_min <= city.lon <= lon_max, city
        assert city.country in CURRENCY_BY_COUNTRY, city  # no city silently falls back to dollars


def test_every_city_is_nearest_to_its_own_region_centre() -> None:
    # GeoDNS sends a client to the nearest region; the region that owns a city's events must agree.
    for city in CITIES:
        nearest = min(REGION_BY_ID.values(), key=lambda region: _km(city.lat, city.lon, region.lat, region.lon))
        assert nearest.id == city.region, city


def test_currency_minor_units() -> None:
    assert currency_of("JP").minor_digits == 0
    assert currency_of("KW").minor_digits == 3
    assert currency_of("GB").code == "GBP"
    assert currency_of("XX").code == "USD"
    assert set(CURRENCY_BY_COUNTRY.values()) <= set(CURRENCIES)


# --- determinism and shape ------------------------------------------------------------------------


def test_same_seed_gives_the_same_catalog(catalog: Catalog) -> None:
    assert build_catalog(42, start=START) == catalog


def test_different_seed_gives_a_different_catalog(catalog: Catalog) -> None:
    other = build_catalog(43, start=START)
    assert other.venues != catalog.venues
    assert other.events != catalog.events


def test_counts_as_requested(catalog: Catalog) -> None:
    assert len(catalog.venues) == 300
    assert len(catalog.events) == 3000
    assert 15_000 <= len(catalog.items) <= 25_000
    small = build_catalog(1, venues=11, events=50, start=START)
    assert (len(small.venues), len(small.events)) == (11, 50)
    assert {venue.region for venue in small.venues} == set(REGIONS)  # the first pass is round-robin


def test_ids_are_unique_and_well_formed(catalog: Catalog) -> None:
    for records, pattern in (
        (catalog.venues, r"ven-\d{4}"),
        (catalog.events, r"evt-\d{6}"),
        (catalog.items, r"itm-\d{6}-\d{2}"),
    ):
        ids = [record.id for record in records]
        assert len(set(ids)) == len(ids)
        assert all(re.fullmatch(pattern, id_) for id_ in ids)
    assert catalog.venues[0].id == "ven-0001"
    assert catalog.events[0].id == "evt-000001"
    assert catalog.items[0].id == "itm-000001-01"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        build_catalog(1, start=datetime(2025, 1, 1))  # naive on purpose
    with pytest.raises(ValueError, match="venues"):
        build_catalog(1, venues=0, start=START)


# --- venues ---------------------------------------------------------------------------------------


def test_venues_cover_regions_and_sit_in_their_region(catalog: Catalog) -> None:
    assert len({venue.region for venue in catalog.venues}) >= 6
    cities = {(city.name, city.country): city for city in CITIES}
    for venue in catalog.venues:
        assert -90 <= venue.lat <= 90 and -180 <= venue.lon <= 180
        lat_min, lat_max, lon_min, lon_max = REGION_BOXES[venue.region]
        assert lat_min <= venue.lat <= lat_max and lon_min <= venue.lon <= lon_max, venue
        city = cities[venue.city, venue.country]
        assert city.region == venue.region
        assert _km(venue.lat, venue.lon, city.lat, city.lon) < 10


def test_venue_names_are_unique_and_capacities_are_real(catalog: Catalog) -> None:
    assert len({venue.name for venue in catalog.venues}) == len(catalog.venues)
    for venue in catalog.venues:
        assert 300 <= venue.capacity <= 80_000
        if venue.name.endswith("Stadium"):
            assert venue.capacity >= 30_000, venue
        if venue.name.endswith("Arena"):
            assert 8_000 <= venue.capacity <= 20_000, venue
    big_markets = Counter(venue.city for venue in catalog.venues)
    assert big_markets.most_common(1)[0][1] >= 3  # several venues in a big city


# --- events ---------------------------------------------------------------------------------------


def test_events_take_region_and_currency_from_their_venue(catalog: Catalog) -> None:
    venues = {venue.id: venue for venue in catalog.venues}
    assert len({event.region for event in catalog.events}) >= 6
    for event in catalog.events:
        venue = venues[event.venue_id]
        assert event.region == venue.region
        assert 2 <= len(event.price_tiers) <= 4
        assert {tier.currency for tier in event.price_tiers} == {currency_of(venue.country).code}
        amounts = [tier.amount for tier in event.price_tiers]
        assert all(isinstance(amount, int) and amount > 0 for amount in amounts)
        assert amounts == sorted(amounts)
        if event.genre == "football":
            assert venue.capacity >= 30_000
        if event.genre == "basketball":
            assert 8_000 <= venue.capacity <= 20_000


def test_genres_mix_music_comedy_and_sport(catalog: Catalog) -> None:
    genres = Counter(event.genre for event in catalog.events)
    assert {"rock", "pop", "hip-hop", "electronic", "classical", "jazz", "comedy", "football", "basketball"} <= set(
        genres
    )
    assert len(genres) >= 12
    touring = Counter(event.artist for event in catalog.events)
    assert touring.most_common(1)[0][1] >= 3  # acts play several dates


def test_popularity_follows_zipf_with_exponent_0_8(catalog: Catalog) -> None:
    popularity = sorted((event.popularity for event in catalog.events), reverse=True)
    assert math.isclose(math.fsum(popularity), 1.0, rel_tol=1e-9)
    log_rank = [math.log(rank) for rank in range(1, len(popularity) + 1)]
    slope, _ = statistics.linear_regression(log_rank, [math.log(value) for value in popularity])
    assert slope == pytest.approx(-0.8, abs=0.05)
    # ranks are dealt by a shuffle, so the most popular events are not simply the first ids
    top = {event.id for event in sorted(catalog.events, key=lambda event: -event.popularity)[:100]}
    assert top != {event.id for event in catalog.events[:100]}


def test_schedule_spans_the_next_180_days(catalog: Catalog) -> None:
    for event in catalog.events:
        assert START < event.starts_at <= START + timedelta(days=180)
        assert event.starts_at.tzinfo is not None and event.onsale_at.tzinfo is not None
        lead = event.starts_at - event.onsale_at
        assert timedelta(days=6) < lead < timedelta(days=91), event
    days = {(event.starts_at - START).days for event in catalog.events}
    assert len(days) > 150  # spread out, not bunched


def test_some_events_are_on_sale_already_and_some_open_later(catalog: Catalog) -> None:
    on_sale = sum(event.onsale_at < START for event in catalog.events)
    assert 0.1 * len(catalog.events) < on_sale < 0.9 * len(catalog.events)


# --- items ----------------------------------------------------------------------------------------


def test_items_per_event_and_their_prices(catalog: Catalog) -> None:
    events = {event.id: event for event in catalog.events}
    per_event = Counter(item.event_id for item in catalog.items)
    assert set(per_event) == set(events)
    assert min(per_event.values()) >= 3 and max(per_event.values()) <= 12
    for item in catalog.items:
        tiers = {(tier.name, tier.amount, tier.currency) for tier in events[item.event_id].price_tiers}
        assert (item.price_tier, item.price, item.currency) in tiers
        assert item.id.startswith(f"itm-{item.event_id[4:]}-")
        assert item.available == item.capacity
        assert (item.version, item.hlc, item.updated_at) == (1, SEED_HLC, START)


def test_seated_blocks_are_fully_available(catalog: Catalog) -> None:
    seated = [item for item in catalog.items if item.kind == SEATED]
    assert seated
    for item in seated:
        assert item.available_seats == item.seats
        assert item.capacity == len(item.seats)
        assert 8 <= len(item.seats) <= 30
        assert item.seats == tuple(str(number) for number in range(1, len(item.seats) + 1))
        assert item.row is not None and item.section.isdigit()
    blocks = [(item.event_id, item.section, item.row) for item in seated]
    assert len(set(blocks)) == len(blocks)


def test_general_admission_pools(catalog: Catalog) -> None:
    pools = [item for item in catalog.items if item.kind == GENERAL_ADMISSION]
    assert pools
    for item in pools:
        assert item.seats == () and item.available_seats == () and item.row is None
        assert 100 <= item.capacity <= 5_000


def test_hlc_is_passed_through() -> None:
    stamped = build_catalog(5, venues=12, events=20, start=START, hlc="1764106200000-00000-test")
    assert {item.hlc for item in stamped.items} == {"1764106200000-00000-test"}


def test_summary_adds_up(catalog: Catalog) -> None:
    summary = summarize(catalog)
    assert (summary["venues"], summary["events"], summary["items"]) == (300, 3000, len(catalog.items))
    assert summary["seated_items"] + summary["general_admission_items"] == summary["items"]
    assert sum(row["events"] for row in summary["regions"].values()) == 3000
    assert sum(row["capacity"] for row in summary["regions"].values()) == summary["sellable_capacity"]
    assert sum(summary["genres"].values()) == 3000
    assert "JPY" in summary["currencies"] and "EUR" in summary["currencies"]
