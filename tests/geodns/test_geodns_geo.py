"""GeoDatabase against real MaxMind DB files built by tests/geodns/geodb.py; ecs_scope."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path

import pytest

from geodns.geo import GeoDatabase, GeoDatabaseError, ecs_scope, location_from_record
from geodns.model import IPNetwork
from tests.geodns.geodb import PLACE_BY_CITY, build_city_database


@pytest.fixture(scope="module")
def city_db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_city_database(
        tmp_path_factory.mktemp("geo") / "city.mmdb",
        extra={
            # Malformed records a hand-made or damaged database might hold.
            "100.67.0.0/24": {"location": {"latitude": "35.0", "longitude": 139.0}},
            "100.67.1.0/24": {"location": {"latitude": 95.0, "longitude": 10.0}},
            "100.67.2.0/24": {"location": {"latitude": True, "longitude": 10.0}},
            "100.67.3.0/24": "not a map",
        },
    )


@pytest.fixture
def db(city_db_path: Path) -> Iterator[GeoDatabase]:
    with GeoDatabase.open(city_db_path) as database:
        yield database


@pytest.mark.parametrize(
    ("address", "city", "network"),
    [
        ("203.0.113.7", "Tokyo", "203.0.113.0/24"),
        ("198.51.100.250", "New York", "198.51.100.0/24"),
        ("192.0.2.1", "London", "192.0.2.0/25"),
        ("100.64.200.9", "Johannesburg", "100.64.0.0/16"),
        ("100.65.0.15", "Singapore", "100.65.0.0/28"),
        ("100.66.15.255", "Frankfurt", "100.66.0.0/20"),
        ("2001:db8:1:ffff::1", "Sydney", "2001:db8:1::/48"),
        ("2001:db8:2::", "Sao Paulo", "2001:db8:2::/48"),
    ],
)
def test_lookup_returns_the_city_and_its_database_network(
    db: GeoDatabase, address: str, city: str, network: str
) -> None:
    place = PLACE_BY_CITY[city]
    location = db.lookup(ip_address(address))
    assert location is not None
    assert (location.lat, location.lon, location.country) == (place.lat, place.lon, place.country)
    assert location.network == ip_network(network)


def test_ipv4_lookups_in_an_ipv6_database_give_ipv4_networks(db: GeoDatabase) -> None:
    assert db.ip_version == 6
    location = db.lookup(ip_address("203.0.113.7"))
    assert location is not None
    assert isinstance(location.network, IPv4Network)


def test_ipv4_mapped_ipv6_address_is_looked_up_as_ipv4(db: GeoDatabase) -> None:
    # What a dual-stack socket reports for an IPv4 client.
    location = db.lookup(ip_address("::ffff:203.0.113.7"))
    assert location is not None
    assert location.country == "JP"
    assert location.network == ip_network("203.0.113.0/24")


def test_ipv4_compatible_ipv6_address_reaches_the_ipv4_subtree(db: GeoDatabase) -> None:
    location = db.lookup(ip_address("::cb00:7107"))  # ::203.0.113.7
    assert location is not None
    assert location.country == "JP"
    assert location.network == IPv6Network("::cb00:7100/120")


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",  # not in the database
        "192.0.2.200",  # record with a country but no location
        "2001:db8:3::1",  # unknown IPv6
        "100.65.0.16",  # just past the Singapore /28
        "100.67.0.1",  # latitude is a string
        "100.67.1.1",  # latitude out of range
        "100.67.2.1",  # latitude is a bool
        "100.67.3.1",  # record is not a map
    ],
)
def test_unknown_or_coordinate_less_addresses_give_none(db: GeoDatabase, address: str) -> None:
    assert db.lookup(ip_address(address)) is None


def test_location_only_record_has_no_country(db: GeoDatabase) -> None:
    location = db.lookup(ip_address("100.64.0.1"))
    assert location is not None
    assert location.country is None


def test_ipv6_address_in_an_ipv4_database_is_unknown(tmp_path: Path) -> None:
    path = build_city_database(tmp_path / "v4.mmdb", ip_version=4)
    with GeoDatabase.open(path) as database:
        assert database.ip_version == 4
        assert database.lookup(ip_address("2001:db8:1::1")) is None
        tokyo = database.lookup(ip_address("203.0.113.1"))
        assert tokyo is not None
        assert tokyo.network == ip_network("203.0.113.0/24")


def test_metadata_is_exposed(db: GeoDatabase) -> None:
    assert db.database_type == "GeoLite2-City"
    assert db.build_epoch > 0


def test_missing_file_raises_geo_database_error(tmp_path: Path) -> None:
    with pytest.raises(GeoDatabaseError, match="does not exist"):
        GeoDatabase.open(tmp_path / "nowhere.mmdb")


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage" * 100, b"\x00" * 4096],
    ids=["empty", "text", "zeros"],
)
def test_corrupt_file_raises_geo_database_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "corrupt.mmdb"
    path.write_bytes(content)
    with pytest.raises(GeoDatabaseError, match="not a MaxMind DB"):
        GeoDatabase.open(path)


def test_truncated_database_raises_geo_database_error(tmp_path: Path, city_db_path: Path) -> None:
    # The metadata sits at the end of the file, so a cut-short download fails at open.
    path = tmp_path / "truncated.mmdb"
    path.write_bytes(city_db_path.read_bytes()[:200])
    with pytest.raises(GeoDatabaseError):
        GeoDatabase.open(path)


def test_directory_raises_geo_database_error(tmp_path: Path) -> None:
    with pytest.raises(GeoDatabaseError):
        GeoDatabase.open(tmp_path)


def test_lookup_after_close_raises_geo_database_error(city_db_path: Path) -> None:
    database = GeoDatabase.open(city_db_path)
    database.close()
    with pytest.raises(GeoDatabaseError, match=r"lookup of 203\.0\.113\.7"):
        database.lookup(ip_address("203.0.113.7"))


def test_location_from_record_accepts_integer_degrees() -> None:
    location = location_from_record({"location": {"latitude": 0, "longitude": -180}}, ip_network("10.0.0.0/8"))
    assert location is not None
    assert (location.lat, location.lon) == (0.0, -180.0)


# ---------------------------------------------------------------- ecs_scope (RFC 7871 §7.2.1)


@pytest.mark.parametrize(
    ("source_prefix", "network", "family_bits", "scope"),
    [
        (24, "203.0.0.0/16", 32, 16),  # answer holds for the whole /16: widen the scope
        (24, "203.0.113.0/24", 32, 24),  # exactly the source
        (24, "100.65.0.0/28", 32, 24),  # narrower record: never claim more than the source had
        (0, "203.0.113.0/24", 32, 0),  # client asked for no subnet: the answer is for everyone
        (32, "203.0.113.0/24", 32, 24),
        (56, "2001:db8:1::/48", 128, 48),
        (40, "2001:db8:1::/48", 128, 40),
        (24, None, 32, 24),  # unknown location: scope is the source
        (56, None, 128, 56),
        (120, "203.0.113.0/24", 128, 120),  # IPv4 network for an IPv4-mapped source: /96+24
        (104, "203.0.113.0/24", 128, 104),
    ],
)
def test_ecs_scope(source_prefix: int, network: str | None, family_bits: int, scope: int) -> None:
    location_network: IPNetwork | None = ip_network(network) if network is not None else None
    assert ecs_scope(source_prefix, location_network, family_bits) == scope


@pytest.mark.parametrize(
    ("source_prefix", "network", "family_bits"),
    [
        (33, None, 32),
        (-1, None, 32),
        (129, None, 128),
        (24, None, 64),
        (24, "2001:db8::/32", 32),
    ],
)
def test_ecs_scope_rejects_impossible_inputs(source_prefix: int, network: str | None, family_bits: int) -> None:
    location_network: IPNetwork | None = ip_network(network) if network is not None else None
    with pytest.raises(ValueError, match=r"family_bits|outside|cannot scope"):
        ecs_scope(source_prefix, location_network, family_bits)
