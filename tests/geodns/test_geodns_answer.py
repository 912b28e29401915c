"""The answerer, packet in → packet out: zone semantics, EDNS, ECS, steering, and fuzzing."""

from __future__ import annotations

import ipaddress
import struct

import dnslib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geodns.answer import Answerer, AnswerSettings
from geodns.config import parse_zone_config
from geodns.model import IPAddress, Location, PopHealth
from geodns.registry import PopRegistry
from geodns.zone import ZoneIndex

CONFIG = {
    "zones": {
        "boxoffice.test": {
            "ttl": 300,
            "soa": {"mname": "ns1", "rname": "hostmaster", "serial": 7, "refresh": 3600, "retry": 600,
                    "expire": 86400, "minimum": 60},
            "ns": ["ns1"],
            "records": [
                {"name": "ns1", "type": "A", "value": "192.0.2.53"},
                {"name": "@", "type": "TXT", "value": "boxoffice"},
                {"name": "@", "type": "MX", "value": "10 mail"},
                {"name": "alias", "type": "CNAME", "value": "www"},
                {"name": "away", "type": "CNAME", "value": "cdn.example.net."},
                {"name": "deep.under", "type": "A", "value": "192.0.2.9"},
                {"name": "big", "type": "TXT", "value": "x" * 250},
                {"name": "big", "type": "TXT", "value": "y" * 250},
                {"name": "big", "type": "TXT", "value": "z" * 250},
            ],
            "geo": {"www": "edge", "v4only": "legacy"},
        }
    },
    "pools": {"edge": {"default": ["london"]}, "legacy": {"pops": ["tokyo"]}},
    "pops": {
        "london": {"addresses": ["127.0.0.11", "::11"], "lat": 51.5, "lon": -0.13, "capacity": 1000},
        "newyork": {"addresses": ["127.0.0.12", "::12"], "lat": 40.7, "lon": -74.0, "capacity": 1000},
        "tokyo": {"addresses": ["127.0.0.13"], "lat": 35.7, "lon": 139.7, "capacity": 1000},
    },
}  # fmt: skip

NETWORKS = {
    "198.51.100.0/24": Location(40.71, -74.01, ipaddress.ip_network("198.51.100.0/24"), "US"),
    "203.0.113.0/24": Location(35.68, 139.69, ipaddress.ip_network("203.0.113.0/24"), "JP"),
    "192.0.2.0/25": Location(51.51, -0.13, ipaddress.ip_network("192.0.2.0/25"), "GB"),
}


def locate(address: IPAddress) -> Location | None:
    for location in NETWORKS.values():
        if address in location.network:
            return location
    return None


@pytest.fixture
def health() -> dict[str, PopHealth]:
    return {pop: PopHealth(True) for pop in CONFIG["pops"]}  # type: ignore[attr-defined]


@pytest.fixture
def answerer(health: dict[str, PopHealth]) -> Answerer:
    config = parse_zone_config(CONFIG)
    return Answerer(ZoneIndex(config.zones), PopRegistry.from_config(config), lambda: health, locate,
                    AnswerSettings(answer_count=2, geo_ttl=30, nsid=b"gd-1"))  # fmt: skip


RESOLVER = ipaddress.ip_address("10.9.8.7")


