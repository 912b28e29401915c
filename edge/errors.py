"""The edge POP's exception family.

Every error the edge raises on purpose is an :class:`EdgeError`, split the way
the adapter has to answer it:

* :class:`PeerError` — a peer sent something we will not act on. The adapter
  answers 400 when the peer is the client (414 for
  :class:`RequestTargetTooLong`) and 502 when it is the upstream. Nothing is
  stored in the cache from a message that raised one.
* :class:`InternalError` — we broke; answer 500.

The pure cores (`edge.cachecontrol`, `edge.freshness`, `edge.cachekey`, ...)
raise only :class:`PeerError` subclasses, and only where their docstrings say
so; header *values* that are merely invalid are handled the way RFC 9111 says
(ignored, or read as "stale") and never raise.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every error the edge raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PeerError(EdgeError):
    """The peer (client or upstream) sent a message we refuse to act on."""


class MalformedHeader(PeerError):
    """A header field line that HTTP forbids outright: a field name that is not a
    token (RFC 9110 section 5.1) or a value holding CR, LF or NUL (section 5.5)."""


class MalformedRequestTarget(PeerError):
    """A request target or authority we cannot turn into a safe cache key:
    another scheme, userinfo, a bad host or port, dot segments, bad escapes."""


class RequestTargetTooLong(MalformedRequestTarget):
    """The request target is longer than `edge.cachekey.MAX_TARGET_LENGTH` (answer 414)."""


class InternalError(EdgeError):
    """An invariant of ours does not hold (answer 500)."""
