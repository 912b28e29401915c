"""The POP's HTTP client to its upstreams: failover across shards behind circuit breakers.

One :class:`UpstreamPool` per worker owns one `aiohttp.ClientSession` (keep-alive
connections, a connection cap per upstream) and one
:class:`edge.breaker.CircuitBreaker` per upstream base URL. ``fetch`` walks the
targets the caller resolved from the shard map, in failover order (the
region's shard, its secondary, the primary), and returns the first usable
answer with its whole body in memory.

Failover rules (why each one):

* GET and HEAD move to the next target on a connection error, a timeout, a
  malformed response or a 5xx status: they are safe and idempotent (RFC 9110
  section 9.2), so sending them twice costs nothing but load.
* Every other method (POST above all: holds and orders) moves on only when the
  request **cannot** have reached the upstream — the connection was refused,
  failed, or timed out while being established (or while waiting for a pooled
  connection). Once a byte may have been written, a failure is final and
  raises :class:`UpstreamUnavailable`, and a 5xx answer is returned as is: a
  second POST could create a second hold. A keep-alive connection that the
  upstream closed just as we reused it looks exactly like "sent, no answer",
  so such a POST fails rather than risk a duplicate; the client retries with
  its idempotency key if it has one.
* Targets whose breaker is open are skipped without a connection attempt. If
  every breaker refuses, the last target (the primary, the source of truth) is
  tried anyway: refusing to try anything would turn a correlated blip into a
  full outage for as long as the breakers stay open, and the primary is the one
  upstream the POP cannot route around. Its breaker ignores that forced
  attempt's outcome while open (`edge.breaker` rule 2).
* A body over `max_body` raises :class:`UpstreamTooLarge` at once, with no
  failover and no breaker failure: another copy of the same document would be
  as large, and one oversized resource must not let a client trip the breakers
  of a healthy shard.

Every wait is bounded twice: by the session's `ClientTimeout` (connect,
socket read, total per attempt) and by the caller's `deadline` (monotonic
seconds), which covers the whole failover chain; no attempt starts once it
has passed and a running one is cut off at it.

Hop-by-hop fields (RFC 9110 section 7.6.1: Connection, the fields it names,
Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade, Proxy-*) are dropped in
both directions. ``Host`` is set for each target and ``Content-Length`` is
computed from the body; the pool adds no ``Via`` or forwarding fields of its
own — those come from the caller's headers only.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from edge.breaker import BreakerConfig, CircuitBreaker
from edge.errors import EdgeError, InternalError, MalformedHeader, PeerError
from edge.messages import Headers

SECOND: Final = 1.0
KiB: Final = 1024
MiB: Final = 1024 * KiB

# A loopback or LAN upstream accepts in well under a millisecond; one that has
# not accepted within a second is overloaded or gone, and the next target is a
# better bet than waiting out TCP's SYN retransmissions.
DEFAULT_CONNECT_TIMEOUT: Final = 1 * SECOND
# Item and event reads answer in milliseconds; five seconds without a byte
# means a stuck upstream, not a slow query.
DEFAULT_READ_TIMEOUT: Final = 5 * SECOND
# One attempt, headers and body; the caller's deadline usually cuts it shorter.
DEFAULT_TOTAL_TIMEOUT: Final = 10 * SECOND
# Per upstream: enough for a miss storm that coalescing did not absorb, few
# enough that one POP cannot exhaust a shard's accept queue.
DEFAULT_CONNECTIONS_PER_HOST: Final = 100
DEFAULT_MAX_CONNECTIONS: Final = 400
# Below aiohttp's server keep-alive (75 s) so the POP, not the upstream, closes
# idle connections — fewer requests written into a connection being closed.
DEFAULT_KEEPALIVE_TIMEOUT: Final = 15 * SECOND
# Item documents are a few KiB and event lists a few hundred; anything near
# this is a bug or an attack, and it would hold that much memory per request.
DEFAULT_MAX_BODY: Final = 8 * MiB
# aiohttp's own limits for one response header line and the number of fields.
MAX_RESPONSE_FIELD_SIZE: Final = 8 * KiB
MAX_RESPONSE_FIELDS: Final = 128
# Body reads in 64 KiB chunks: a few system calls per document, and the cap is
# checked often enough to stop within one chunk of it.
READ_CHUNK_BYTES: Final = 64 * KiB
# Upstreams the pool remembers (breaker and health). Shards come and go with
# demand; this bounds the table while far exceeding any real shard count.
MAX_TRACKED_UPSTREAMS: Final = 1024

# Methods that may be sent again to the next target after a failure or a 5xx.
FAILOVER_METHODS: Final = frozenset({"GET", "HEAD"})

# RFC 9110 section 7.6.1 (and the Proxy-* family, checked by prefix).
HOP_BY_HOP_FIELDS: Final = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "proxy-connection"}
)
_HOP_BY_HOP_PREFIX: Final = "proxy-"
# Request fields the pool sets itself: Host per target; Content-Length from the
# body (a caller's stale length would desynchronise the connection).
_REQUEST_FIELDS_SET_HERE: Final = ("host", "content-length")
# Fields aiohttp would invent when absent. A proxy forwards the client's own
# (an invented Accept-Encoding would fetch gzip for a client that never asked).
_NO_AUTO_FIELDS: Final = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})


class Outcome(enum.StrEnum):
    """How one attempt ended; also the label value for latency metrics."""

    OK = "ok"  # any status below 500
    SERVER_ERROR = "5xx"
    TIMEOUT = "timeout"
    CONNECT_ERROR = "connect_error"
    PROTOCOL_ERROR = "protocol_error"  # reset, closed, or a response we could not parse
    TOO_LARGE = "too_large"


LatencyObserver = Callable[[str, float, Outcome], None]
"""``on_latency(target, seconds, outcome)``: called once per attempt, for metrics."""


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """Limits and timeouts of the upstream client (seconds and bytes).

    Attributes:
        connect_timeout: waiting for a pooled connection plus establishing one.
        read_timeout: the longest silence between two reads of a response.
        total_timeout: one attempt, from sending to the last body byte.
        connections_per_host: open connections to one upstream.
        max_connections: open connections to all upstreams.
        keepalive_timeout: how long an idle connection is kept for reuse.
        max_body: the largest response body accepted.
        breaker: how each upstream's circuit breaker opens and recovers.
    """

    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT
    connections_per_host: int = DEFAULT_CONNECTIONS_PER_HOST
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    max_body: int = DEFAULT_MAX_BODY
    breaker: BreakerConfig = field(default_factory=BreakerConfig)


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """A complete upstream answer.

    `request_time` and `response_time` are wall-clock POSIX seconds taken just
    before the request was sent and when the response head arrived, as RFC 9111
    section 4.2.3 needs for the age calculation. `headers` hold no hop-by-hop
    fields; `Content-Length`, if the upstream sent one, is the upstream's.
    """

    status: int
    headers: Headers
    body: bytes
    target: str
    request_time: float
    response_time: float


class UpstreamFailure(EdgeError):
    """One attempt at one target failed.

    Attributes:
        target: the base URL tried, or None when no attempt could start.
        outcome: what went wrong.
        may_have_reached_upstream: False only when the request surely was not
            sent (so even a POST may go to the next target).
    """

    def __init__(self, message: str, *, target: str | None, outcome: Outcome, may_have_reached_upstream: bool) -> None:
        super().__init__(message)
        self.target = target
        self.outcome = outcome
        self.may_have_reached_upstream = may_have_reached_upstream


class UpstreamUnavailable(EdgeError):
    """No target gave a usable answer (answer 502, or 504 when `last_error` is a timeout).

    Attributes:
        last_error: the last attempt's failure.
        response: the last 5xx response received, if any: the caller may relay
            it, or serve a stale response where stale-if-error allows.
    """

    def __init__(self, last_error: UpstreamFailure, response: UpstreamResponse | None = None) -> None:
        super().__init__(f"no upstream answered: {last_error.message}")
        self.last_error = last_error
        self.response = response


class UpstreamTooLarge(PeerError):
    """The upstream's response body is over the configured `max_body` (answer 502)."""


