"""Reading requests and writing JSON responses for the origin's routes (origin.http).

Every reader bounds its input and raises BadRequest (400) or NotFound (404)
with a message naming the parameter; every writer renders compact UTF-8 JSON.
:func:`_cacheable` answers conditional requests (RFC 9110 §13) with 304.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from origin.errors import BadRequest, NotFound
from origin.settings import OriginSettings
from origin.store.base import MAX_PAGE_ROWS
from origin.validators import http_date, is_not_modified

MAX_ID_LENGTH: Final = 128
NO_STORE: Final = "no-store"
JSON_TYPE: Final = "application/json"


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"error": {"status": status, "code": code, "message": message}}, status=status,
                 headers={"Cache-Control": NO_STORE})  # fmt: skip


def _json(doc: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    return web.Response(body=body, status=status, headers=headers, content_type=JSON_TYPE)


def _cacheable(
    request: web.Request, doc: Any, *, etag: str | None, modified: datetime | None, cache_control: str
) -> web.Response:
    """A public, cacheable JSON response that honours If-None-Match / If-Modified-Since."""
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    if etag is None:
        etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    headers = {"ETag": etag, "Cache-Control": cache_control}
    if modified is not None:
        headers["Last-Modified"] = http_date(modified)
    not_modified = is_not_modified(
        request.headers.get("If-None-Match"),
        request.headers.get("If-Modified-Since") if modified is not None else None,
        etag,
        modified or datetime.now(UTC),
    )
    if not_modified:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers=headers, content_type=JSON_TYPE)


def _item_cache_control(settings: OriginSettings) -> str:
    return (
        f"public, max-age={int(settings.item_max_age)}, "
        f"stale-while-revalidate={int(settings.item_stale_while_revalidate)}, "
        f"stale-if-error={int(settings.item_stale_if_error)}"
    )


async def _json_body(request: web.Request) -> Any:
    # The body is parsed as JSON whatever Content-Type says: `curl -d` labels
    # JSON as a form, and a body that does not parse gets a precise 400 anyway.
    raw = await request.read()  # raises HTTPRequestEntityTooLarge past client_max_size
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    except RecursionError:  # deeper than the parser's stack; no document of ours nests like that
        raise BadRequest("body is not valid JSON: nested too deeply") from None


def _path_id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if len(value) > MAX_ID_LENGTH:
        raise NotFound(f"no {name.removesuffix('_id')} with a {len(value)}-character id")
    return value


def _query_text(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is not None and not 0 < len(value) <= MAX_ID_LENGTH:
        raise BadRequest(f"{name} must be 1 to {MAX_ID_LENGTH} characters")
    return value


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    # ASCII digits only: str.isdigit() accepts '²', which int() refuses, and
    # int() refuses more than 4,300 digits.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(high)) or not low <= int(raw) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def _query_float(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number of seconds from {low:g} to {high:g}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be a number of seconds from {low:g} to {high:g}")
    return value


def _snapshot_filter(raw: str | None) -> tuple[str | None, list[str] | None]:
    if raw is None or raw == "":
        return None, None
    kind, _, value = raw.partition(":")
    values = [part for part in value.split(",") if part]
    if kind == "region" and len(values) == 1:
        return values[0], None
    if kind == "event" and 0 < len(values) <= MAX_PAGE_ROWS:
        return None, values
    raise BadRequest("filter must be region:REGION or event:ID[,ID...]")
