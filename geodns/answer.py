"""Turn one query packet into one response packet: the GeoDNS decision core.

`Answerer.answer(packet, client)` parses the query (``geodns.wire``), resolves
it in our zones (``geodns.zone``), and for a geo-steered name locates the
client — by its EDNS Client Subnet when present (RFC 7871), else by the
resolver's own address — and picks POPs (``geodns.steering``).

The packed answer and authority sections are cached under (name, type,
location network, …): every client in one location-database network gets the
same answer, so the hot path is a parse, a dictionary hit and a header.
dnslib only runs on a cache miss. Any change of POPs, pools or health bumps the
generation and empties the cache.

No sockets, no clock: the server adapter hands in bytes and addresses, and
sends what comes back. Nothing but a finished response (or None: stay silent)
leaves `answer`.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import dnslib

from geodns.config import StaticRecord
from geodns.geo import ecs_scope
from geodns.model import IPAddress, IPNetwork, Location, PopHealth
from geodns.registry import PopRegistry
from geodns.steering import choose_pops
from geodns.wire import (
    CLASS_ANY,
    CLASS_IN,
    FAMILY_IPV4,
    MAX_TCP_MESSAGE,
    OPCODE_QUERY,
    RCODE_BADVERS,
    RCODE_FORMERR,
    RCODE_NOERROR,
    RCODE_NOTIMP,
    RCODE_NXDOMAIN,
    RCODE_REFUSED,
    RCODE_SERVFAIL,
    TYPE_A,
    TYPE_ANY,
    Drop,
    FormatError,
    Query,
    Sections,
    error_response,
    opt_record,
    parse_query,
    response,
)
from geodns.zone import Resolution, ZoneIndex

log = logging.getLogger("boxoffice.geodns")

# Distinct (name, type, network) answers kept packed. A city database has a
# few million networks, but an on-sale's traffic comes from far fewer; 200k
# entries of ~100 bytes stay under ~50 MiB with dict overhead.
MAX_CACHED_ANSWERS: Final = 200_000

# With a clock, packed answers are rebuilt at least this often (seconds).
DEFAULT_CACHE_LIFETIME: Final = 1.0

# Whole responses are cached only for well-formed questions: garbage must not
# be able to push real answers out of the cache.
_CACHEABLE_RCODES: Final = frozenset({RCODE_NOERROR, RCODE_NXDOMAIN, RCODE_REFUSED})

CacheKey = tuple[str, int, object]
FastKey = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class AnswerSettings:
    answer_count: int  # POP addresses per geo answer
    geo_ttl: int  # TTL of steered answers: short, so failover is quick
    nsid: bytes | None  # our RFC 5001 name server id, when configured


@dataclass(frozen=True, slots=True)
class Reply:
    packet: bytes | None  # None: send nothing
    rcode: int
    qtype: int
    pops: tuple[str, ...] = ()  # POPs named in a geo answer
    all_down: bool = False


@dataclass(frozen=True, slots=True)
class _Packed:
    rcode: int
    sections: Sections
    pops: tuple[str, ...]
    all_down: bool
    steered: bool  # a geo answer: its ECS scope comes from the location network
    location_network: IPNetwork | None = None


class Answerer:
    def __init__(
        self,
        zones: ZoneIndex,
        registry: PopRegistry,
        health: Callable[[], Mapping[str, PopHealth]],
        locate: Callable[[IPAddress], Location | None],
        settings: AnswerSettings,
        *,
        clock: Callable[[], float] | None = None,
        cache_lifetime: float = DEFAULT_CACHE_LIFETIME,
    ) -> None:
        self.zones = zones
        self._clock = clock
        self._cache_lifetime = cache_lifetime
        self._cache_started = 0.0
        self.registry = registry
        self._health = health
        self._locate = locate
        self.settings = settings
        self._cache: dict[CacheKey, _Packed] = {}
        self._fast: dict[FastKey, tuple[_Packed, int]] = {}
        self._replies: dict[tuple[object, ...], tuple[bytes, tuple[int, int, str]]] = {}
        self._resolved: dict[CacheKey, Resolution] = {}
        self._generation = (-1, -1)
        self.health_generation = 0
        self.stats: Counter[tuple[int, int, str]] = Counter()  # (qtype, rcode, pop) -> queries

    def invalidate(self) -> None:
        """Forget every packed answer (health changed, zones reloaded)."""
        self.health_generation += 1

    def answer_packet(
        self,
        packet: bytes,
        client: IPAddress,
        *,
        tcp: bool = False,
        max_size: int | None = None,
        client_key: object = None,
        now: float | None = None,
    ) -> bytes | None:
        """The hot path: `answer` reduced to bytes, with a cache of whole responses.

        A query's response depends only on its bytes after the 2-byte id, on
        the client address (location when there is no ECS option), on the
        transport and the size cap, and on the zone/POP/health generation.
        Identical questions — a resolver re-asking for the same client
        network — are answered by one dictionary lookup and the id copied in.
        `client_key` may stand in for `client` in that cache (the source host
        text hashes faster than an address object); `now` saves a clock read
        when the caller has one.
        """
        if now is None:
            now = self._clock() if self._clock is not None else 0.0
        # Inlined _check_generation: this runs once per datagram.
        if (
            self.registry.generation != self._generation[0]
            or self.health_generation != self._generation[1]
            or not 0.0 <= now - self._cache_started <= self._cache_lifetime  # also a clock gone backwards
        ):
            self._check_generation(now)
        key = (client if client_key is None else client_key, tcp, max_size, packet[2:])
        hit = self._replies.get(key)
        if hit is not None:
            tail, counted = hit
            self.stats[counted] += 1
            return packet[:2] + tail
        reply = self.answer(packet, client, tcp=tcp, max_size=max_size)
        if reply.packet is not None and reply.rcode in _CACHEABLE_RCODES and len(packet) >= 2:
            if len(self._replies) >= MAX_CACHED_ANSWERS:
                del self._replies[next(iter(self._replies))]
            self._replies[key] = (reply.packet[2:], (reply.qtype, reply.rcode, reply.pops[0] if reply.pops else ""))
        return reply.packet

    def answer(self, packet: bytes, client: IPAddress, *, tcp: bool = False, max_size: int | None = None) -> Reply:
        """The response to `packet` from `client`; `max_size` caps it further (TC beyond)."""
        try:
            query = parse_query(packet)
        except Drop:
            return Reply(None, -1, 0)
        except FormatError as exc:
            return self._count(Reply(error_response(exc.query_id, exc.flags, RCODE_FORMERR), RCODE_FORMERR, 0))
        try:
            return self._count(self._answer(query, client, tcp, max_size))
        except Exception:
            # A bug of ours must cost one SERVFAIL, never the server.
            log.exception("failed to answer %s type %d", query.name, query.qtype)
            return self._count(
                Reply(error_response(query.id, query.flags, RCODE_SERVFAIL), RCODE_SERVFAIL, query.qtype)
            )

    def _answer(self, query: Query, client: IPAddress, tcp: bool, max_size: int | None) -> Reply:
        limit = MAX_TCP_MESSAGE if tcp else query.max_udp_size
        if max_size is not None:
            limit = min(limit, max_size)
        edns = query.edns
        nsid = self.settings.nsid if edns is not None and edns.nsid else None
        opt: bytes | None = None
        if edns is not None and edns.version > 0:
            # RFC 6891 section 6.1.3: answer BADVERS with the version we speak (0).
            opt = opt_record(extended_rcode=RCODE_BADVERS >> 4, nsid=nsid)
            return Reply(response(query, RCODE_BADVERS & 0xF, Sections.empty(), authoritative=False, opt=opt,
                                  limit=limit), RCODE_BADVERS, query.qtype)  # fmt: skip
        if query.opcode != OPCODE_QUERY:
            opt = None if edns is None else opt_record(nsid=nsid)
            packet = response(query, RCODE_NOTIMP, Sections.empty(), authoritative=False, opt=opt, limit=limit)
            return Reply(packet, RCODE_NOTIMP, query.qtype)
        if query.qclass not in (CLASS_IN, CLASS_ANY):
            opt = None if edns is None else opt_record(nsid=nsid)
            packet = response(query, RCODE_REFUSED, Sections.empty(), authoritative=False, opt=opt, limit=limit)
            return Reply(packet, RCODE_REFUSED, query.qtype)

        subnet = edns.client_subnet if edns is not None else None
        self._check_generation()
        # First level: the exact client network as sent. Repeat askers (a
        # resolver's ECS /24, or the resolver itself) skip zone lookup,
        # location lookup and scope computation entirely.
        fast_key: FastKey = (
            (query.name, query.qtype, client)
            if subnet is None
            else (query.name, query.qtype, subnet.family, subnet.source_prefix, subnet.address_bytes)
        )
        fast = self._fast.get(fast_key)
        if fast is None:
            address = client if subnet is None else subnet.address
            packed = self._packed(query, address, subnet is not None and subnet.source_prefix == 0)
            scope = 0  # static answers hold for every client (RFC 7871 section 7.2.1)
            if subnet is not None and packed.steered:
                bits = 32 if subnet.family == FAMILY_IPV4 else 128
                scope = ecs_scope(subnet.source_prefix, packed.location_network, bits)
            fast = (packed, scope)
            if len(self._fast) >= MAX_CACHED_ANSWERS:
                del self._fast[next(iter(self._fast))]
            self._fast[fast_key] = fast
        packed, scope = fast
        if edns is not None:
            opt = opt_record(dnssec_ok=edns.dnssec_ok, nsid=nsid, client_subnet=subnet, scope_prefix=scope)
        authoritative = packed.rcode != RCODE_REFUSED
        packet = response(query, packed.rcode, packed.sections, authoritative=authoritative, opt=opt, limit=limit)
        return Reply(packet, packed.rcode, query.qtype, packed.pops, packed.all_down)

    def _check_generation(self, now: float | None = None) -> None:
        if now is None:
            now = self._clock() if self._clock is not None else 0.0
        generation = (self.registry.generation, self.health_generation)
        if generation != self._generation or not 0.0 <= now - self._cache_started <= self._cache_lifetime:
            # Loads change without health transitions; a short lifetime lets
            # shedding follow them (the checker reports once per interval).
            self._cache.clear()
            self._fast.clear()
            self._resolved.clear()
            self._replies.clear()
            self._generation = generation
            self._cache_started = now

    def _packed(self, query: Query, address: IPAddress, no_location: bool) -> _Packed:
        static_key: CacheKey = (query.name, query.qtype, None)
        hit = self._cache.get(static_key)
        if hit is not None:
            return hit
        resolution = self._resolved.get(static_key)
        if resolution is None:
            resolution = self.zones.resolve(query.name, query.qtype)
            if len(self._resolved) >= MAX_CACHED_ANSWERS:
                del self._resolved[next(iter(self._resolved))]
            self._resolved[static_key] = resolution
        if resolution.geo_name is None:
            packed = _Packed(resolution.rcode, _pack(query, resolution, []), (), False, steered=False)
            self._remember(static_key, packed)
            return packed
        location = None if no_location else self._locate(address)
        network = location.network if location is not None else None
        key: CacheKey = (query.name, query.qtype, network or "unknown")
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        packed = self._steer(query, resolution, location)
        self._remember(key, packed)
        return packed

    def _steer(self, query: Query, resolution: Resolution, location: Location | None) -> _Packed:
        assert resolution.geo_name is not None and resolution.geo_pool is not None
        pool = resolution.geo_pool
        candidates = self.registry.candidates(pool)
        network = location.network if location is not None else None
        client_key = zlib.crc32(str(network).encode())
        choice = choose_pops(location, candidates, self._health(), count=len(candidates),
                             default_pool=self.registry.default_pool(pool), client_key=client_key)  # fmt: skip
        qtype = TYPE_A if query.qtype == TYPE_ANY else query.qtype
        answers: list[dnslib.RR] = []
        named: list[str] = []
        for pop in choice.pops:
            addresses = pop.ipv4 if qtype == TYPE_A else pop.ipv6
            if not addresses:
                continue
            rdata = dnslib.A(str(addresses[0])) if qtype == TYPE_A else dnslib.AAAA(str(addresses[0]))
            answers.append(dnslib.RR(resolution.geo_name, qtype, rdata=rdata, ttl=self.settings.geo_ttl))
            named.append(pop.id)
            if len(named) == self.settings.answer_count:
                break
        if not answers:
            # The name exists but no POP has an address of this family: NODATA.
            negative = Resolution(RCODE_NOERROR, resolution.zone, resolution.records, negative=True)
            return _Packed(RCODE_NOERROR, _pack(query, negative, []), (), choice.all_down, True, network)
        return _Packed(RCODE_NOERROR, _pack(query, resolution, answers), tuple(named), choice.all_down, True, network)

    def _remember(self, key: CacheKey, packed: _Packed) -> None:
        if len(self._cache) >= MAX_CACHED_ANSWERS:
            del self._cache[next(iter(self._cache))]  # oldest first: dicts keep insertion order
        self._cache[key] = packed

    def _count(self, reply: Reply) -> Reply:
        self.stats[(reply.qtype, reply.rcode, reply.pops[0] if reply.pops else "")] += 1
        return reply


def _pack(query: Query, resolution: Resolution, geo_answers: list[dnslib.RR]) -> Sections:
    """Pack answer and authority sections behind the question (names compress to offset 12)."""
    if resolution.rcode == RCODE_REFUSED:
        return Sections.empty()
    qname = dnslib.DNSLabel(list(query.labels))
    record = dnslib.DNSRecord(dnslib.DNSHeader(id=0, qr=1, aa=1), q=dnslib.DNSQuestion(qname, query.qtype))
    answers = [_rr(static) for static in resolution.records] + geo_answers
    for rr in answers:
        record.add_answer(rr)
    authority = 0
    if resolution.negative and resolution.zone is not None:
        # RFC 2308 section 3: the SOA's TTL is the negative-caching TTL.
        soa = resolution.zone.soa
        negative_ttl = min(resolution.zone.ttl, soa.minimum)
        text = f"{soa.mname} {soa.rname} {soa.serial} {soa.refresh} {soa.retry} {soa.expire} {soa.minimum}"
        record.add_auth(_rr(StaticRecord(resolution.zone.origin, "SOA", negative_ttl, text)))
        authority = 1
    packed = record.pack()
    question_end = 12 + len(query.question)
    return Sections(packed[question_end:], len(answers), authority)


def _rr(record: StaticRecord) -> dnslib.RR:
    parsed = dnslib.RR.fromZone(f"{record.name} {record.ttl} IN {record.rtype} {record.value}")
    rr: dnslib.RR = parsed[0]
    return rr
