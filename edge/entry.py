"""A cached response, pre-serialized so that a hit costs almost nothing.

When a response is stored, everything a hit needs is computed once: the
status line and header block as bytes (hop-by-hop fields and Age removed,
Content-Length fixed), the body, and the wall-clock moments its freshness
windows end. A hit on the fast path then only computes the Age (RFC 9111
section 4.2.3: the corrected initial age plus resident time, which grows one
for one with the clock) and joins bytes.

Entries with Vary keep the request headers they were selected by; the fast
path only serves entries without Vary and requests without cache directives
or validators — everything else goes through `edge.freshness.decide`.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from edge.cachecontrol import response_cache_control
from edge.cachekey import CacheKey
from edge.freshness import freshness_lifetime, stored_response_age
from edge.messages import Headers, StoredResponse
from edge.syntax import DELTA_SECONDS_CAP

# Fields the POP writes itself on every response it sends.
_OWN_FIELDS: Final = frozenset({"age", "content-length", "connection", "keep-alive", "transfer-encoding", "x-cache"})
_CRLF: Final = b"\r\n"


@dataclass(slots=True)
class CachedEntry:
    key: CacheKey
    stored: StoredResponse
    body: bytes
    request_headers: Headers  # of the request that produced it, for Vary (RFC 9111 section 4.1)
    vary: str | None
    head: bytes  # "HTTP/1.1 …\r\n" and every stored field but those in _OWN_FIELDS, each ending in CRLF
    initial_age: float  # corrected_initial_age: the age at response_time
    fresh_until: float  # wall-clock second at which it turns stale
    swr_until: float  # end of stale-while-revalidate (RFC 5861 section 3); == fresh_until when none
    fast: bool  # may be served without evaluating request directives
    item_id: str | None = None  # the inventory item it describes, for push invalidation
    event_id: str | None = None

    @property
    def size(self) -> int:
        """What the entry costs the cache: body plus serialized head, roughly its memory."""
        return len(self.body) + len(self.head) + 256

    def age(self, now: float) -> int:
        # RFC 9111 section 1.2.2: an age beyond 2^31 is sent as 2^31.
        return min(DELTA_SECONDS_CAP, max(0, int(self.initial_age + (now - self.stored.response_time))))

    def render(self, now: float, *, head_only: bool, keep_alive: bool, x_cache: bytes = b"HIT") -> bytes:
        """The full response bytes for a hit at `now`."""
        if self.stored.status == 204:  # RFC 9110 section 8.6: no Content-Length in a 204
            fields = b"Age: %d\r\nX-Cache: %s\r\n" % (self.age(now), x_cache)
        else:
            fields = b"Age: %d\r\nContent-Length: %d\r\nX-Cache: %s\r\n" % (self.age(now), len(self.body), x_cache)
        parts = [self.head, fields, end_of_head(keep_alive)]
        if not head_only:
            parts.append(self.body)
        return b"".join(parts)


def make_entry(
    key: CacheKey,
    stored: StoredResponse,
    body: bytes,
    request_headers: Headers,
) -> CachedEntry:
    """Pre-compute a stored response's bytes and freshness windows."""
    lifetime = freshness_lifetime(stored)
    initial_age = stored_response_age(stored, stored.response_time)
    fresh_until = stored.response_time + lifetime - initial_age
    directives = response_cache_control(stored.headers)
    swr = directives.stale_while_revalidate
    forbids_stale = directives.no_cache or directives.forbids_stale(shared=True)
    swr_until = fresh_until + swr if swr and not forbids_stale else fresh_until
    vary = stored.headers.combined("vary")
    fast = vary is None and not directives.no_cache and not directives.no_cache_fields
    return CachedEntry(
        key=key,
        stored=stored,
        body=body,
        request_headers=request_headers,
        vary=vary,
        head=serialize_head(stored.status, stored.headers),
        initial_age=initial_age,
        fresh_until=fresh_until,
        swr_until=swr_until,
        fast=fast,
    )


def serialize_head(status: int, headers: Headers) -> bytes:
    """Status line and header fields, without the fields the POP writes itself."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))]
    for name, value in headers:
        if name.lower() not in _OWN_FIELDS:
            lines.append(name.encode("latin-1") + b": " + value.encode("latin-1") + _CRLF)
    return b"".join(lines)


def end_of_head(keep_alive: bool) -> bytes:
    """The bytes closing a response head: with `Connection: close` unless the connection stays open."""
    return b"\r\n" if keep_alive else b"Connection: close\r\n\r\n"


def plain_response(status: int, headers: Headers, body: bytes, *, keep_alive: bool, send_body: bool = True) -> bytes:
    """A whole response the POP writes itself (errors, its own endpoints): head, Content-Length, body."""
    head = serialize_head(status, headers) + b"Content-Length: %d\r\n" % len(body) + end_of_head(keep_alive)
    return head + body if send_body else head


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"
