"""The origin's exception family.

Every error the origin raises on purpose is an :class:`OriginError`. Each class
carries the HTTP status and a stable machine-readable ``code`` that the HTTP
adapter puts into the JSON error body, so a client can branch on ``code``
without parsing messages. Two branches matter most:

* :class:`ClientError` — the peer sent something we will not act on (4xx);
* :class:`ServerError` — we broke, or a dependency did (5xx).
"""

from __future__ import annotations

from typing import ClassVar


class OriginError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ClientError(OriginError):
    status = 400
    code = "bad_request"


class BadRequest(ClientError):
    """Malformed JSON, a missing or mistyped field, a bad query parameter."""


class NotFound(ClientError):
    status = 404
    code = "not_found"


class InsufficientStock(ClientError):
    """Fewer units (or not the requested seats) are available than asked for."""

    status = 409
    code = "insufficient_stock"


class HoldNotActive(ClientError):
    """The hold was already turned into an order."""

    status = 409
    code = "hold_not_active"


class HoldExpired(ClientError):
    status = 410
    code = "hold_expired"


class PositionGone(ClientError):
    """A change-feed position is older than retention or from another history.

    The consumer must re-snapshot (ARCHITECTURE.md: `410` on `/v1/changes`).
    """

    status = 410
    code = "position_gone"


class IdempotencyKeyReused(ClientError):
    """The same Idempotency-Key was sent with a different request body."""

    status = 422
    code = "idempotency_key_reused"


class ServerError(OriginError):
    status = 500
    code = "internal_error"


class StoredDataError(ServerError):
    """A stored row could not be decoded: the database holds something we did not write."""

    code = "stored_data_error"


class StoreUnavailable(ServerError):
    """The database could not be reached or timed out."""

    status = 503
    code = "store_unavailable"
