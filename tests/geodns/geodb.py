"""Build small MaxMind-format city databases for the GeoDNS tests.

Real files in the real format, written with ``mmdb-writer`` and read back by
``maxminddb`` exactly as a GeoLite2-City download would be. Documentation
address ranges (RFC 5737, RFC 3849) and shared space (RFC 6598) stand in for
client networks, so nothing here points at a real network's location.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

from origin.cities import REGION_BY_ID


@dataclass(frozen=True, slots=True)
class Place:
    network: str
    city: str
    lat: float | None  # None: the record has no location at all
    lon: float | None
    country: str | None  # None: the record has no country


# Region centres from origin/cities.py where a city is a hub, so steering tests
# can say "this client sits on that POP".
_TOKYO = REGION_BY_ID["ap-northeast"]
_SYDNEY = REGION_BY_ID["oc-east"]
_SAO_PAULO = REGION_BY_ID["sa-east"]
_JOHANNESBURG = REGION_BY_ID["af-south"]
_SINGAPORE = REGION_BY_ID["ap-southeast"]
_FRANKFURT = REGION_BY_ID["eu-central"]

PLACES: tuple[Place, ...] = (
    Place("203.0.113.0/24", "Tokyo", _TOKYO.lat, _TOKYO.lon, "JP"),
    Place("198.51.100.0/24", "New York", 40.71, -74.01, "US"),
    Place("192.0.2.0/25", "London", 51.51, -0.13, "GB"),
    Place("192.0.2.128/25", "(country only)", None, None, "GB"),
    Place("100.64.0.0/16", "Johannesburg", _JOHANNESBURG.lat, _JOHANNESBURG.lon, None),  # location only
    Place("100.65.0.0/28", "Singapore", _SINGAPORE.lat, _SINGAPORE.lon, "SG"),  # narrower than a /24
    Place("100.66.0.0/20", "Frankfurt", _FRANKFURT.lat, _FRANKFURT.lon, "DE"),
    Place("2001:db8:1::/48", "Sydney", _SYDNEY.lat, _SYDNEY.lon, "AU"),
    Place("2001:db8:2::/48", "Sao Paulo", _SAO_PAULO.lat, _SAO_PAULO.lon, "BR"),
)

PLACE_BY_CITY: dict[str, Place] = {place.city: place for place in PLACES}


def city_record(place: Place) -> dict[str, Any]:
    """A GeoLite2-City shaped record (the fields GeoDNS reads, plus a name)."""
    record: dict[str, Any] = {"city": {"names": {"en": place.city}}}
    if place.lat is not None and place.lon is not None:
        # accuracy_radius is a uint16 in GeoLite2; it must not confuse the reader.
        record["location"] = {"latitude": place.lat, "longitude": place.lon, "accuracy_radius": 50}
    if place.country is not None:
        record["country"] = {"iso_code": place.country}
    return record


def build_city_database(
    path: Path, places: tuple[Place, ...] = PLACES, *, ip_version: int = 6, extra: dict[str, Any] | None = None
) -> Path:
    """Write a city database to `path` and return it.

    `ip_version` 6 (default) stores IPv4 networks in the ::/96 subtree, as
    MaxMind's own databases do, so IPv4 lookups work in it. IPv6 networks are
    skipped in an `ip_version` 4 database. `extra` maps more networks to raw
    records (for malformed-record tests).
    """
    writer = MMDBWriter(
        ip_version=ip_version,
        database_type="GeoLite2-City",
        languages=["en"],
        description="boxoffice GeoDNS test cities",
        ipv4_compatible=ip_version == 6,
    )
    for place in places:
        if ip_version == 4 and ":" in place.network:
            continue
        writer.insert_network(IPSet([place.network]), city_record(place))
    for network, record in (extra or {}).items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path
