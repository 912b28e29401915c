"""The local stack's location database: one test subnet per region, placed at that region's city.

`boxoffice up` cannot ask GeoDNS about real client networks (the packaged 2018
GeoLite2 file knows real ones, but a demo should not depend on where some
university's /24 was in 2018). Instead it writes a small MaxMind-format city
database that places, for every region of ``origin.cities``:

* the IPv4 /24 ``100.64.N.0/24`` and
* the IPv6 /48 ``2001:db8:N::/48``

at the region's city, where N is the region's index in ``REGIONS`` (na-east 0,
na-west 1, sa-east 2, eu-west 3, …). Both come from ranges that route nowhere
public (RFC 6598 shared address space, RFC 3849 documentation prefix), so a
query with ``+subnet=100.64.3.0/24`` is "a client in Paris" without naming
anybody's network. Every region is mapped, not only those with a POP, so a
client in Sydney is steered to the nearest POP that does run.

:func:`client_subnets` is pure; :func:`write_location_database` needs
``mmdb-writer`` (and its ``netaddr``), imported only when it runs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from origin.cities import REGION_BY_ID, REGIONS

IPV4_BASE: Final = ipaddress.IPv4Address("100.64.0.0")  # RFC 6598 shared address space
IPV6_BASE: Final = ipaddress.IPv6Address("2001:db8::")  # RFC 3849 documentation prefix
# What accuracy_radius (km) the records claim: a city, not a street.
ACCURACY_RADIUS_KM: Final = 50


class LocationDatabaseError(RuntimeError):
    """The database could not be written (mmdb-writer missing, or the file not writable)."""


def client_subnet(region: str) -> str:
    """The IPv4 /24 that the local database places in `region`'s city. Raises KeyError for an unknown region."""
    if region not in REGION_BY_ID:
        raise KeyError(f"unknown region {region!r} (known: {', '.join(REGIONS)})")
    index = REGIONS.index(region)
    return f"{IPV4_BASE + index * 256}/24"


def client_subnet_v6(region: str) -> str:
    """The IPv6 /48 that the local database places in `region`'s city."""
    if region not in REGION_BY_ID:
        raise KeyError(f"unknown region {region!r} (known: {', '.join(REGIONS)})")
    index = REGIONS.index(region)
    return f"{IPV6_BASE + (index << 80)}/48"


def client_subnets() -> Mapping[str, tuple[str, str]]:
    """Region → (IPv4 /24, IPv6 /48), for every region of the catalog."""
    return {region: (client_subnet(region), client_subnet_v6(region)) for region in REGIONS}


def city_record(region: str) -> dict[str, Any]:
    """A GeoLite2-City shaped record for `region`'s city (the fields GeoDNS reads, plus names)."""
    details = REGION_BY_ID[region]
    return {
        "city": {"names": {"en": details.name}},
        "location": {"latitude": details.lat, "longitude": details.lon, "accuracy_radius": ACCURACY_RADIUS_KM},
    }


def write_location_database(path: Path) -> Path:
    """Write the database to `path` (atomically: temporary file, then rename) and return `path`.

    Raises LocationDatabaseError when mmdb-writer is not installed or the file cannot be written.
    """
    try:
        from mmdb_writer import MMDBWriter
        from netaddr import IPSet  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:
        raise LocationDatabaseError(
            f"writing the local location database needs mmdb-writer (pip install mmdb-writer): {exc}"
        ) from None
    writer = MMDBWriter(
        ip_version=6,
        database_type="GeoLite2-City",
        languages=["en"],
        description="boxoffice local stack: one test subnet per region",
        ipv4_compatible=True,  # IPv4 networks live in ::/96, as in MaxMind's own files
    )
    for region, (subnet_v4, subnet_v6) in client_subnets().items():
        writer.insert_network(IPSet([subnet_v4, subnet_v6]), city_record(region))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    try:
        writer.to_db_file(str(temporary))
        temporary.replace(path)
    except OSError as exc:
        raise LocationDatabaseError(f"cannot write {path}: {exc}") from exc
    return path
