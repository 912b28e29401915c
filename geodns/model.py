"""Plain data shared by the GeoDNS cores: POPs, their health, client locations.

No I/O here. The registry (`geodns.registry`) holds :class:`Pop` records, the
health checker produces :class:`PopHealth`, the location database produces
:class:`Location`, and `geodns.steering` turns the three into a :class:`Choice`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


@dataclass(frozen=True, slots=True)
class Pop:
    """One edge point of presence, as registered by config or the admin API.

    `capacity` is what the POP can serve (requests per second); `weight`
    scales its share of answers relative to equally near POPs (0 < weight).
    A drained POP is answered for nobody but stays health-checked.
    """

    id: str
    addresses: tuple[IPAddress, ...]
    lat: float
    lon: float
    capacity: float
    weight: float = 1.0
    health_url: str | None = None
    drained: bool = False

    @property
    def ipv4(self) -> tuple[IPv4Address, ...]:
        return tuple(address for address in self.addresses if isinstance(address, IPv4Address))

    @property
    def ipv6(self) -> tuple[IPv6Address, ...]:
        return tuple(address for address in self.addresses if isinstance(address, IPv6Address))


@dataclass(frozen=True, slots=True)
class PopHealth:
    """What the health checker last concluded about a POP.

    `healthy` already includes hysteresis (rise/fall thresholds). `load` is the
    POP's own report of requests per second, when its health endpoint gives one.
    """

    healthy: bool
    load: float | None = None


@dataclass(frozen=True, slots=True)
class Location:
    """Where a client network is, per the location database.

    `network` is the database record's network containing the client address:
    every address in it gets the same location, which bounds the ECS scope.
    """

    lat: float
    lon: float
    network: IPNetwork
    country: str | None = None


@dataclass(frozen=True, slots=True)
class Choice:
    """The POPs to answer with, nearest first, and whether we fell back.

    `all_down` is True when no POP was healthy and the nearest were answered
    anyway (logged and counted by the server).
    """

    pops: tuple[Pop, ...]
    all_down: bool = False
    shed_from: tuple[str, ...] = field(default_factory=tuple)  # POP ids skipped because overloaded
