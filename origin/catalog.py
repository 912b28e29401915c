"""A deterministic demo catalog: venues, events and their sellable items.

``build_catalog(seed, start=...)`` is a pure function of its arguments: every
random choice comes from one ``random.Random(seed)`` drawn in a fixed order, it
reads no clock and touches no files, so the same seed always seeds the same
inventory (the origin, the load generator and the tests can each rebuild it).

How it works, in the order the draws happen:

1. **Venues.** The first pass walks the regions round-robin so even a small
   catalog covers every region; later venues go to cities weighted toward the
   major markets of :mod:`origin.cities`. Each venue gets a kind (club,
   theatre, arena, stadium), a capacity in that kind's real range, a name from
   the kind's patterns and a position a few kilometres from the city centre.
2. **Events.** Each picks a venue (small rooms host more nights than
   stadiums), a genre the venue kind plausibly hosts and the region plausibly
   wants (k-pop in Seoul, cricket in Mumbai, country in Nashville), an artist
   (touring acts come back for several dates), a free night in the next 180
   days at a local show time, an on-sale at 10:00 local 7-90 days before, and
   2-4 price tiers in the country's currency.
3. **Popularity** follows a Zipf law, weight of rank r proportional to
   ``1 / r**0.8``, normalised to sum to 1, with ranks dealt by a shuffle.
4. **Items.** 3-12 per event: general-admission pools sized from the venue,
   and blocks of 8-30 reserved seats in one section and row. The blocks sample
   a venue rather than map every seat, which keeps the default catalog near
   20,000 items while every event still has seats and pools to contend for.

Local times use solar time (UTC offset = longitude / 15, rounded), within an
hour or two of civil time, which is enough for show times that look right.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final

from origin.cities import CITIES, MAJOR_MARKETS, REGIONS, City, Currency, cities_in, currency_of
from origin.model import GENERAL_ADMISSION, SEATED, Event, Item, ItemKind, PriceTier, Venue, format_time

SEED_HLC: Final = "0000000000000-00000-seed"
ZIPF_EXPONENT: Final = 0.8
SCHEDULE_DAYS: Final = 178  # last show day; with local show times this stays within 180 days of start
ONSALE_LOCAL_HOUR: Final = 10  # on-sales open at 10:00 local, as the big ticketing sites do
MAJOR_MARKET_WEIGHT: Final = 4  # a major market gets this many times the venues of another city
TOUR_REPEAT_PROBABILITY: Final = 0.6  # chance an event is another date of an existing act's tour
MAX_ITEMS_PER_EVENT: Final = 12
GA_POOL_MIN: Final = 100  # smaller than a club floor is not worth a separate pool
GA_POOL_MAX: Final = 5_000  # stadium fields are split into several pools rather than one huge one
SEATS_PER_BLOCK_MIN: Final = 8
SEATS_PER_BLOCK_MAX: Final = 30  # a long row; keeps a seated item's document small
_SEAT_LABELS: Final = tuple(str(number) for number in range(1, SEATS_PER_BLOCK_MAX + 1))
_ROWS: Final = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # I and O skipped: they read as 1 and 0 on a ticket


@dataclass(frozen=True, slots=True)
class _VenueKind:
    name: str
    capacity: tuple[int, int]  # the real range for this kind of room
    capacity_step: int
    share: float  # of all venues
    nights: float  # relative number of events it hosts in the schedule
    pools: tuple[int, int]  # general-admission pools per event, min and max
    blocks: tuple[int, int]  # reserved-seat blocks per event
    pool_share: tuple[float, float]  # one pool as a fraction of the venue capacity
    levels: int  # seating tiers: sections 101.., 201.., 301..
    price_usd: tuple[int, int]  # base ticket price, before price tiers and the regional price level
    onsale_lead_days: tuple[int, int]
    show_times: tuple[tuple[int, int], ...]  # local (hour, minute)
    names: tuple[str, ...]
    pool_names: tuple[tuple[str, str, bool], ...]  # (name, section, sold at the top tier)


_KINDS: Final = (
    _VenueKind(
        name="club",
        capacity=(300, 2_000), capacity_step=50, share=0.38, nights=3, pools=(1, 2), blocks=(2, 5),
        pool_share=(0.25, 0.6), levels=1, price_usd=(20, 45), onsale_lead_days=(7, 45),
        show_times=((20, 0), (21, 0), (22, 0), (23, 0)),
        names=("The {adj} Room", "The {adj} Lounge", "{noun} Social Club", "Club {noun}", "The {noun} Cellar",
               "{adj} Warehouse", "The {noun} Ballroom"),
        pool_names=(("General Admission", "GA", False), ("Early Entry", "EARLY", True),
                    ("Mezzanine Standing", "MEZZ", False)),
    ),
    _VenueKind(
        name="theatre",
        capacity=(1_000, 3_000), capacity_step=50, share=0.30, nights=3, pools=(0, 1), blocks=(3, 10),
        pool_share=(0.1, 0.3), levels=2, price_usd=(35, 95), onsale_lead_days=(14, 75),
        show_times=((19, 0), (19, 30), (20, 0)),
        names=("{city} Opera House", "{city} Concert Hall", "The {grand} Hall", "{grand} Theatre", "The {grand}",
               "{city} Playhouse"),
        pool_names=(("Stalls Standing", "STALLS", False),),
    ),
    _VenueKind(
        name="arena",
        capacity=(8_000, 20_000), capacity_step=500, share=0.20, nights=2, pools=(1, 2), blocks=(4, 10),
        pool_share=(0.08, 0.25), levels=3, price_usd=(55, 150), onsale_lead_days=(21, 90),
        show_times=((19, 0), (19, 30), (20, 0)),
        names=("{city} Arena", "{sponsor} Arena", "{city} Coliseum", "{sponsor} Center", "{city} Events Centre"),
        pool_names=(("Floor GA", "FLOOR", False), ("Pit", "PIT", True)),
    ),
    _VenueKind(
        name="stadium",
        capacity=(30_000, 80_000), capacity_step=1_000, share=0.12, nights=1, pools=(1, 3), blocks=(5, 9),
        pool_share=(0.03, 0.08), levels=3, price_usd=(60, 170), onsale_lead_days=(30, 90),
        show_times=((15, 0), (17, 30), (19, 0), (20, 0)),
        names=("{city} Stadium", "{sponsor} Stadium", "{city} Olympic Stadium", "{sponsor} Field", "{sponsor} Park"),
        pool_names=(("Pitch Standing", "PITCH", False), ("Golden Circle", "GOLD", True), ("Lawn", "LAWN", False)),
    ),
)  # fmt: skip

# genre -> (venue kinds, weight where not listed, {region: weight}, artist naming style)
_GENRES: Final[dict[str, tuple[str, float, dict[str, float], str]]] = {
    "rock": ("club theatre arena stadium", 10, {}, "band"),
    "pop": ("club theatre arena stadium", 10, {}, "solo"),
    "hip-hop": ("club theatre arena stadium", 7, {"na-east": 10, "na-west": 10}, "rapper"),
    "electronic": ("club arena stadium", 7, {"eu-central": 12, "eu-west": 10}, "dj"),
    "indie": ("club theatre", 6, {}, "band"),
    "metal": ("club arena", 3, {"eu-central": 6}, "band"),
    "r&b": ("theatre arena", 4, {}, "solo"),
    "classical": ("theatre", 5, {"eu-central": 9}, "orchestra"),
    "jazz": ("club theatre", 4, {}, "combo"),
    "comedy": ("club theatre arena", 6, {}, "solo"),
    "musical": ("theatre", 4, {"na-east": 8, "eu-west": 8}, "show"),
    "country": ("theatre arena stadium", 0.3, {"na-east": 7, "na-west": 5, "oc-east": 2}, "solo"),
    "latin": ("club theatre arena stadium", 1, {"sa-east": 12, "na-west": 6, "eu-west": 3}, "latin"),
    "k-pop": ("theatre arena stadium", 0.5, {"ap-northeast": 15, "ap-southeast": 6}, "idol"),
    "football": ("stadium", 25, {"na-east": 3, "na-west": 5}, "team"),
    "basketball": ("arena", 1, {"na-east": 20, "na-west": 15, "eu-central": 3, "ap-southeast": 3}, "team"),
    "cricket": ("stadium", 0, {"ap-south": 40, "oc-east": 15, "eu-west": 4, "af-south": 8}, "team"),
}

_ADJECTIVES: Final = ("Electric", "Velvet", "Golden", "Silver", "Crimson", "Midnight", "Neon", "Paper", "Hollow",
    "Wild", "Silent", "Broken", "Northern", "Burning", "Lucky", "Violet", "Atomic", "Lunar", "Rusty", "Savage",
    "Gentle", "Frozen", "Cosmic", "Wandering", "Restless", "Glass", "Iron", "Static", "Sunday", "Analog", "Radiant",
    "Coastal", "Secret", "Scarlet", "Amber")  # fmt: skip
_NOUNS: Final = ("Tiger", "Arrow", "Comet", "Raven", "Lantern", "Rocket", "Anchor", "Falcon", "Harbor", "Signal",
    "Mirror", "Engine", "Garden", "Canyon", "Pilot", "Stranger", "Drifter", "Dreamer", "Ghost", "Satellite", "Rebel",
    "Horse", "Sparrow", "Tide", "Saint", "King", "Machine", "Monarch", "Giant", "Orbit")  # fmt: skip
_FIRST_NAMES: Final = ("Maya", "Leo", "Ava", "Noah", "Zoe", "Eli", "Nina", "Oscar", "Ruby", "Felix", "Iris", "Jonah",
    "Clara", "Milo", "Luna", "Theo", "Sasha", "Owen", "Nora", "Kai", "Elena", "Marcus", "Priya", "Arjun", "Yuki",
    "Hana", "Jae", "Amara", "Tariq", "Ingrid", "Lars", "Chloe", "Dante", "Sofia", "Aisha", "Kofi", "Freya")  # fmt: skip
_LAST_NAMES: Final = ("Hart", "Vale", "Monroe", "Reyes", "Blake", "Sato", "Kim", "Okafor", "Lindqvist", "Moreau",
    "Rossi", "Novak", "Chen", "Park", "Silva", "Kapoor", "Hayes", "Wilde", "Quinn", "Marsh", "Stone", "Rivers", "Fox",
    "Bell", "Cross", "Lane", "Woods", "Frost", "Knight", "Haddad", "Mensah", "Brandt", "Costa", "Ito", "Tanaka",
    "Laurent", "Fischer")  # fmt: skip
_SPANISH_FIRST: Final = ("Carlos", "Lucia", "Diego", "Valentina", "Javier", "Camila", "Mateo", "Isabela", "Rafael",
    "Daniela", "Andres", "Paloma", "Ximena", "Emilio", "Renata")  # fmt: skip
_SPANISH_LAST: Final = ("Ortega", "Vargas", "Mendoza", "Castillo", "Rios", "Herrera", "Salazar", "Fuentes", "Morales",
    "Aguilar", "Cruz", "Navarro", "Delgado", "Romero")  # fmt: skip
_SPANISH_BANDS: Final = ("Lobos", "Tigres", "Cometas", "Halcones", "Reyes", "Diablos", "Rayos", "Caballeros", "Santos")
_IDOL_WORDS: Final = ("NOVA", "LUMI", "STARLIGHT", "AURORA", "BLAZE", "ECLIPSE", "PRISM", "VIVID", "ORBIT", "ZENITH",
    "HALO", "MIRAGE", "ONYX", "SOLARIS")  # fmt: skip
_RAP_PREFIXES: Final = ("Lil", "Young", "Big", "MC", "Yung", "Kid", "King", "Queen")
_COMPOSERS: Final = ("Beethoven", "Mozart", "Brahms", "Mahler", "Tchaikovsky", "Dvorak", "Sibelius", "Rachmaninoff",
    "Debussy", "Ravel", "Bach")  # fmt: skip
_GRAND: Final = ("Royal", "Grand", "Majestic", "Palace", "Orpheum", "Apollo", "Lyric", "Empire", "Regent", "Alhambra",
    "Paramount", "Capitol", "Civic")  # fmt: skip
_SPONSORS: Final = ("Summit", "Pinnacle", "Horizon", "Meridian", "Keystone", "Atlas", "Vertex", "Beacon", "Zenith",
    "Crescent", "Sterling", "Northstar")  # fmt: skip

_TIER_NAMES: Final = {
    2: ("Standard", "VIP"), 3: ("Standard", "Premium", "VIP"), 4: ("Standard", "Preferred", "Premium", "VIP"),
}  # fmt: skip
_TIER_MULTIPLIER: Final = {"Standard": 1.0, "Preferred": 1.4, "Premium": 2.0, "VIP": 3.5}
# What a ticket costs relative to North America, roughly what promoters charge.
_PRICE_LEVEL: Final = {"sa-east": 0.5, "af-south": 0.4, "ap-south": 0.3, "ap-southeast": 0.6, "eu-west": 0.9,
                       "eu-central": 0.85, "ap-northeast": 0.9}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Catalog:
    venues: tuple[Venue, ...]
    events: tuple[Event, ...]
    items: tuple[Item, ...]


def build_catalog(seed: int, *, venues: int = 300, events: int = 3000, start: datetime, hlc: str = SEED_HLC) -> Catalog:
    """Generate the demo catalog for ``seed``.

    Args:
        seed: the only source of randomness; equal seeds give equal catalogs.
        venues: how many venues (at least 1; the first ``len(REGIONS)`` cover every region).
        events: how many events; shows fall in the 180 days after ``start``.
        start: a timezone-aware "now" of the catalog; items are ``updated_at`` it.
        hlc: the HLC stamp every item starts with.

    Raises:
        ValueError: a count is out of range or ``start`` has no timezone.
    """
    if venues < 1 or events < 0:
        raise ValueError(f"need venues >= 1 and events >= 0, got venues={venues} events={events}")
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    rng = random.Random(seed)
    venue_rows = _build_venues(rng, venues)
    event_rows, items = _build_events(rng, venue_rows, events, start.astimezone(UTC), hlc)
    return Catalog(venues=tuple(venue for venue, _ in venue_rows), events=event_rows, items=items)


def _build_venues(rng: random.Random, count: int) -> list[tuple[Venue, _VenueKind]]:
    by_region = [list(cities_in(region)) for region in REGIONS]
    for cities in by_region:
        rng.shuffle(cities)
    every_city_once = [cities[i] for i in range(max(map(len, by_region))) for cities in by_region if i < len(cities)]
    weights = [MAJOR_MARKET_WEIGHT if city.name in MAJOR_MARKETS else 1 for city in CITIES]
    extra = rng.choices(CITIES, weights=weights, k=max(0, count - len(every_city_once)))
    taken: set[str] = set()
    rows: list[tuple[Venue, _VenueKind]] = []
    for number, city in enumerate((every_city_once + extra)[:count], start=1):
        kind = rng.choices(_KINDS, weights=[kind.share for kind in _KINDS])[0]
        step = kind.capacity_step
        capacity = rng.randint(kind.capacity[0] // step, kind.capacity[1] // step) * step
        name = _unique(rng, partial(_venue_name, rng, kind, city), taken)
        lat = round(city.lat + rng.uniform(-0.03, 0.03), 4)  # within ~3 km of the centre
        lon = round(city.lon + rng.uniform(-0.03, 0.03), 4)
        rows.append((Venue(f"ven-{number:04d}", name, city.name, city.country, city.region, lat, lon, capacity), kind))
    return rows


def _venue_name(rng: random.Random, kind: _VenueKind, city: City) -> str:
    return rng.choice(kind.names).format(
        city=city.name, adj=rng.choice(_ADJECTIVES), noun=rng.choice(_NOUNS),
        grand=rng.choice(_GRAND), sponsor=rng.choice(_SPONSORS),
    )  # fmt: skip


def _unique(rng: random.Random, make: Callable[[], str], taken: set[str]) -> str:
    """A name from ``make`` that is not taken yet, which then is."""
    name = make()
    for _ in range(30):
        if name not in taken:
            break
        name = make()
    while name in taken:  # a huge catalog ran out of combinations: tell the repeats apart
        name = f"{name} {rng.choice(_LAST_NAMES)}"
    taken.add(name)
    return name


def _build_events(
    rng: random.Random, venue_rows: Sequence[tuple[Venue, _VenueKind]], count: int, start: datetime, hlc: str
) -> tuple[tuple[Event, ...], tuple[Item, ...]]:
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    night_weights = [kind.nights for _, kind in venue_rows]
    genre_weights: dict[tuple[str, str], list[float]] = {}
    tours: dict[str, list[tuple[str, str]]] = {genre: [] for genre in _GENRES}
    artists: set[str] = set()
    teams: dict[tuple[str, str], str] = {}
    booked: set[tuple[str, int]] = set()
    ranks = list(range(1, count + 1))
    rng.shuffle(ranks)
    zipf_total = math.fsum(rank**-ZIPF_EXPONENT for rank in ranks)
    events: list[Event] = []
    items: list[Item] = []
    for number, rank in enumerate(ranks, start=1):
        venue, kind = rng.choices(venue_rows, weights=night_weights)[0]
        key = (kind.name, venue.region)
        if key not in genre_weights:
            genre_weights[key] = [
                by_region.get(venue.region, weight) if kind.name in kinds.split() else 0.0
                for kinds, weight, by_region, _ in _GENRES.values()
            ]
        genre = rng.choices(list(_GENRES), weights=genre_weights[key])[0]
        style = _GENRES[genre][3]
        if style == "team":
            artist = _team(rng, genre, venue.city, teams)
            rivals = [city for city in cities_in(venue.region) if city.name != venue.city]
            domestic = [city for city in rivals if city.country == venue.country]
            name = f"{artist} vs {_team(rng, genre, rng.choice(domestic or rivals).name, teams)}"  # a league match
        elif tours[genre] and rng.random() < TOUR_REPEAT_PROBABILITY:
            artist, name = rng.choice(tours[genre])
        else:
            artist = _unique(rng, partial(_artist_name, rng, style), artists)
            name = _show_title(rng, artist, genre, style)
            tours[genre].append((artist, name))
        day = rng.randint(1, SCHEDULE_DAYS)
        for _ in range(10):  # one show per venue per night, as far as the calendar allows
            if (venue.id, day) not in booked:
                break
            day = rng.randint(1, SCHEDULE_DAYS)
        booked.add((venue.id, day))
        hour, minute = rng.choice(kind.show_times)
        utc_offset = timedelta(hours=round(venue.lon / 15))
        local_show = midnight + timedelta(days=day, hours=hour, minutes=minute)
        local_onsale = local_show.replace(hour=ONSALE_LOCAL_HOUR, minute=0)
        local_onsale -= timedelta(days=rng.randint(*kind.onsale_lead_days))
        event = Event(
            id=f"evt-{number:06d}",
            name=name,
            artist=artist,
            genre=genre,
            venue_id=venue.id,
            region=venue.region,
            starts_at=local_show - utc_offset,
            onsale_at=local_onsale - utc_offset,
            popularity=rank**-ZIPF_EXPONENT / zipf_total,
            price_tiers=_price_tiers(rng, kind, venue),
        )
        events.append(event)
        items.extend(_items(rng, event, kind, venue, hlc, start))
    return tuple(events), tuple(items)


def _team(rng: random.Random, sport: str, city: str, teams: dict[tuple[str, str], str]) -> str:
    """One club per sport and city, named the first time the city plays."""
    if (sport, city) not in teams:
        if sport == "football":
            pattern = rng.choice(("{city} FC", "{city} United", "{city} City", "Real {city}", "Sporting {city}"))
        else:
            pattern = "{city} " + rng.choice(_NOUNS) + "s"
        teams[sport, city] = pattern.format(city=city)
    return teams[sport, city]


def _artist_name(rng: random.Random, style: str) -> str:
    adjective, noun = rng.choice(_ADJECTIVES), rng.choice(_NOUNS)
    person = f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"
    candidates = {
        "band": (f"The {adjective} {noun}s", f"{adjective} {noun}", f"{noun} & the {adjective}s"),
        "rapper": (f"{rng.choice(_RAP_PREFIXES)} {adjective}", f"{rng.choice(_RAP_PREFIXES)} {noun}"),
        "dj": (f"DJ {noun}", f"{adjective} {noun}", f"{noun.upper()}{rng.randint(2, 99)}"),
        "orchestra": (f"{rng.choice(CITIES).name} Philharmonic", f"{rng.choice(CITIES).name} Symphony Orchestra",
                      f"{person}, piano"),
        "combo": (f"{person} Trio", f"{person} Quartet", f"{person} Quintet"),
        "show": (f"The {adjective} {noun}", f"{noun}!", f"{adjective} Heart"),
        "latin": (f"{rng.choice(_SPANISH_FIRST)} {rng.choice(_SPANISH_LAST)}", f"Los {rng.choice(_SPANISH_BANDS)}"),
        "idol": tuple(rng.choice(_IDOL_WORDS) + suffix for suffix in ("", "9", "X", "IZ", "-ON", " 7")),
    }  # fmt: skip
    return rng.choice(candidates.get(style, (person,)))


def _show_title(rng: random.Random, artist: str, genre: str, style: str) -> str:
    adjective, noun = rng.choice(_ADJECTIVES), rng.choice(_NOUNS)
    if style == "orchestra":
        return f"{artist} plays {rng.choice(_COMPOSERS)}"
    if style == "show":
        return f"{artist}: The Musical"
    if genre == "comedy":
        return f"{artist}: {adjective} {noun}"
    return f"{artist}: The {adjective} {noun} Tour"


def _price_tiers(rng: random.Random, kind: _VenueKind, venue: Venue) -> tuple[PriceTier, ...]:
    currency = currency_of(venue.country)
    base_usd = rng.uniform(*kind.price_usd) * _PRICE_LEVEL.get(venue.region, 1.0)
    names = _TIER_NAMES[rng.randint(2, 4)]
    return tuple(
        PriceTier(name, _ticket_price(base_usd * _TIER_MULTIPLIER[name], currency), currency.code) for name in names
    )


def _ticket_price(usd: float, currency: Currency) -> int:
    """A price a box office would print, in minor units: two significant digits (59.50 where cents are used)."""
    major = usd * currency.per_usd
    step = 10.0 ** (math.floor(math.log10(major)) - 1)
    minor_per_major = int(10**currency.minor_digits)
    minor = round(round(major / step) * step * minor_per_major)
    if currency.per_usd < 5 and step >= 1:  # the 59.50 habit of dollar, euro and pound markets
        minor -= minor_per_major // 2
    return minor


def _items(rng: random.Random, event: Event, kind: _VenueKind, venue: Venue, hlc: str, start: datetime) -> list[Item]:
    if event.genre in ("classical", "musical", "basketball", "cricket"):
        pools = []  # seated-only events
    elif event.genre == "football":
        pools = [("Standing Terrace", "TERRACE", False)]
    else:
        pools = rng.sample(kind.pool_names, min(rng.randint(*kind.pools), len(kind.pool_names)))
    block_count = max(3 - len(pools), min(rng.randint(*kind.blocks), MAX_ITEMS_PER_EVENT - len(pools)))
    tiers = event.price_tiers
    items: list[Item] = []

    def add(name: str, section: str, row: str | None, seats: tuple[str, ...], capacity: int, tier: PriceTier) -> None:
        kind_name: ItemKind = SEATED if seats else GENERAL_ADMISSION
        items.append(Item(
            id=f"itm-{event.id[4:]}-{len(items) + 1:02d}", event_id=event.id, kind=kind_name, name=name,
            section=section, row=row, seats=seats, capacity=capacity, price_tier=tier.name, price=tier.amount,
            currency=tier.currency, available=capacity, available_seats=seats, version=1, hlc=hlc,
            updated_at=start,
        ))  # fmt: skip

    for name, section, top_tier in pools:
        capacity = round(venue.capacity * rng.uniform(*kind.pool_share) / 50) * 50
        add(name, section, None, (), min(GA_POOL_MAX, max(GA_POOL_MIN, capacity)), tiers[-1] if top_tier else tiers[0])
    blocks: set[tuple[str, str]] = set()
    while len(blocks) < block_count:
        level = rng.randint(1, kind.levels)
        section, row = f"{level}{rng.randint(1, 24):02d}", rng.choice(_ROWS)
        if (section, row) in blocks:
            continue
        blocks.add((section, row))
        seats = _SEAT_LABELS[: rng.randint(SEATS_PER_BLOCK_MIN, SEATS_PER_BLOCK_MAX)]
        # 100s sell the top tier, the highest level the cheapest, the ones between spread over the rest
        tier = tiers[round((kind.levels - level) / max(1, kind.levels - 1) * (len(tiers) - 1))]
        add(f"Section {section}, Row {row}", section, row, seats, len(seats), tier)
    return items


def summarize(catalog: Catalog) -> dict[str, Any]:
    """Counts for a human: per region, per genre, capacities and the date span."""
    counts = {region: {"venues": 0, "events": 0, "items": 0, "capacity": 0} for region in REGIONS}
    event_region = {event.id: event.region for event in catalog.events}
    for venue in catalog.venues:
        counts[venue.region]["venues"] += 1
    for event in catalog.events:
        counts[event.region]["events"] += 1
    for item in catalog.items:
        counts[event_region[item.event_id]]["items"] += 1
        counts[event_region[item.event_id]]["capacity"] += item.capacity
    starts = sorted(event.starts_at for event in catalog.events)
    onsales = sorted(event.onsale_at for event in catalog.events)
    seated = [item for item in catalog.items if item.kind == SEATED]
    return {
        "venues": len(catalog.venues),
        "events": len(catalog.events),
        "items": len(catalog.items),
        "seated_items": len(seated),
        "general_admission_items": len(catalog.items) - len(seated),
        "seats": sum(item.capacity for item in seated),
        "sellable_capacity": sum(item.capacity for item in catalog.items),
        "venue_capacity": sum(venue.capacity for venue in catalog.venues),
        "shows": [format_time(starts[0]), format_time(starts[-1])] if starts else None,
        "onsales": [format_time(onsales[0]), format_time(onsales[-1])] if onsales else None,
        "regions": {region: row for region, row in counts.items() if row["venues"]},
        "genres": dict(Counter(event.genre for event in catalog.events).most_common()),
        "currencies": sorted({tier.currency for event in catalog.events for tier in event.price_tiers}),
    }
