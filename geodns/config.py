"""The GeoDNS zone file: zones, POPs and pools, parsed and validated (pure).

The server's TOML config file holds its settings in ``[geodns]`` (see
``geodns.settings``) and the data it serves in three more tables::

    [zones."boxoffice.test"]
    ttl = 300                                   # default TTL of static records
    soa = { mname = "ns1", rname = "hostmaster", serial = 1, refresh = 3600,
            retry = 600, expire = 86400, minimum = 60 }
    ns = ["ns1"]
    records = [ { name = "ns1", type = "A", value = "127.0.0.1" },
                { name = "@", type = "TXT", value = "\\"boxoffice\\"" } ]
    geo = { www = "edge" }                      # steered name -> pool

    [pools.edge]
    pops = ["eu-west", "us-east"]               # candidates (omit: every POP)
    default = ["eu-west"]                       # when the client's location is unknown

    [pops.eu-west]
    addresses = ["127.0.0.2", "::1"]
    lat = 53.35
    lon = -6.26
    capacity = 1000
    weight = 1.0
    health_url = "http://127.0.0.2:8080/_edge/health"

Names are relative to their zone unless they end with a dot; ``@`` is the
apex. Every error names the offending key, e.g.
``zones."boxoffice.test".records[2].type: unknown type 'AAA'``.
"""

from __future__ import annotations

import ipaddress
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from geodns.model import IPAddress, Pop

STATIC_TYPES: Final = frozenset({"A", "AAAA", "CNAME", "TXT", "MX", "NS"})
MAX_TTL: Final = 7 * 24 * 3600  # RFC 8767 suggests capping at 7 days
MAX_POP_ADDRESSES: Final = 16  # more than any answer needs; keeps records small
POP_ID_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


class ConfigError(ValueError):
    """The zone configuration is wrong; the message names the key."""


@dataclass(frozen=True, slots=True)
class Soa:
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


@dataclass(frozen=True, slots=True)
class StaticRecord:
    name: str  # absolute, lower-case, trailing dot
    rtype: str
    ttl: int
    value: str  # presentation format, as in a zone file


@dataclass(frozen=True, slots=True)
class Zone:
    origin: str  # absolute, lower-case, trailing dot
    ttl: int
    soa: Soa
    ns: tuple[str, ...]
    records: tuple[StaticRecord, ...]
    geo: Mapping[str, str]  # absolute name -> pool id


@dataclass(frozen=True, slots=True)
class PoolConfig:
    id: str
    pops: tuple[str, ...] | None  # None: every registered POP
    default: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ZoneConfig:
    zones: tuple[Zone, ...]
    pools: Mapping[str, PoolConfig]
    pops: Mapping[str, Pop]


