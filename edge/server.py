"""The POP's HTTP/1.1 server: an asyncio protocol with httptools' C parser.

Hits must cost almost nothing (issue 4: the hit path decides everything), so
requests are not routed through a web framework. Each connection parses with
httptools; a complete plain GET/HEAD goes to `Pop.fast_hit` synchronously and
its pre-serialized bytes are written at once. Anything else — a miss, a
conditional or directive-laden request, a write, an internal endpoint — runs
as a task owned by the connection, one request at a time (pipelined requests
queue behind it and are answered in order, RFC 9112 section 9.3.2).

Limits: request target length (414), header bytes (431), body bytes (413),
connections (503 and close), idle keep-alive time, and a deadline on every
request (504). Malformed requests get 400 and the connection closes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import httptools

from edge.errors import MalformedHeader
from edge.messages import Headers
from edge.pop import FORWARDED_METHODS, ClientRequest, Pop

log = logging.getLogger("boxoffice.edge")
access_log = logging.getLogger("boxoffice.edge.access")

# Headers that take a request off the fast path: cache directives,
# validators, ranges, credentials and expectations all need the full rules.
_SLOW_FIELDS: Final = frozenset(
    {
        b"cache-control", b"pragma", b"if-none-match", b"if-modified-since", b"if-match",
        b"if-unmodified-since", b"if-range", b"range", b"authorization", b"expect", b"upgrade",
    }
)  # fmt: skip
# With per-user hints on, these need the slow path too (Link headers, prefetch counting).
_HINT_FIELDS: Final = frozenset({b"cookie", b"sec-purpose", b"x-sec-purpose", b"purpose", b"save-data"})
MAX_PIPELINED: Final = 32  # queued requests per connection before reading pauses

Handler = Callable[[ClientRequest], Awaitable[bytes]]


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class ServerState:
    pop: Pop
    internal: Callable[[str], Handler | None]  # target -> handler for /_edge, /metrics, /sw.js, /v1/hints…
    max_connections: int
    max_url_bytes: int
    max_header_bytes: int
    max_body_bytes: int
    keepalive_timeout: float
    request_timeout: float
    slow_fields: frozenset[bytes] = _SLOW_FIELDS
    connections: set[HTTPProtocol] = field(default_factory=set)
    closing: bool = False
    access_log: bool = False

    def protocol(self) -> HTTPProtocol:
        return HTTPProtocol(self)

    def close_idle(self) -> None:
        self.closing = True
        for connection in list(self.connections):
            connection.close_if_idle()

    async def wait_closed(self, grace: float) -> None:
        """Let busy connections finish their request for up to `grace` seconds, then abort the rest."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while self.connections:
                    for connection in list(self.connections):
                        connection.close_if_idle()
                    await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.abort()