@dataclass(frozen=True, slots=True)
class UpstreamHealth:
    """One upstream's line in ``/_edge/health``.

    Attributes:
        state: "closed", "open" or "half_open".
        consecutive_failures: failures in a row since the last success.
        ewma_latency: moving average of response times in seconds, or None.
        last_error: the most recent failure's message, or None.
        retry_in: seconds until an open breaker lets a trial through, or None.
    """

    state: str
    consecutive_failures: int
    ewma_latency: float | None
    last_error: str | None
    retry_in: float | None


def strip_hop_by_hop(headers: Headers) -> Headers:
    """`headers` without hop-by-hop fields (RFC 9110 section 7.6.1), including those Connection names."""
    named = {option.strip().lower() for value in headers.get_all("Connection") for option in value.split(",")}
    proxy_fields = {name for name in headers.names() if name.startswith(_HOP_BY_HOP_PREFIX)}
    return headers.without(HOP_BY_HOP_FIELDS | named | proxy_fields)


@dataclass(slots=True)
class _Upstream:
    target: str  # as the caller names it: the key in metrics and health
    base: str  # without a trailing slash
    host: str  # the Host field value for this target
    breaker: CircuitBreaker
    last_error: str | None = None


class UpstreamPool:
    """The upstream client of one POP worker. Use inside one event loop.

    ``await start()`` before the first ``fetch`` and ``await close()`` at
    shutdown (or ``async with``).
    """

    def __init__(
        self,
        config: UpstreamConfig | None = None,
        *,
        on_latency: LatencyObserver | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        Args:
            config: limits and timeouts; the defaults otherwise.
            on_latency: called after every attempt with (target, seconds, outcome).
            clock: wall-clock POSIX seconds, for request and response times.
            monotonic: the clock `deadline` and the breakers are measured in.
        """
        self._config = config if config is not None else UpstreamConfig()
        self._on_latency = on_latency
        self._clock = clock
        self._monotonic = monotonic
        self._upstreams: OrderedDict[str, _Upstream] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the connection pool. Raises InternalError when already started."""
        if self._session is not None:
            raise InternalError("upstream pool started twice")
        config = self._config
        connector = aiohttp.TCPConnector(
            limit=config.max_connections,
            limit_per_host=config.connections_per_host,
            keepalive_timeout=config.keepalive_timeout,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=config.total_timeout, connect=config.connect_timeout, sock_read=config.read_timeout
            ),
            # A proxy relays bytes: no cookies remembered across clients, no
            # decompression, no redirects followed (see `fetch`).
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=_NO_AUTO_FIELDS,
            max_field_size=MAX_RESPONSE_FIELD_SIZE,
            max_headers=MAX_RESPONSE_FIELDS,
            read_bufsize=READ_CHUNK_BYTES,
        )

    async def close(self) -> None:
        """Close every connection. Safe to call twice or before ``start``."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def fetch(
        self,
        targets: Sequence[str],
        method: str,
        path_and_query: str,
        headers: Headers,
        body: bytes | None,
        *,
        deadline: float,
    ) -> UpstreamResponse:
        """Send the request to the first target that answers usefully (see the module's rules).

        Args:
            targets: base URLs (``http://127.0.0.1:8110``) in failover order.
            method: the request method, case-sensitive.
            path_and_query: origin-form target, starting with "/", already encoded.
            headers: the fields to forward; hop-by-hop ones, Host and
                Content-Length are replaced.
            body: the request body, or None.
            deadline: `monotonic` seconds by which the whole exchange must end.

        Returns:
            The first response below 500 (or a 5xx to a request that may not
            fail over), with its complete body.

        Raises:
            UpstreamUnavailable: every target allowed was tried and failed, the
                deadline passed, or a request that may not fail over failed.
            UpstreamTooLarge: the body is over `max_body`.
            InternalError: not started, no targets, a malformed target or path.
        """
        session = self._session
        if session is None:
            raise InternalError("upstream pool used before start()")
        if not targets:
            raise InternalError("fetch needs at least one upstream target")
        if not path_and_query.startswith("/"):
            raise InternalError(f"upstream request target {path_and_query!r} is not in origin-form")
        may_fail_over = method in FAILOVER_METHODS
        forwarded = strip_hop_by_hop(headers).without(_REQUEST_FIELDS_SET_HERE)

        last_error: UpstreamFailure | None = None
        last_5xx: UpstreamResponse | None = None
        attempted = False
        for index, target in enumerate(targets):
            now = self._monotonic()
            if now >= deadline:
                if last_error is None:
                    last_error = UpstreamFailure(
                        "deadline passed before any upstream was tried",
                        target=None,
                        outcome=Outcome.TIMEOUT,
                        may_have_reached_upstream=False,
                    )
                break
            upstream = self._upstream(target)
            forced = not attempted and index == len(targets) - 1
            if not upstream.breaker.allow(now) and not forced:
                continue
            attempted = True
            try:
                response = await self._attempt(session, upstream, method, path_and_query, forwarded, body, deadline)
            except UpstreamFailure as failure:
                last_error = failure
                if may_fail_over or not failure.may_have_reached_upstream:
                    continue
                break
            if response.status >= 500 and may_fail_over:
                last_5xx = response
                last_error = UpstreamFailure(
                    f"{target} answered {response.status}",
                    target=target,
                    outcome=Outcome.SERVER_ERROR,
                    may_have_reached_upstream=True,
                )
                continue
            return response
        if last_error is None:  # every target but the last was skipped and the last refused: cannot happen
            raise InternalError("no upstream attempt was made")
        raise UpstreamUnavailable(last_error, last_5xx)

    def snapshot(self) -> dict[str, UpstreamHealth]:
        """Each known upstream's breaker state and health, for ``/_edge/health``."""
        now = self._monotonic()
        report: dict[str, UpstreamHealth] = {}
        for target, upstream in self._upstreams.items():
            breaker = upstream.breaker
            open_until = breaker.open_until
            report[target] = UpstreamHealth(
                state=breaker.state.value,
                consecutive_failures=breaker.consecutive_failures,
                ewma_latency=breaker.ewma_latency,
                last_error=upstream.last_error,
                retry_in=None if open_until is None else max(open_until - now, 0.0),
            )
        return report

    def _upstream(self, target: str) -> _Upstream:
        upstream = self._upstreams.get(target)
        if upstream is not None:
            self._upstreams.move_to_end(target)
            return upstream
        upstream = _Upstream(target, *_parse_target(target), CircuitBreaker(self._config.breaker))
        self._upstreams[target] = upstream
        if len(self._upstreams) > MAX_TRACKED_UPSTREAMS:
            self._upstreams.popitem(last=False)
        return upstream

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        upstream: _Upstream,
        method: str,
        path_and_query: str,
        headers: Headers,
        body: bytes | None,
        deadline: float,
    ) -> UpstreamResponse:
        """One request to one target; records the outcome. Raises UpstreamFailure or UpstreamTooLarge."""
        target = upstream.target
        url = URL(upstream.base + path_and_query, encoded=True)
        fields = CIMultiDict(headers)
        fields["Host"] = upstream.host
        started = self._monotonic()
        request_time = self._clock()
        got_response = False
        # The deadline cuts the attempt wherever it is; the session's
        # ClientTimeout bounds each phase below it.
        deadline_scope = asyncio.timeout(deadline - started)
        try:
            async with (
                deadline_scope,
                session.request(method, url, headers=fields, data=body, allow_redirects=False) as resp,
            ):
                response_time = self._clock()
                got_response = True
                response_headers = _response_headers(resp.raw_headers)
                response_body = await _read_body(resp, self._config.max_body)
                status = resp.status
        except UpstreamTooLarge:
            # The upstream is healthy; the document is the problem (module docstring).
            self._finish(upstream, Outcome.TOO_LARGE, started, got_response=True, error="response body too large")
            raise
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # Raised before the request was written: connect refused/failed, or
            # no connection (pooled or new) within connect_timeout.
            outcome = Outcome.TIMEOUT if isinstance(exc, TimeoutError) else Outcome.CONNECT_ERROR
            raise self._failure(upstream, outcome, started, f"cannot connect to {target}: {exc}", sent=False) from exc
        except TimeoutError as exc:
            what = "the request deadline passed" if deadline_scope.expired() else "no answer within the read timeout"
            raise self._failure(upstream, Outcome.TIMEOUT, started, f"{target}: {what}", sent=True) from exc
        except (aiohttp.ClientError, MalformedHeader, UnicodeDecodeError) as exc:
            raise self._failure(
                upstream, Outcome.PROTOCOL_ERROR, started, f"{target} failed: {exc!r}", sent=True, answered=got_response
            ) from exc
        outcome = Outcome.SERVER_ERROR if status >= 500 else Outcome.OK
        self._finish(upstream, outcome, started, got_response=True, error=f"status {status}" if status >= 500 else None)
        return UpstreamResponse(status, response_headers, response_body, target, request_time, response_time)

    def _failure(
        self, upstream: _Upstream, outcome: Outcome, started: float, message: str, *, sent: bool, answered: bool = False
    ) -> UpstreamFailure:
        self._finish(upstream, outcome, started, got_response=answered, error=message)
        return UpstreamFailure(message, target=upstream.target, outcome=outcome, may_have_reached_upstream=sent)

    def _finish(
        self, upstream: _Upstream, outcome: Outcome, started: float, *, got_response: bool, error: str | None
    ) -> None:
        now = self._monotonic()
        seconds = max(now - started, 0.0)
        success = outcome in (Outcome.OK, Outcome.TOO_LARGE)
        upstream.breaker.record(success, now, latency=seconds if got_response else None)
        if error is not None and not success:
            upstream.last_error = error
        if self._on_latency is not None:
            self._on_latency(upstream.target, seconds, outcome)


def _parse_target(target: str) -> tuple[str, str]:
    """(base URL without trailing slash, Host value) of a target. Raises InternalError."""
    try:
        url = URL(target)
    except ValueError as exc:
        raise InternalError(f"upstream target {target!r} is not a URL") from exc
    if url.scheme not in ("http", "https") or not url.host or url.query_string or url.fragment:
        raise InternalError(f"upstream target {target!r} must be an http(s) base URL without query or fragment")
    host = url.host_port_subcomponent
    if host is None:
        raise InternalError(f"upstream target {target!r} has no host")
    return str(url).rstrip("/"), host


def _response_headers(raw: Sequence[tuple[bytes, bytes]]) -> Headers:
    """Response fields without hop-by-hop ones. Raises MalformedHeader, UnicodeDecodeError.

    Values are decoded as latin-1, which maps every byte to one character: the
    POP writes them back with latin-1, so the client gets the upstream's bytes
    (RFC 9110 section 5.5 treats obs-text as opaque), whatever their charset.
    """
    return strip_hop_by_hop(Headers((name.decode("ascii"), value.decode("latin-1")) for name, value in raw))


async def _read_body(resp: aiohttp.ClientResponse, max_body: int) -> bytes:
    """The whole body, refusing more than `max_body` bytes. Raises UpstreamTooLarge."""
    if resp.content_length is not None and resp.content_length > max_body:
        raise UpstreamTooLarge(f"upstream declared a {resp.content_length}-byte body; the cap is {max_body}")
    return await read_capped(resp, max_body, lambda: UpstreamTooLarge(f"upstream body is over the {max_body}-byte cap"))


async def read_capped(response: aiohttp.ClientResponse, limit: int, too_large: Callable[[], Exception]) -> bytes:
    """The whole body; raises `too_large()` as soon as more than `limit` bytes have arrived.

    Every answer the POP reads from a peer goes through here: upstream
    bodies, the change feed, the shard map and the predictor's hints.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(READ_CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise too_large()
        chunks.append(chunk)
    return b"".join(chunks)