def load_zone_config(path: Path) -> ZoneConfig:
    """Read and validate the zone data of a config file. Raises ConfigError."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_zone_config(document)


def parse_zone_config(document: Mapping[str, Any]) -> ZoneConfig:
    pops = {pop_id: parse_pop(pop_id, table, f"pops.{pop_id}") for pop_id, table in _table(document, "pops").items()}
    pools = {}
    for pool_id, table in _table(document, "pools").items():
        pools[pool_id] = _pool(pool_id, _mapping(table, f"pools.{pool_id}"), pops)
    zones = tuple(
        _zone(name, _mapping(table, f'zones."{name}"'), pools) for name, table in _table(document, "zones").items()
    )
    if not zones:
        raise ConfigError("zones: at least one zone is required")
    return ZoneConfig(zones, pools, pops)


def parse_pop(pop_id: str, table: Mapping[str, Any], where: str) -> Pop:
    """Validate one POP (also used by the admin API for PUT bodies)."""
    table = _mapping(table, where)
    if not pop_id or len(pop_id) > 63 or not set(pop_id) <= POP_ID_CHARS:
        raise ConfigError(f"{where}: POP ids are 1-63 characters of a-z, 0-9, '-' and '_'")
    _only(table, {"addresses", "lat", "lon", "capacity", "weight", "health_url", "drained"}, where)
    raw_addresses = table.get("addresses")
    if not isinstance(raw_addresses, list) or not 0 < len(raw_addresses) <= MAX_POP_ADDRESSES:
        raise ConfigError(f"{where}.addresses: a list of 1 to {MAX_POP_ADDRESSES} IP addresses")
    addresses: list[IPAddress] = []
    for index, raw in enumerate(raw_addresses):
        try:
            addresses.append(ipaddress.ip_address(raw))
        except ValueError:
            raise ConfigError(f"{where}.addresses[{index}]: {raw!r} is not an IP address") from None
    lat = _number(table, "lat", where, -90, 90)
    lon = _number(table, "lon", where, -180, 180)
    capacity = _number(table, "capacity", where, 0, math.inf, exclusive_low=True)
    weight = _number(table, "weight", where, 0, math.inf, exclusive_low=True, default=1.0)
    health_url = table.get("health_url")
    if health_url is not None and (
        not isinstance(health_url, str) or not health_url.startswith(("http://", "https://"))
    ):
        raise ConfigError(f"{where}.health_url: an http:// or https:// URL")
    drained = table.get("drained", False)
    if not isinstance(drained, bool):
        raise ConfigError(f"{where}.drained: true or false")
    return Pop(pop_id, tuple(addresses), lat, lon, capacity, weight, health_url, drained)


def _pool(pool_id: str, table: Mapping[str, Any], pops: Mapping[str, Pop]) -> PoolConfig:
    where = f"pools.{pool_id}"
    _only(table, {"pops", "default"}, where)
    members = None if "pops" not in table else _pop_list(table["pops"], f"{where}.pops", pops)
    default = _pop_list(table.get("default", []), f"{where}.default", pops)
    return PoolConfig(pool_id, members, default)


def _pop_list(raw: Any, where: str, pops: Mapping[str, Pop]) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise ConfigError(f"{where}: a list of POP ids")
    for pop_id in raw:
        if pop_id not in pops:
            raise ConfigError(f"{where}: no POP {pop_id!r} (declare it as [pops.{pop_id}])")
    return tuple(raw)


def _zone(name: str, table: Mapping[str, Any], pools: Mapping[str, PoolConfig]) -> Zone:
    where = f'zones."{name}"'
    _only(table, {"ttl", "soa", "ns", "records", "geo"}, where)
    origin = _absolute(name, ".", where)
    ttl = int(_number(table, "ttl", where, 0, MAX_TTL, default=300))
    soa_table = _mapping(table.get("soa"), f"{where}.soa")
    soa_fields = ("serial", "refresh", "retry", "expire", "minimum")
    _only(soa_table, {"mname", "rname", *soa_fields}, f"{where}.soa")
    numbers = [int(_number(soa_table, key, f"{where}.soa", 0, 2**32 - 1)) for key in soa_fields]
    soa = Soa(
        _absolute(_text(soa_table, "mname", f"{where}.soa"), origin, f"{where}.soa.mname"),
        _absolute(_text(soa_table, "rname", f"{where}.soa"), origin, f"{where}.soa.rname"),
        *numbers,
    )
    raw_ns = table.get("ns")
    if not isinstance(raw_ns, list) or not raw_ns or not all(isinstance(ns, str) for ns in raw_ns):
        raise ConfigError(f"{where}.ns: a non-empty list of name server names")
    ns = tuple(_absolute(value, origin, f"{where}.ns") for value in raw_ns)
    records = []
    raw_records = table.get("records", [])
    if not isinstance(raw_records, list):
        raise ConfigError(f"{where}.records: a list of {{name, type, value, ttl?}} tables")
    for index, raw in enumerate(raw_records):
        records.append(_record(_mapping(raw, f"{where}.records[{index}]"), origin, ttl, f"{where}.records[{index}]"))
    geo = {}
    for geo_name, pool_id in _mapping(table.get("geo", {}), f"{where}.geo").items():
        absolute = _absolute(geo_name, origin, f"{where}.geo")
        if pool_id not in pools:
            raise ConfigError(f"{where}.geo.{geo_name}: no pool {pool_id!r} (declare it as [pools.{pool_id}])")
        if any(record.name == absolute for record in records):
            raise ConfigError(f"{where}.geo.{geo_name}: the name also has static records")
        geo[absolute] = pool_id
    cname_owners = {record.name for record in records if record.rtype == "CNAME"}
    for record in records:
        if record.name in cname_owners and record.rtype != "CNAME":
            raise ConfigError(f"{where}: {record.name} has a CNAME and other records (RFC 1034 section 3.6.2)")
    return Zone(origin, ttl, soa, ns, tuple(records), geo)


def _record(table: Mapping[str, Any], origin: str, default_ttl: int, where: str) -> StaticRecord:
    _only(table, {"name", "type", "value", "ttl"}, where)
    rtype = _text(table, "type", where).upper()
    if rtype not in STATIC_TYPES:
        raise ConfigError(f"{where}.type: unknown type {rtype!r} (use one of {', '.join(sorted(STATIC_TYPES))})")
    value = _text(table, "value", where)
    if rtype == "A" and not _is_ip(value, 4):
        raise ConfigError(f"{where}.value: {value!r} is not an IPv4 address")
    if rtype == "AAAA" and not _is_ip(value, 6):
        raise ConfigError(f"{where}.value: {value!r} is not an IPv6 address")
    if rtype in ("CNAME", "NS"):
        value = _absolute(value, origin, f"{where}.value")
    if rtype == "MX":
        preference, _, exchange = value.partition(" ")
        if not preference.isdigit() or not exchange.strip():
            raise ConfigError(f"{where}.value: MX is 'PREFERENCE NAME', got {value!r}")
        value = f"{preference} {_absolute(exchange.strip(), origin, where + '.value')}"
    if rtype == "TXT" and not value.startswith('"'):
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    ttl = int(_number(table, "ttl", where, 0, MAX_TTL, default=default_ttl))
    return StaticRecord(_absolute(_text(table, "name", where), origin, f"{where}.name"), rtype, ttl, value)


def _absolute(name: str, origin: str, where: str) -> str:
    name = name.strip().lower()
    if name == "@":
        return origin
    if not name:
        raise ConfigError(f"{where}: empty name")
    absolute = name if name.endswith(".") else (f"{name}.{origin}" if origin != "." else f"{name}.")
    labels = absolute.rstrip(".").split(".")
    if len(absolute) > 254 or any(not 0 < len(label) <= 63 for label in labels):
        raise ConfigError(f"{where}: {name!r} is not a valid domain name")
    if origin != "." and not (absolute == origin or absolute.endswith("." + origin)) and where.endswith(".name"):
        raise ConfigError(f"{where}: {name!r} is outside the zone {origin}")
    return absolute


def _is_ip(value: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(value).version == version
    except ValueError:
        return False


def _table(document: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    return _mapping(document.get(key, {}), key)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table")
    return value


def _only(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _text(table: Mapping[str, Any], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key}: expected a string")
    return value


def _number(
    table: Mapping[str, Any],
    key: str,
    where: str,
    low: float,
    high: float,
    *,
    exclusive_low: bool = False,
    default: float | None = None,
) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}.{key}: expected a number")
    # NaN passes every comparison below, and JSON's 1e999 or TOML's inf are
    # infinite: either would reach steering (a NaN distance, or a weight it
    # refuses with ValueError, i.e. SERVFAIL for every steered query).
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range (JSON integers are unbounded)
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(f"{where}.{key}: expected a finite number, got {value!r:.40}")
    if number < low or number > high or (exclusive_low and number == low):
        bound = f"above {low:g}" if exclusive_low else f"from {low:g}"
        raise ConfigError(f"{where}.{key}: must be {bound} to {high:g}, got {value}")
    return number