class HTTPProtocol(asyncio.Protocol):
    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._queue: collections.deque[ClientRequest] = collections.deque()
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._close_after = False
        self._failure: tuple[int, str] | None = None  # a malformed request behind ones still being answered
        self._reset_message()

    # Connection lifecycle ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = typing.cast(asyncio.Transport, transport)
        if len(self._state.connections) >= self._state.max_connections or self._state.closing:
            self._transport.write(self._state.pop.error(503, "too many connections", None, retry_after=1))
            self._transport.close()
            return
        self._state.connections.add(self)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._transport = None

    def close_if_idle(self) -> None:
        if not self._busy and not self._queue and self._transport is not None:
            self._transport.close()
        else:
            self._close_after = True

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # Parsing ---------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # llhttp stops here for CONNECT and for requests with Upgrade; neither is served.
            if self._parser.get_method() == b"CONNECT":
                self._fail(405, "CONNECT is not allowed: this is not a proxy")
            else:
                self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            # An exception raised in a callback (our _Reject) arrives wrapped in
            # HttpParserCallbackError, with the original as its context.
            reject = exc.__context__
            if isinstance(reject, _Reject):
                self._fail(reject.status, reject.message)
            else:
                self._fail(400, f"malformed request: {exc}")

    def on_message_begin(self) -> None:
        self._reset_message()
        # The idle timer keeps running until the request is complete: a client
        # sending a few bytes and then nothing must not hold the connection forever.
        if self._idle is None:
            self._arm_idle()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._state.max_url_bytes:
            raise _Reject(414, f"request target longer than {self._state.max_url_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._state.max_header_bytes:
            raise _Reject(431, f"request headers larger than {self._state.max_header_bytes} bytes")
        if self._in_trailer:
            return  # RFC 9110 section 6.5.1: trailer fields are never merged into the header section
        lower = name.lower()
        if lower in self._state.slow_fields:
            self._slow = True
            if lower == b"expect" and value.strip(b" \t").lower() == b"100-continue":
                self._expect_continue = True
        if lower == b"host":
            self._hosts += 1
        if lower == b"transfer-encoding" and value.strip(b" \t").lower() != b"chunked":
            # llhttp accepts "gzip, chunked" and strips only the chunked framing;
            # forwarded without its coding, the body would reach the upstream
            # as something else (RFC 9112 section 6.1: 501 for codings not understood).
            raise _Reject(501, "only the chunked transfer coding is supported")
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_trailer = True  # llhttp reports a chunked body's trailer fields through on_header too
        # RFC 9110 section 10.1.1: the client waits for this before sending the body. Only
        # when nothing is being answered: an interim response must follow the earlier final ones
        # (the client then sends the body after its own timeout).
        if (
            self._expect_continue
            and not self._busy
            and not self._queue
            and self._transport is not None
            and self._parser.get_http_version() == "1.1"
        ):
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > self._state.max_body_bytes:
            raise _Reject(413, f"request body larger than {self._state.max_body_bytes} bytes")

    def on_message_complete(self) -> None:
        if self._idle is not None:
            self._idle.cancel()  # the request is in; `request_timeout` bounds the rest
            self._idle = None
        if self._parser.should_upgrade():
            return  # CONNECT or an upgrade: the HttpParserUpgrade that follows answers it (data_received)
        method = self._parser.get_method().decode("ascii", "replace")
        http_version = self._parser.get_http_version()
        keep_alive = self._parser.should_keep_alive() and not self._state.closing
        target = self._url.decode("latin-1")
        if http_version == "1.1" and self._hosts != 1:
            raise _Reject(400, "an HTTP/1.1 request needs exactly one Host header")
        if not self._slow and not self._queue and not self._busy and method in ("GET", "HEAD"):
            data = self._state.pop.fast_hit(target, head_only=method == "HEAD", keep_alive=keep_alive)
            if data is not None and self._transport is not None:
                self._transport.write(data)
                if self._state.access_log:
                    access_log.info('%s "%s %s" 200 %d HIT', self._peer, method, target, len(data))
                if not keep_alive:
                    self._transport.close()
                else:
                    self._arm_idle()
                return
        else:
            self._state.pop.stats.requests += 1
        try:
            headers = Headers((name.decode("latin-1"), value.decode("latin-1")) for name, value in self._raw_headers)
        except MalformedHeader as exc:
            raise _Reject(400, f"malformed header: {exc.message}") from None
        self._queue.append(ClientRequest(method, target, headers, bytes(self._body), keep_alive, self._peer))
        if len(self._queue) >= MAX_PIPELINED and self._transport is not None:
            self._transport.pause_reading()
        self._next()

    # Answering -------------------------------------------------------------------
    def _next(self) -> None:
        if self._busy or not self._queue:
            return
        request = self._queue.popleft()
        self._busy = True
        self._task = asyncio.ensure_future(self._answer(request))

    async def _answer(self, request: ClientRequest) -> None:
        handler = self._state.internal(request.target) or self._state.pop.handle
        try:
            async with asyncio.timeout(self._state.request_timeout):
                data = await handler(request)
        except TimeoutError:
            data = self._state.pop.error(504, "the request took too long", request)
        except Exception:
            # We broke: answer (and close) rather than leave the connection busy forever.
            log.exception("%s %s failed", request.method, request.target[:200])
            data = self._state.pop.error(500, "the POP failed to answer; see its log", request)
        transport = self._transport
        if transport is None:
            return
        transport.write(data)
        if self._state.access_log:
            access_log.info(
                '%s "%s %s" %s %d', self._peer, request.method, request.target, data[9:12].decode(), len(data)
            )
        self._busy = False
        head_end = data.find(b"\r\n\r\n")
        if (
            not request.keep_alive
            or (self._close_after and not self._queue)
            or data.find(b"\r\nConnection: close\r\n", 0, head_end + 2) >= 0  # in the head, not the body
        ):
            transport.close()
            return
        if self._failure is not None and not self._queue:
            self._fail(*self._failure)
            return
        if len(self._queue) < MAX_PIPELINED and self._failure is None:
            transport.resume_reading()
        if self._queue:
            self._next()
        else:
            self._arm_idle()

    def _fail(self, status: int, message: str) -> None:
        transport = self._transport
        if transport is None:
            return
        if self._busy or self._queue:
            # Responses go out in request order (RFC 9112 section 9.3.2): the
            # error follows the answers to the requests before the bad one.
            self._failure = (status, message)
            transport.pause_reading()
            return
        self._queue.clear()  # nothing is answered after the error
        extra = (("Allow", ", ".join(sorted(FORWARDED_METHODS))),) if status == 405 else ()
        transport.write(self._state.pop.error(status, message, None, extra=extra))
        transport.close()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self._state.keepalive_timeout, self._on_idle)

    def _on_idle(self) -> None:
        self._idle = None
        if not self._busy and self._transport is not None:
            self._transport.close()

    def _reset_message(self) -> None:
        self._url = bytearray()
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._hosts = 0
        self._body = bytearray()
        self._slow = False
        self._in_trailer = False
        self._expect_continue = False


def slow_fields(hints_enabled: bool) -> frozenset[bytes]:
    return _SLOW_FIELDS | _HINT_FIELDS if hints_enabled else _SLOW_FIELDS
