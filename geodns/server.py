"""The DNS transports: UDP datagrams and TCP streams (RFC 1035 section 4.2, RFC 7766).

Both protocols answer synchronously inside their asyncio callbacks — the
answerer is pure and fast, so there is no task per query and nothing to leak.
UDP answers pass the response-rate limiter and the amplification cap first;
TCP connections are capped in number, in queries, and in idle time, and stop
reading while their write buffer is full.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv6Address, ip_address
from typing import Final

from geodns.answer import Answerer
from geodns.model import IPAddress
from geodns.ratelimit import RateLimiter, Verdict

log = logging.getLogger("boxoffice.geodns")

# A query is a header, one question and one OPT record: far below this. Bigger
# datagrams are not queries we answer (RFC 6891 allows large requests, but no
# query of ours needs them) and are dropped unread.
MAX_UDP_QUERY: Final = 4096
MAX_TCP_QUERY: Final = 4096
# Pause reading from a TCP client whose unsent responses exceed this.
TCP_WRITE_HIGH_WATER: Final = 64 * 1024
_LENGTH: Final = struct.Struct("!H")
MAX_REMEMBERED_CLIENTS: Final = 65_536
LATENCY_SAMPLE: Final = 16


@dataclass
class TransportStats:
    udp_queries: int = 0
    udp_oversized: int = 0
    tcp_queries: int = 0
    tcp_connections: int = 0
    tcp_refused: int = 0
    latency_observe: Callable[[float, str], None] | None = field(default=None, repr=False)


class UDPProtocol(asyncio.DatagramProtocol):
    def __init__(
        self,
        answerer: Answerer,
        limiter: RateLimiter,
        *,
        max_amplification: int,
        stats: TransportStats,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._answerer = answerer
        self._limiter = limiter
        self._amplification = max_amplification
        self._stats = stats
        self._clock = clock
        self._transport: asyncio.DatagramTransport | None = None
        # Source host text -> parsed address: ip_address() costs more than the answer.
        self._clients: dict[object, IPAddress] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport.
        self._transport = typing.cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        stats = self._stats
        stats.udp_queries += 1
        # Latency is sampled (1 in LATENCY_SAMPLE): timing every query cost 7% of the CPU.
        started = time.perf_counter() if stats.udp_queries % LATENCY_SAMPLE == 0 else 0.0
        if len(data) > MAX_UDP_QUERY:
            stats.udp_oversized += 1
            return
        host = addr[0]
        client = self._clients.get(host)
        if client is None:
            client = _client_address(addr)
            if client is None:
                return
            if len(self._clients) >= MAX_REMEMBERED_CLIENTS:
                self._clients.clear()
            self._clients[host] = client
        now = self._clock()
        # RFC 5358 spirit: an unauthenticated UDP answer may not be much larger
        # than the question; bigger ones go out truncated and the client uses TCP.
        cap = self._amplification * len(data)
        if self._limiter.rate > 0:
            verdict = self._limiter.check(client, now)
            if verdict is Verdict.DROP:
                return
            if verdict is Verdict.SLIP:
                cap = 0
        packet = self._answerer.answer_packet(data, client, max_size=cap, client_key=host, now=now)
        if packet is None or self._transport is None:
            return
        self._transport.sendto(packet, addr)
        if started and stats.latency_observe is not None:
            stats.latency_observe(time.perf_counter() - started, "udp")


class TCPProtocol(asyncio.Protocol):
    """One TCP client: 2-byte length-prefixed messages, answered in order."""

    def __init__(self, server: TCPServerState) -> None:
        self._server = server
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._client: IPAddress | None = None
        self._answered = 0
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = typing.cast(asyncio.Transport, transport)
        self._transport = transport
        state = self._server
        if len(state.connections) >= state.max_connections:
            state.stats.tcp_refused += 1
            transport.abort()
            return
        state.connections.add(self)
        state.stats.tcp_connections += 1
        transport.set_write_buffer_limits(high=TCP_WRITE_HIGH_WATER)
        self._client = _client_address(transport.get_extra_info("peername"))
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or self._client is None:
            return
        # The idle timer restarts when a message begins and when one is answered,
        # not on every byte: a client trickling bytes cannot hold a slot forever.
        if not self._buffer:
            self._arm_idle()
        self._buffer += data
        while len(self._buffer) >= 2:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length == 0 or length > MAX_TCP_QUERY:
                transport.close()  # not a query we will ever answer; RFC 7766 lets us close
                return
            if len(self._buffer) < 2 + length:
                return
            message = bytes(self._buffer[2 : 2 + length])
            del self._buffer[: 2 + length]
            started = time.perf_counter()
            self._server.stats.tcp_queries += 1
            packet = self._server.answerer.answer_packet(message, self._client, tcp=True)
            if packet is not None:
                transport.write(_LENGTH.pack(len(packet)) + packet)
            if self._server.stats.latency_observe is not None:
                self._server.stats.latency_observe(time.perf_counter() - started, "tcp")
            self._answered += 1
            if self._answered >= self._server.max_queries:
                transport.close()  # flushes what was written, then closes
                return
            self._arm_idle()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self._server.idle_timeout, self._on_idle)

    def _on_idle(self) -> None:
        if self._transport is not None:
            self._transport.close()


@dataclass
class TCPServerState:
    answerer: Answerer
    stats: TransportStats
    max_connections: int
    max_queries: int
    idle_timeout: float
    connections: set[TCPProtocol] = field(default_factory=set)

    def protocol(self) -> TCPProtocol:
        return TCPProtocol(self)

    def close_all(self) -> None:
        for connection in list(self.connections):
            connection.close()


def _client_address(addr: object) -> IPAddress | None:
    if not isinstance(addr, tuple) or not addr:
        return None
    try:
        address = ip_address(str(addr[0]).split("%", 1)[0])
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d: locate and rate-limit them as IPv4.
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# Draining the UDP socket directly ---------------------------------------------------

# Datagrams handled per readable event before yielding to the event loop, so
# health checks and the admin API keep running under a flood.
MAX_DATAGRAMS_PER_WAKEUP: Final = 256


class _SocketTransport:
    """The one DatagramTransport method UDPProtocol uses, over a non-blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.dropped_sends = 0

    def sendto(self, data: bytes, addr: tuple[object, ...]) -> None:
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self.dropped_sends += 1  # the kernel's buffer is full: UDP may drop, and so do we
        except OSError as exc:
            log.debug("UDP send to %s failed: %s", addr, exc)


class UDPSocketServer:
    """Serve UDP by reading the socket whenever it is readable, many datagrams per wakeup.

    asyncio's datagram transports schedule one protocol callback per packet;
    reading the non-blocking socket directly in a bounded loop costs fewer
    event-loop round trips per query (measured with dnsperf: see
    docs/benchmarks.md). The per-datagram logic is UDPProtocol's, unchanged.
    """

    def __init__(self, host: str, port: int, protocol: UDPProtocol) -> None:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self._sock = socket.socket(family, kind, proto)
        self._sock.setblocking(False)
        try:
            self._sock.bind(address)
        except OSError:
            self._sock.close()
            raise
        self._protocol = protocol
        self._transport = _SocketTransport(self._sock)
        protocol.connection_made(typing.cast(asyncio.BaseTransport, self._transport))
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._on_readable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._loop = None
        self._sock.close()

    def _on_readable(self) -> None:
        receive = self._sock.recvfrom
        handle = self._protocol.datagram_received
        for _ in range(MAX_DATAGRAMS_PER_WAKEUP):
            try:
                data, addr = receive(MAX_UDP_QUERY + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors reported on the socket
                log.debug("UDP receive failed: %s", exc)
                return
            handle(data, addr)
