"""Conditional requests, both ways (RFC 9111 sections 4.3.1-4.3.4, RFC 9110 section 13).

Towards the upstream: `conditional_headers` makes the validators to send for
a stored response; when a 304 comes back, `not_modified_applies` says whether
it is about that stored response and `update_from_304` (or
`refreshed_from_304`) folds its header fields in.

Towards the client: `client_not_modified` evaluates the client's own
If-None-Match / If-Modified-Since against the selected stored response (RFC
9111 section 4.3.2) and `not_modified_headers` is the header section of the
304 the adapter then sends (RFC 9110 section 15.4.5).
"""

from __future__ import annotations

from typing import Final

from edge.cachecontrol import date_value, last_modified_value, response_cache_control
from edge.httpdate import format_http_date, parse_http_date
from edge.messages import Headers, StoredResponse
from edge.storability import HOP_BY_HOP_FIELDS, PROXY_SPECIFIC_FIELDS
from edge.syntax import EntityTag, parse_entity_tag, parse_entity_tag_list, split_list

# RFC 9111 section 3.2: Content-Length is never updated from a 304 (it would
# describe no content); Content-Range is processed away by the recipient.
NOT_UPDATED_FROM_304: Final = HOP_BY_HOP_FIELDS | PROXY_SPECIFIC_FIELDS | {"content-length", "content-range"}

# RFC 9110 section 15.4.5: the fields a 304 carries from the 200 it stands for.
_NOT_MODIFIED_FIELDS: Final = ("cache-control", "content-location", "date", "etag", "expires", "vary")

# RFC 9110 section 13.2.1: preconditions are evaluated only for methods and
# responses where the unconditional answer would be a 2xx.
_CONDITIONAL_METHODS: Final = frozenset({"GET", "HEAD"})


def conditional_headers(stored_headers: Headers) -> Headers:
    """The validator fields to add to a request that revalidates a stored response.

    If-None-Match carries the stored ETag (RFC 9111 section 4.3.1: MUST, when
    there is one) and If-Modified-Since the stored Last-Modified (SHOULD).
    A validator that is malformed or ambiguous (several different lines) is
    not sent. Empty when the stored response has neither: the request is
    then unconditional.
    """
    lines: list[tuple[str, str]] = []
    etag = _stored_entity_tag(stored_headers)
    if etag is not None:
        lines.append(("If-None-Match", str(etag)))
    modified = stored_headers.get_all("last-modified")
    if len(set(modified)) == 1 and parse_http_date(modified[0]) is not None:
        lines.append(("If-Modified-Since", modified[0]))
    return Headers(lines)


def not_modified_applies(stored_headers: Headers, response_304_headers: Headers) -> bool:
    """True when a 304 received for a conditional request may update this stored response.

    The 304 answers the conditional request built from this one stored
    response, so it applies unless a validator it carries disagrees with the
    stored one (RFC 9111 section 4.3.4: a strong ETag must match strongly, a
    weak one weakly, and a Last-Modified must equal the stored one). When it
    does not apply the cache must not update anything and fetches afresh.
    """
    new_etag_lines = response_304_headers.get_all("etag")
    if new_etag_lines:
        new_etag = parse_entity_tag(new_etag_lines[0]) if len(set(new_etag_lines)) == 1 else None
        stored_etag = _stored_entity_tag(stored_headers)
        if new_etag is None or stored_etag is None:
            return False
        matches = new_etag.weakly_matches if new_etag.weak else new_etag.strongly_matches
        if not matches(stored_etag):
            return False
    if "last-modified" in response_304_headers:
        new_modified = last_modified_value(response_304_headers)
        return new_modified is not None and new_modified == last_modified_value(stored_headers)
    return True


