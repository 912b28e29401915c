"""Realism check: the real GeoLite2-City database (2018, shipped by maxminddb-geolite2) steers sensibly."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from geodns.geo import PACKAGED_GEOLITE2, GeoDatabase
from geodns.model import Pop, PopHealth
from geodns.steering import choose_pops

POPS = [
    Pop("us-east", (ipaddress.ip_address("127.0.0.11"),), 40.71, -74.01, 1000),
    Pop("us-west", (ipaddress.ip_address("127.0.0.12"),), 37.77, -122.42, 1000),
    Pop("eu-west", (ipaddress.ip_address("127.0.0.13"),), 52.37, 4.90, 1000),
    Pop("ap-northeast", (ipaddress.ip_address("127.0.0.14"),), 35.68, 139.69, 1000),
    Pop("oc-east", (ipaddress.ip_address("127.0.0.15"),), -33.87, 151.21, 1000),
]
HEALTHY = {pop.id: PopHealth(True) for pop in POPS}


@pytest.fixture(scope="module")
def geolite2() -> Iterator[GeoDatabase]:
    database = GeoDatabase.open(PACKAGED_GEOLITE2)
    yield database
    database.close()


@pytest.mark.parametrize(
    ("address", "country", "nearest"),
    [
        ("202.12.27.33", "JP", "ap-northeast"),  # m.root-servers.net, WIDE, Tokyo
        ("193.0.14.129", "NL", "eu-west"),  # k.root-servers.net, RIPE NCC, Amsterdam
        ("1.1.1.1", "AU", "oc-east"),  # APNIC research prefix
        ("2001:4860:4860::8888", "US", "us-west"),  # Google, Mountain View in 2018 data
    ],
)
def test_well_known_networks_steer_to_the_nearest_pop(
    geolite2: GeoDatabase, address: str, country: str, nearest: str
) -> None:
    location = geolite2.lookup(ipaddress.ip_address(address))
    assert location is not None
    assert location.country == country
    assert ipaddress.ip_address(address) in location.network
    choice = choose_pops(location, POPS, HEALTHY, count=1, default_pool=(), client_key=0)
    assert [pop.id for pop in choice.pops] == [nearest]


def test_private_addresses_have_no_location(geolite2: GeoDatabase) -> None:
    assert geolite2.lookup(ipaddress.ip_address("127.0.0.1")) is None
    assert geolite2.lookup(ipaddress.ip_address("10.1.2.3")) is None
