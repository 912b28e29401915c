"""Regression tests for bugs found in review: caches, name aliasing, transports, admin auth."""

from __future__ import annotations

import ipaddress
import struct

import dnslib
import pytest

from geodns.answer import Answerer, AnswerSettings
from geodns.config import parse_zone_config
from geodns.model import PopHealth
from geodns.registry import PopRegistry
from geodns.server import _client_address
from geodns.zone import ZoneIndex
from tests.geodns.test_geodns_answer import CONFIG, RESOLVER, locate


@pytest.fixture
def answerer() -> Answerer:
    config = parse_zone_config(CONFIG)
    health = {pop: PopHealth(True) for pop in config.pops}
    return Answerer(ZoneIndex(config.zones), PopRegistry.from_config(config), lambda: health, locate,
                    AnswerSettings(answer_count=2, geo_ttl=30, nsid=b"gd-1"))  # fmt: skip


def _raw_query(labels: list[bytes], qtype: int = 1, query_id: int = 0x1234) -> bytes:
    name = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    return struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", qtype, 1)


def test_backslash_label_does_not_alias_a_dotted_label(answerer: Answerer) -> None:
    # "a\" + "b" and "a.b" must not share a cached answer: their question
    # names differ in length, so the packed sections' pointers would be wrong.
    first = answerer.answer_packet(_raw_query([b"a\\", b"b", b"boxoffice", b"test"]), RESOLVER)
    second = answerer.answer_packet(_raw_query([b"a.b", b"boxoffice", b"test"]), RESOLVER)
    for packet in (first, second):
        assert packet is not None
        record = dnslib.DNSRecord.parse(packet)
        assert record.header.rcode == dnslib.RCODE.NXDOMAIN
        assert [str(rr.rname) for rr in record.auth] == ["boxoffice.test."]


def test_cache_expires_when_the_clock_goes_backwards() -> None:
    config = parse_zone_config(CONFIG)
    health = {pop: PopHealth(True) for pop in config.pops}
    now = [1000.0]
    answerer = Answerer(ZoneIndex(config.zones), PopRegistry.from_config(config), lambda: health, locate,
                        AnswerSettings(answer_count=2, geo_ttl=30, nsid=None),
                        clock=lambda: now[0], cache_lifetime=1.0)  # fmt: skip
    query = bytes(dnslib.DNSRecord.question("www.boxoffice.test", "A").pack())
    assert answerer.answer_packet(query, RESOLVER) is not None
    now[0] = 10.0  # the clock stepped back
    answerer.answer_packet(query, RESOLVER)
    health["london"] = PopHealth(False)  # a load/health drift seen only through the lifetime
    now[0] = 12.0
    reply = dnslib.DNSRecord.parse(answerer.answer_packet(query, RESOLVER) or b"")
    assert "127.0.0.11" not in [str(rr.rdata) for rr in reply.rr]


def test_ipv4_mapped_source_is_the_ipv4_client() -> None:
    # A dual-stack UDP socket reports IPv4 clients as ::ffff:a.b.c.d; as IPv6
    # they would all share one /56 rate-limit bucket and never be located.
    assert _client_address(("::ffff:198.51.100.7", 53, 0, 0)) == ipaddress.ip_address("198.51.100.7")
    assert _client_address(("2001:db8::1", 53, 0, 0)) == ipaddress.ip_address("2001:db8::1")


def test_escaped_dot_label_is_not_inside_our_zone(answerer: Answerer) -> None:
    # The label "www.boxoffice" under "test." is not a name in boxoffice.test.
    packet = answerer.answer_packet(_raw_query([b"www.boxoffice", b"test"]), RESOLVER)
    assert packet is not None
    assert dnslib.DNSRecord.parse(packet).header.rcode == dnslib.RCODE.REFUSED


async def test_admin_token_compare_survives_non_ascii_header() -> None:
    import asyncio

    from aiohttp.test_utils import TestServer

    from geodns.admin import create_admin_app
    from geodns.service import build_state
    from geodns.settings import GeoDNSSettings

    state = build_state(GeoDNSSettings(admin_token="secret"), parse_zone_config(CONFIG), None)
    async with TestServer(create_admin_app(state)) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"POST /v1/pops/london/drain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s\xe9cret\r\n"
                     b"Content-Length: 0\r\nConnection: close\r\n\r\n")  # fmt: skip
        status = await reader.readline()
        writer.close()
        await writer.wait_closed()
    assert status.split()[1] == b"401"
    assert not state.registry.get("london").drained


class _FakeTransport:
    def __init__(self) -> None:
        self.closed = False
        self.written: list[bytes] = []

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 40000)

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


async def test_tcp_trickling_client_is_closed_by_the_idle_timer(answerer: Answerer) -> None:
    # A byte every so often must not hold a connection slot forever: a message
    # has to arrive whole within the idle timeout.
    import asyncio

    from geodns.server import TCPServerState, TransportStats

    state = TCPServerState(answerer, TransportStats(), max_connections=4, max_queries=10, idle_timeout=0.2)
    protocol = state.protocol()
    transport = _FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    query = bytes(dnslib.DNSRecord.question("ns1.boxoffice.test", "A").pack())
    message = struct.pack("!H", len(query)) + query
    for byte in message[:6]:
        if transport.closed:
            break
        protocol.data_received(bytes([byte]))
        await asyncio.sleep(0.08)
    assert transport.closed
    protocol.connection_lost(None)
    assert not transport.written


async def test_tcp_idle_timer_restarts_after_each_answer(answerer: Answerer) -> None:
    import asyncio

    from geodns.server import TCPServerState, TransportStats

    state = TCPServerState(answerer, TransportStats(), max_connections=4, max_queries=10, idle_timeout=0.2)
    protocol = state.protocol()
    transport = _FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    query = bytes(dnslib.DNSRecord.question("ns1.boxoffice.test", "A").pack())
    message = struct.pack("!H", len(query)) + query
    for _ in range(3):
        await asyncio.sleep(0.12)
        protocol.data_received(message[:5])
        protocol.data_received(message[5:])
    assert not transport.closed
    assert len(transport.written) == 3
    protocol.connection_lost(None)


def test_rate_limiter_does_not_sweep_on_every_new_network(monkeypatch: pytest.MonkeyPatch) -> None:
    # A steady spoofed scan keeps the table full while a trickle of entries
    # goes stale: each sweep frees one slot, so every new network paid a
    # full-table scan. One sweep must make real room.
    from geodns import ratelimit

    monkeypatch.setattr(ratelimit, "MAX_TRACKED_NETWORKS", 100)
    limiter = ratelimit.RateLimiter(5, 2)
    sweeps = 0
    original = limiter._sweep

    def counting(now: float) -> None:
        nonlocal sweeps
        sweeps += 1
        original(now)

    monkeypatch.setattr(limiter, "_sweep", counting)
    for i in range(100):
        limiter.check(ipaddress.ip_address(f"10.0.{i}.1"), i * 0.1)
    for j in range(50):
        limiter.check(ipaddress.ip_address(f"10.1.{j}.1"), 10.05 + j * 0.1)
    assert sweeps <= 2
    assert len(limiter._buckets) <= 100