def ask(
    answerer: Answerer,
    name: str,
    qtype: str = "A",
    *,
    ecs: tuple[str, int] | None = None,
    edns: bool = True,
    nsid: bool = False,
    version: int = 0,
    tcp: bool = False,
) -> dnslib.DNSRecord:
    query = dnslib.DNSRecord.question(name, qtype)
    if edns:
        options = []
        if ecs is not None:
            address, prefix = ecs
            raw = ipaddress.ip_address(address).packed[: (prefix + 7) // 8]
            family = 1 if ipaddress.ip_address(address).version == 4 else 2
            options.append(dnslib.EDNSOption(8, struct.pack("!HBB", family, prefix, 0) + raw))
        if nsid:
            options.append(dnslib.EDNSOption(3, b""))
        query.add_ar(dnslib.EDNS0(udp_len=1232, version=version, opts=options))
    reply = answerer.answer(bytes(query.pack()), RESOLVER, tcp=tcp)
    assert reply.packet is not None
    parsed = dnslib.DNSRecord.parse(reply.packet)
    assert parsed.header.id == query.header.id
    return parsed


def addresses(record: dnslib.DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in record.rr if rr.rtype in (dnslib.QTYPE.A, dnslib.QTYPE.AAAA)]


def edns_option(record: dnslib.DNSRecord, code: int) -> bytes | None:
    for rr in record.ar:
        if rr.rtype == dnslib.QTYPE.OPT:
            for option in rr.rdata:
                if option.code == code:
                    return bytes(option.data)
    return None


def test_steers_by_client_subnet_and_echoes_the_scope(answerer: Answerer) -> None:
    tokyo = ask(answerer, "www.boxoffice.test", ecs=("203.0.113.0", 24))
    assert addresses(tokyo)[0] == "127.0.0.13"
    assert tokyo.header.aa == 1
    assert edns_option(tokyo, 8) == struct.pack("!HBB", 1, 24, 24) + bytes([203, 0, 113])
    newyork = ask(answerer, "www.boxoffice.test", ecs=("198.51.100.0", 24))
    assert addresses(newyork)[0] == "127.0.0.12"
    # A /25 network answers a /24 source with scope 24 at most: never wider precision than asked.
    london = ask(answerer, "www.boxoffice.test", ecs=("192.0.2.0", 24))
    assert addresses(london)[0] == "127.0.0.11"
    assert edns_option(london, 8) == struct.pack("!HBB", 1, 24, 24) + bytes([192, 0, 2])
    assert len(addresses(london)) == 2


def test_unknown_location_gets_the_default_pool(answerer: Answerer) -> None:
    assert addresses(ask(answerer, "www.boxoffice.test"))[0] == "127.0.0.11"
    assert addresses(ask(answerer, "www.boxoffice.test", ecs=("0.0.0.0", 0)))[0] == "127.0.0.11"


def test_aaaa_and_family_without_addresses(answerer: Answerer) -> None:
    aaaa = ask(answerer, "www.boxoffice.test", "AAAA", ecs=("198.51.100.0", 24))
    assert addresses(aaaa)[0] == "::12"
    only_v4 = ask(answerer, "v4only.boxoffice.test", "AAAA")
    assert only_v4.header.rcode == dnslib.RCODE.NOERROR
    assert not only_v4.rr
    assert only_v4.auth[0].rtype == dnslib.QTYPE.SOA


def test_failover_skips_unhealthy_pops(answerer: Answerer, health: dict[str, PopHealth]) -> None:
    health["tokyo"] = PopHealth(False)
    answerer.invalidate()
    assert addresses(ask(answerer, "www.boxoffice.test", ecs=("203.0.113.0", 24)))[0] != "127.0.0.13"
    for pop in health:
        health[pop] = PopHealth(False)
    answerer.invalidate()
    reply = answerer.answer(bytes(dnslib.DNSRecord.question("www.boxoffice.test").pack()), RESOLVER)
    assert reply.all_down
    assert reply.pops  # the nearest are still answered


def test_negative_answers_carry_the_soa(answerer: Answerer) -> None:
    nxdomain = ask(answerer, "nope.boxoffice.test")
    assert nxdomain.header.rcode == dnslib.RCODE.NXDOMAIN
    assert nxdomain.header.aa == 1
    [soa] = nxdomain.auth
    assert soa.rtype == dnslib.QTYPE.SOA
    assert soa.ttl == 60  # RFC 2308: min(SOA TTL, SOA minimum)
    nodata = ask(answerer, "ns1.boxoffice.test", "AAAA")
    assert nodata.header.rcode == dnslib.RCODE.NOERROR
    assert not nodata.rr
    assert nodata.auth[0].rtype == dnslib.QTYPE.SOA
    empty_non_terminal = ask(answerer, "under.boxoffice.test")
    assert empty_non_terminal.header.rcode == dnslib.RCODE.NOERROR


def test_refused_outside_our_zones_and_for_transfers(answerer: Answerer) -> None:
    outside = ask(answerer, "example.com")
    assert outside.header.rcode == dnslib.RCODE.REFUSED
    assert outside.header.aa == 0
    assert ask(answerer, "boxoffice.test", "AXFR").header.rcode == dnslib.RCODE.REFUSED


def test_cname_chains_into_steering_and_out_of_zone(answerer: Answerer) -> None:
    chained = ask(answerer, "alias.boxoffice.test", ecs=("203.0.113.0", 24))
    assert chained.rr[0].rtype == dnslib.QTYPE.CNAME
    assert addresses(chained)[0] == "127.0.0.13"
    away = ask(answerer, "away.boxoffice.test")
    assert [str(rr.rdata) for rr in away.rr] == ["cdn.example.net."]


def test_any_is_minimal(answerer: Answerer) -> None:
    reply = ask(answerer, "boxoffice.test", "ANY")
    assert len({rr.rtype for rr in reply.rr}) == 1


def test_case_is_echoed(answerer: Answerer) -> None:
    reply = ask(answerer, "WwW.BoxOffice.TEST", ecs=("203.0.113.0", 24))
    assert str(reply.q.qname) == "WwW.BoxOffice.TEST."
    assert addresses(reply)[0] == "127.0.0.13"


def test_edns_nsid_badvers_and_truncation(answerer: Answerer) -> None:
    assert edns_option(ask(answerer, "www.boxoffice.test", nsid=True), 3) == b"gd-1"
    assert edns_option(ask(answerer, "www.boxoffice.test"), 3) is None
    badvers = ask(answerer, "www.boxoffice.test", version=1)
    assert (badvers.ar[0].ttl >> 24, badvers.header.rcode) == (1, 0)  # 16 = 1 << 4 | 0
    classic = ask(answerer, "big.boxoffice.test", "TXT", edns=False)
    assert classic.header.tc == 1
    assert not classic.rr
    assert len(ask(answerer, "big.boxoffice.test", "TXT", edns=False, tcp=True).rr) == 3
    assert len(ask(answerer, "big.boxoffice.test", "TXT").rr) == 3  # 1232 bytes is enough


def test_opcodes_and_classes(answerer: Answerer) -> None:
    notify = dnslib.DNSRecord.question("boxoffice.test", "SOA")
    notify.header.opcode = 4
    reply = answerer.answer(bytes(notify.pack()), RESOLVER)
    assert reply.packet is not None
    assert dnslib.DNSRecord.parse(reply.packet).header.rcode == dnslib.RCODE.NOTIMP
    chaos = dnslib.DNSRecord.question("version.bind", "TXT", "CH")
    reply = answerer.answer(bytes(chaos.pack()), RESOLVER)
    assert reply.packet is not None
    assert dnslib.DNSRecord.parse(reply.packet).header.rcode == dnslib.RCODE.REFUSED


@pytest.mark.parametrize(
    "ecs",
    [
        struct.pack("!HBB", 1, 24, 8) + bytes([203, 0, 113]),  # scope must be 0 in a query
        struct.pack("!HBB", 1, 24, 0) + bytes([203, 0]),  # address too short for /24
        struct.pack("!HBB", 1, 23, 0) + bytes([203, 0, 113]),  # bits beyond the prefix set
        struct.pack("!HBB", 3, 24, 0) + bytes([203, 0, 113]),  # unknown family
        struct.pack("!HBB", 1, 33, 0) + bytes(5),  # prefix longer than IPv4
        b"\x00",  # too short
    ],
)
def test_malformed_client_subnet_is_formerr(answerer: Answerer, ecs: bytes) -> None:
    query = dnslib.DNSRecord.question("www.boxoffice.test")
    query.add_ar(dnslib.EDNS0(opts=[dnslib.EDNSOption(8, ecs)]))
    reply = answerer.answer(bytes(query.pack()), RESOLVER)
    assert reply.packet is not None
    parsed = dnslib.DNSRecord.parse(reply.packet)
    assert parsed.header.rcode == dnslib.RCODE.FORMERR
    assert parsed.header.id == query.header.id


def test_responses_and_runts_are_ignored(answerer: Answerer) -> None:
    assert answerer.answer(b"\x12\x34\x81", RESOLVER).packet is None
    response = dnslib.DNSRecord.question("www.boxoffice.test").reply()
    assert answerer.answer(bytes(response.pack()), RESOLVER).packet is None


def _valid_query() -> bytes:
    query = dnslib.DNSRecord.question("www.boxoffice.test", "A")
    query.add_ar(dnslib.EDNS0(opts=[dnslib.EDNSOption(8, struct.pack("!HBB", 1, 24, 0) + bytes([203, 0, 113]))]))
    return bytes(query.pack())


def _check_reply(answerer: Answerer, packet: bytes) -> None:
    reply = answerer.answer(packet, RESOLVER)
    if reply.packet is None:
        return
    assert reply.packet[:2] == packet[:2]  # the query id is echoed
    flags = struct.unpack_from("!H", reply.packet, 2)[0]
    assert flags & 0x8000  # QR: a response
    assert flags & 0xF != dnslib.RCODE.SERVFAIL  # garbage is the peer's fault, not ours
    try:
        dnslib.DNSRecord.parse(packet)
    except dnslib.DNSError:
        return  # dnslib refuses some legal names (binary labels); the header checks above stand
    dnslib.DNSRecord.parse(reply.packet)  # whatever dnslib can send, it can read back from us


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_any_bytes_get_a_valid_answer_or_silence(answerer: Answerer, packet: bytes) -> None:
    _check_reply(answerer, packet)


@settings(max_examples=600, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=6), st.integers(0, 40))
def test_fuzz_mutated_queries(answerer: Answerer, flips: list[tuple[int, int]], cut: int) -> None:
    packet = bytearray(_valid_query())
    for position, value in flips:
        if position < len(packet):
            packet[position] = value
    _check_reply(answerer, bytes(packet[: len(packet) - cut]))


def test_whole_response_cache_copies_the_id_and_follows_health(
    answerer: Answerer, health: dict[str, PopHealth]
) -> None:
    query = dnslib.DNSRecord.question("www.boxoffice.test")
    query.add_ar(dnslib.EDNS0(opts=[dnslib.EDNSOption(8, struct.pack("!HBB", 1, 24, 0) + bytes([203, 0, 113]))]))
    first = bytes(query.pack())
    again = b"\xbe\xef" + first[2:]
    one = answerer.answer_packet(first, RESOLVER)
    two = answerer.answer_packet(again, RESOLVER)
    assert one is not None
    assert two is not None
    assert two[:2] == b"\xbe\xef"
    assert one[2:] == two[2:]
    assert addresses(dnslib.DNSRecord.parse(two))[0] == "127.0.0.13"
    health["tokyo"] = PopHealth(False)
    answerer.invalidate()
    three = answerer.answer_packet(again, RESOLVER)
    assert three is not None
    assert addresses(dnslib.DNSRecord.parse(three))[0] != "127.0.0.13"
    assert answerer.stats[(1, 0, "tokyo")] == 2
