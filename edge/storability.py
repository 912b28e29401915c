"""May this response be stored, and which of its header fields (RFC 9111 section 3).

`why_not_storable` walks the conditions of section 3 in order and names the
first one that fails; `is_storable` is its yes/no. `headers_to_store` is what
goes into the cache once the answer is yes: the received fields minus those
section 3.1 keeps out, plus a Date if the response had none (RFC 9110 section
6.6.1).

Policies this cache adds on top of the RFC (storing is never required, so
refusing is always allowed; each is a safety choice):

* Only responses to GET are stored. A HEAD is answered from the stored GET,
  and GET and HEAD share a cache key, so a stored HEAD response (no content)
  must never be found by a GET.
* 206 and 304 are never stored on their own: this cache does not combine
  partial content (section 3.4), and a 304 only refreshes a stored response
  (section 4.3.4).
* A shared cache does not store a response carrying Set-Cookie unless the
  origin excluded that field with ``private="Set-Cookie"`` or
  ``no-cache="Set-Cookie"`` (sections 5.2.2.4 and 5.2.2.7; the field is then
  dropped before storage). RFC 9111 section 7.3 notes that Set-Cookie alone
  does not stop caching, but replaying one visitor's session cookie to every
  other visitor is session fixation, and ``public`` is commonly sent by
  frameworks that add a session cookie to every response. nginx, Varnish and
  Cloudflare refuse such responses by default too.
* A response with ``Vary: *`` (or a Vary we cannot read) is not stored: it can
  never be selected for a later request (section 4.1).
* must-understand is honoured only in the restrictive direction: the status
  must be one this cache understands, and no-store still wins. Section
  5.2.2.3 lets a cache that understands the status ignore no-store; we do not.
"""

from __future__ import annotations

from typing import Final

from edge.cachecontrol import ResponseCacheControl, date_value, request_cache_control, response_cache_control
from edge.cachekey import vary_field_names
from edge.httpdate import format_http_date
from edge.messages import Headers, Request, Response
from edge.syntax import split_list

# RFC 9110 section 15.1: status codes that are heuristically cacheable.
HEURISTICALLY_CACHEABLE_STATUSES: Final = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})

# Status codes whose caching rules this cache implements (the must-understand
# test, RFC 9111 section 5.2.2.3): the heuristically cacheable ones except 206,
# plus the redirects and errors whose semantics for caches RFC 9110 defines.
UNDERSTOOD_STATUSES: Final = frozenset(
    {200, 203, 204, 300, 301, 302, 303, 307, 308, 400, 403, 404, 405, 410, 414, 500, 501, 502, 503, 504}
)

# Section 3: we store responses to GET only (see the module docstring).
STORABLE_METHODS: Final = frozenset({"GET"})

# RFC 9110 section 7.6.1: connection-specific fields, removed before forwarding
# and therefore before storage (RFC 9111 section 3.1).
HOP_BY_HOP_FIELDS: Final = frozenset(
    {"connection", "proxy-connection", "keep-alive", "te", "transfer-encoding", "upgrade"}
)
# RFC 9111 section 3.1: fields specific to the proxy used to forward the request.
PROXY_SPECIFIC_FIELDS: Final = frozenset({"proxy-authenticate", "proxy-authentication-info", "proxy-authorization"})


def why_not_storable(request: Request, response: Response, *, shared: bool = True) -> str | None:
    """The first RFC 9111 section 3 condition (or policy above) that forbids storing, or None.

    Args:
        request: the request as forwarded upstream (method and header fields).
        response: the final response received for it.
        shared: True for a shared cache such as a POP; False for a private one.

    Returns:
        None when the response may be stored, else a short reason for logs.
    """
    if request.method not in STORABLE_METHODS:
        return f"method {request.method} is not stored"
    if not 200 <= response.status <= 599:  # RFC 9110 section 15: 1xx is interim, the rest not a status
        return "status is not a final status code"
    if response.status in (206, 304):
        return f"status {response.status} is not stored on its own"
    if request_cache_control(request.headers).no_store:
        return "request no-store (section 5.2.1.5)"
    directives = response_cache_control(response.headers)
    if directives.no_store:
        return "response no-store (section 5.2.2.5)"
    if directives.must_understand and response.status not in UNDERSTOOD_STATUSES:
        return "must-understand with a status this cache does not understand (section 5.2.2.3)"
    if shared and directives.private:
        return "private in a shared cache (section 5.2.2.7)"
    if shared and "authorization" in request.headers and not _allows_authorized(directives):
        return "request had Authorization and no public, must-revalidate or s-maxage (section 3.5)"
    if shared and "set-cookie" in response.headers and "set-cookie" not in _fields_kept_out(directives, shared):
        return "Set-Cookie in a shared cache without private= or no-cache= naming it"
    if vary_field_names(response.headers) is None:
        return "Vary: * or an unreadable Vary never matches (section 4.1)"
    if not _explicitly_cacheable(response, directives, shared=shared):
        return "no explicit freshness and status not heuristically cacheable (section 3)"
    return None


def is_storable(request: Request, response: Response, *, shared: bool = True) -> bool:
    """True when `response` to `request` may be stored (see `why_not_storable`)."""
    return why_not_storable(request, response, shared=shared) is None


def headers_to_store(headers: Headers, *, received_at: float, shared: bool = True) -> Headers:
    """The header fields of a storable response as they go into the cache.

    Drops the fields RFC 9111 section 3.1 keeps out of storage: hop-by-hop
    fields and those named in Connection (RFC 9110 section 7.6.1), the
    proxy-specific fields, fields named by a qualified no-cache, and, in a
    shared cache, fields named by a qualified private. Adds a Date of
    `received_at` when Date is missing or invalid (RFC 9110 section 6.6.1),
    so stored responses always carry one.
    """
    directives = response_cache_control(headers)
    connection_named = {name.lower() for name in split_list(headers.get_all("connection"))}
    stored = headers.without(HOP_BY_HOP_FIELDS | PROXY_SPECIFIC_FIELDS | connection_named)
    stored = stored.without(_fields_kept_out(directives, shared))
    if date_value(stored, now=received_at) is None:
        stored = stored.replacing("Date", format_http_date(received_at))
    return stored


def _allows_authorized(directives: ResponseCacheControl) -> bool:
    """Section 3.5: directives that let a shared cache store a response to a request with Authorization."""
    return directives.public or directives.must_revalidate or directives.s_maxage is not None


def _fields_kept_out(directives: ResponseCacheControl, shared: bool) -> frozenset[str]:
    """Fields a qualified no-cache (any cache) or private (shared caches) keeps out of storage."""
    return directives.no_cache_fields | (directives.private_fields if shared else frozenset())


def _explicitly_cacheable(response: Response, directives: ResponseCacheControl, *, shared: bool) -> bool:
    """The last condition of section 3: something makes the response cacheable."""
    return (
        directives.public
        or (not shared and directives.private)
        or "expires" in response.headers
        or directives.has_explicit_expiry(shared=shared)
        or response.status in HEURISTICALLY_CACHEABLE_STATUSES
    )
