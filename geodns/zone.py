"""Authoritative resolution inside our zones (RFC 1034 section 4.3.2), pure.

:class:`ZoneIndex` answers "what does this name and type resolve to": static
records, a geo-steered name (the answerer picks POPs), a CNAME chain, NODATA
(the name exists, the type does not: RFC 2308 section 2.2), NXDOMAIN (no such
name, counting empty non-terminals as existing: RFC 8020), or REFUSED (not a
zone of ours). ANY gets one RRset, as RFC 8482 section 4.1 allows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from geodns.config import StaticRecord, Zone
from geodns.wire import (
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    RCODE_REFUSED,
    TYPE_A,
    TYPE_AAAA,
    TYPE_ANY,
    TYPE_AXFR,
    TYPE_CNAME,
    TYPE_IXFR,
)

TYPE_CODES: Final = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28}
# Longer CNAME chains inside one server are configuration mistakes or loops.
MAX_CNAME_CHAIN: Final = 8


@dataclass(frozen=True, slots=True)
class Resolution:
    rcode: int
    zone: Zone | None  # None only for REFUSED
    records: tuple[StaticRecord, ...] = ()  # CNAME chain first, then the final RRset
    geo_name: str | None = None  # set when the chain ends at a steered name
    geo_pool: str | None = None
    negative: bool = False  # NODATA or NXDOMAIN: the SOA goes in the authority section


class ZoneIndex:
    def __init__(self, zones: Sequence[Zone]) -> None:
        self._zones = sorted(zones, key=lambda zone: len(zone.origin), reverse=True)
        self._records: dict[str, dict[int, list[StaticRecord]]] = {}
        self._geo: dict[str, tuple[Zone, str]] = {}
        self._names: set[str] = set()
        for zone in zones:
            apex = [StaticRecord(zone.origin, "SOA", zone.ttl, _soa_text(zone))]
            apex += [StaticRecord(zone.origin, "NS", zone.ttl, ns) for ns in zone.ns]
            for record in (*apex, *zone.records):
                self._records.setdefault(record.name, {}).setdefault(TYPE_CODES[record.rtype], []).append(record)
                self._add_name(record.name, zone.origin)
            for name, pool in zone.geo.items():
                self._geo[name] = (zone, pool)
                self._add_name(name, zone.origin)

    @property
    def zones(self) -> Sequence[Zone]:
        return self._zones

    def zone_of(self, name: str) -> Zone | None:
        for zone in self._zones:
            if name == zone.origin or zone.origin == "." or _under(name, zone.origin):
                return zone
        return None

    def resolve(self, name: str, qtype: int) -> Resolution:
        zone = self.zone_of(name)
        if zone is None or qtype in (TYPE_AXFR, TYPE_IXFR):
            # Zone transfers are not offered: the config file is the zone's source.
            return Resolution(RCODE_REFUSED, zone)
        chain: list[StaticRecord] = []
        for _ in range(MAX_CNAME_CHAIN):
            geo = self._geo.get(name)
            if geo is not None:
                if qtype in (TYPE_A, TYPE_AAAA, TYPE_ANY):
                    return Resolution(RCODE_NOERROR, zone, tuple(chain), geo_name=name, geo_pool=geo[1])
                return Resolution(RCODE_NOERROR, zone, tuple(chain), negative=True)
            by_type = self._records.get(name)
            if by_type is None:
                if name in self._names:
                    return Resolution(RCODE_NOERROR, zone, tuple(chain), negative=True)
                # A dangling CNAME target answers NOERROR with the chain (RFC 6604).
                return Resolution(RCODE_NXDOMAIN if not chain else RCODE_NOERROR, zone, tuple(chain), negative=True)
            if qtype == TYPE_ANY:
                first_type = min(by_type)
                return Resolution(RCODE_NOERROR, zone, (*chain, *by_type[first_type]))
            if qtype in by_type:
                return Resolution(RCODE_NOERROR, zone, (*chain, *by_type[qtype]))
            cname = by_type.get(TYPE_CNAME)
            if cname is None:
                return Resolution(RCODE_NOERROR, zone, tuple(chain), negative=True)
            chain.append(cname[0])
            name = cname[0].value
            target_zone = self.zone_of(name)
            if target_zone is None:
                return Resolution(RCODE_NOERROR, zone, tuple(chain))  # the resolver follows it elsewhere
            zone = target_zone
        return Resolution(RCODE_NOERROR, zone, tuple(chain))

    def _add_name(self, name: str, origin: str) -> None:
        # Register the name and every ancestor up to the origin (empty non-terminals exist).
        while True:
            self._names.add(name)
            if name == origin or "." not in name.rstrip("."):
                return
            name = name.split(".", 1)[1]


def _under(name: str, origin: str) -> bool:
    # The dot before the origin must be a label boundary, not an escaped "\\." inside a label.
    if not name.endswith("." + origin):
        return False
    head = name[: -len(origin) - 1]
    return (len(head) - len(head.rstrip("\\"))) % 2 == 0


def _soa_text(zone: Zone) -> str:
    soa = zone.soa
    return f"{soa.mname} {soa.rname} {soa.serial} {soa.refresh} {soa.retry} {soa.expire} {soa.minimum}"