def update_from_304(
    stored_headers: Headers, response_304_headers: Headers, *, received_at: float, shared: bool = True
) -> Headers:
    """The stored header fields after a 304 (RFC 9111 sections 4.3.4 and 3.2).

    Every field in the 304 replaces all stored lines of that name, except the
    fields section 3.1 keeps out of storage and Content-Length. Then, as in
    `headers_to_store`, fields named by a qualified no-cache or (shared) private
    in the updated Cache-Control are dropped.

    Two fields describe the exchange rather than the representation, and the
    stored response's `request_time` and `response_time` become those of the
    validation (see `refreshed_from_304`): a 304 without a valid Date gets
    `received_at` (RFC 9110 section 6.6.1), and a stored Age the 304 does not
    repeat is dropped, or the old age would be counted again on top of the
    new exchange (section 4.2.3).
    """
    connection_named = {name.lower() for name in split_list(response_304_headers.get_all("connection"))}
    excluded = NOT_UPDATED_FROM_304 | connection_named
    updates = [(name, value) for name, value in response_304_headers if name.lower() not in excluded]
    replaced = {name.lower() for name, _ in updates} | {"age"}
    merged = Headers([*stored_headers.without(replaced), *updates])
    if date_value(response_304_headers, now=received_at) is None:
        merged = merged.replacing("Date", format_http_date(received_at))
    directives = response_cache_control(merged)
    return merged.without(directives.no_cache_fields | (directives.private_fields if shared else frozenset()))


def refreshed_from_304(
    stored: StoredResponse,
    response_304_headers: Headers,
    *,
    request_time: float,
    response_time: float,
    shared: bool = True,
) -> StoredResponse:
    """The stored response after a 304 that `not_modified_applies` to.

    Args:
        stored: the response that was revalidated.
        response_304_headers: the 304's header fields.
        request_time: when the conditional request was sent.
        response_time: when the 304 arrived.
        shared: whether the cache is shared.
    """
    headers = update_from_304(stored.headers, response_304_headers, received_at=response_time, shared=shared)
    return StoredResponse(stored.status, headers, request_time, response_time)


def client_not_modified(
    request_headers: Headers,
    stored_headers: Headers,
    *,
    method: str = "GET",
    stored_status: int = 200,
    received_at: float | None = None,
) -> bool:
    """True when the client's own conditional request is answered with 304 from cache.

    RFC 9110 section 13.2.2 order, as RFC 9111 section 4.3.2 applies it to
    caches: If-None-Match, when present, decides alone, by weak comparison
    (``*`` matches any stored response); otherwise a single valid
    If-Modified-Since is compared with the stored Last-Modified, or failing
    that its Date, or failing that `received_at`. Only for GET and HEAD and
    a 2xx stored response (section 13.2.1). If-Match and If-Unmodified-Since
    are for the origin and are never evaluated here. An If-None-Match that
    does not parse never matches.
    """
    if method not in _CONDITIONAL_METHODS or not 200 <= stored_status < 300:
        return False
    none_match = request_headers.get_all("if-none-match")
    if none_match:
        if split_list(none_match) == ["*"]:
            return True
        wanted = parse_entity_tag_list(none_match)
        current = _stored_entity_tag(stored_headers)
        return wanted is not None and current is not None and any(tag.weakly_matches(current) for tag in wanted)
    modified_since = request_headers.get_all("if-modified-since")
    if len(modified_since) != 1:  # section 13.1.3: more than one member is ignored
        return False
    since = parse_http_date(modified_since[0], now=received_at)
    if since is None:
        return False
    modified = last_modified_value(stored_headers, now=received_at)
    if modified is None:
        modified = date_value(stored_headers, now=received_at)
    if modified is None and received_at is not None:
        modified = int(received_at)
    return modified is not None and modified <= since


def not_modified_headers(stored_headers: Headers) -> Headers:
    """The header fields of a 304 sent to a client from the stored response.

    RFC 9110 section 15.4.5: the fields a 200 would have carried among
    Cache-Control, Content-Location, Date, ETag, Expires and Vary, plus
    Last-Modified when there is no ETag. The adapter adds Age.
    """
    wanted = set(_NOT_MODIFIED_FIELDS)
    if "etag" not in stored_headers:
        wanted.add("last-modified")
    return Headers((name, value) for name, value in stored_headers if name.lower() in wanted)


def _stored_entity_tag(headers: Headers) -> EntityTag | None:
    """The response's entity tag, or None when missing, malformed or ambiguous."""
    lines = headers.get_all("etag")
    return parse_entity_tag(lines[0]) if len(set(lines)) == 1 else None
