"""The shard's client of the origin's lease API, and the lease documents it reads.

`LeaseClient.call` sends one request to ``/v1/leases…`` with the shard's bearer
token and a finite timeout, and gives back ``(status, JSON object)``; anything
the shard cannot act on (unreachable, 5xx, a body that is not a JSON object)
is an UpstreamError, which the lease loop backs off on. `parse_lease` turns a
lease document into an Allotment; `REFUSALS` maps the origin's 409 codes back
to the errors of origin.lease, so a refused sale report raises what a local
refusal would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import aiohttp

from origin.errors import InsufficientStock, OriginError
from origin.lease import Allotment, LeaseHeld, LeaseLapsed, StaleEpoch
from origin.model import parse_time
from origin.upstream import MAX_UPSTREAM_BODY, UpstreamError, read_capped

JSON_TYPE: Final = "application/json"

REFUSALS: Final[Mapping[str, type[OriginError]]] = {
    StaleEpoch.code: StaleEpoch,
    LeaseLapsed.code: LeaseLapsed,
    LeaseHeld.code: LeaseHeld,
    InsufficientStock.code: InsufficientStock,
}


class LeaseClient:
    """The origin's lease API, each call with a finite timeout and the shard token."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str, timeout: float) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._token = token
        self._timeout = timeout

    async def call(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, key: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """(status, JSON object) of one request. Raises UpstreamError when unreachable, 5xx or not JSON."""
        url = self._base + path
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": JSON_TYPE}
        if key is not None:
            headers["Idempotency-Key"] = key
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        try:
            async with self._session.request(
                method, url, data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=self._timeout)
            ) as resp:
                raw = await read_capped(resp.content, MAX_UPSTREAM_BODY)
                status, encoding = resp.status, resp.headers.get("Content-Encoding", "")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        if len(raw) > MAX_UPSTREAM_BODY or encoding not in ("", "identity"):
            raise UpstreamError(f"{method} {url}: an answer we do not read ({len(raw)} bytes, {encoding!r})")
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise UpstreamError(f"{method} {url}: status {status}, body is not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise UpstreamError(f"{method} {url}: status {status}, body is not an object")
        if status >= 500:
            raise UpstreamError(f"{method} {url}: status {status}: {error_message(doc)}")
        return status, doc


def parse_lease(doc: Any) -> tuple[Allotment, str, tuple[str, ...]]:
    """(allotment, item kind, seats) of a lease document. Raises UpstreamError."""
    try:
        if not isinstance(doc, dict):
            raise TypeError("not an object")
        allotment = Allotment(
            str(doc["shard_id"]), int(doc["epoch"]), int(doc["units"]), parse_time(str(doc["expires_at"]))
        )
        seats = tuple(str(seat) for seat in doc["seats"])
        return allotment, str(doc["kind"]), seats
    except (KeyError, TypeError, ValueError) as exc:
        raise UpstreamError(f"the origin sent a bad lease document: {exc}") from exc


def error_code(doc: Mapping[str, Any]) -> str:
    error = doc.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else "unknown"


def error_message(doc: Mapping[str, Any]) -> str:
    error = doc.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else json.dumps(doc)[:200]
