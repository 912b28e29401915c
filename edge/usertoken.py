"""Signed user tokens: who the caller of `GET /v1/hints` is.

How it works: a token is three dot-separated ASCII fields,

    base64url(user_id) "." expires_at "." base64url(HMAC-SHA256(secret, DOMAIN + first two fields))

with base64url unpadded (RFC 4648 section 5) and `expires_at` in POSIX
seconds as decimal digits. The MAC covers the exact text that was received,
so there is no second encoding of a token that also verifies; it is compared
in constant time (`hmac.compare_digest`). `DOMAIN` separates these MACs
from any other use of the same secret. Every character of a token is a
cookie-octet (RFC 6265 section 4.1.1) and a token68 character (RFC 9110
section 11.2), so it travels unquoted in `Cookie: bo_user=...` and in
`Authorization: Bearer ...`.

The user id inside a verified token is the only user id the POP ever acts on:
a caller cannot name another user, so it can never read another user's hints.
User ids are restricted to `USER_ID_PATTERN` because they end up in the
predictor's URL path.

Pure: no clock reads (`now` is passed in), no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Final

from edge.errors import PeerError

__all__ = [
    "COOKIE_NAME",
    "MAX_TOKEN_LENGTH",
    "MAX_USER_ID_LENGTH",
    "InvalidToken",
    "MissingToken",
    "is_valid_user_id",
    "issue_cookie",
    "sign",
    "token_from_headers",
    "user_from_headers",
    "verify",
]

COOKIE_NAME: Final = "bo_user"
# User ids are opaque to the edge but go into the predictor's URL path
# (`/v1/hints/{user_id}`), so they are plain ASCII without "/" or "%", and a
# dot-only id ("." or "..") cannot be written because the first character is
# alphanumeric.
MAX_USER_ID_LENGTH: Final = 128
USER_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@~-]{0,127}")
# base64url of a 128-byte id (171) + a 20-digit expiry + a 43-character MAC
# + separators is 236; anything much longer is not ours and is refused before
# any decoding or hashing work.
MAX_TOKEN_LENGTH: Final = 256
# Separates this MAC from any other HMAC the same secret might key.
_DOMAIN: Final = b"boxoffice-user-token-v1\x00"
_MAC_TEXT_LENGTH: Final = 43  # unpadded base64url of 32 bytes
_EXPIRY_DIGITS: Final = re.compile(r"[0-9]{1,20}")
_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]+")


class InvalidToken(PeerError):
    """The caller's token is malformed, forged, for another secret, or expired (answer 401)."""


class MissingToken(InvalidToken):
    """The request carries no user token at all (answer 401)."""


def is_valid_user_id(user_id: str) -> bool:
    """Whether `user_id` is one the edge accepts (see `USER_ID_PATTERN`)."""
    return USER_ID_PATTERN.fullmatch(user_id) is not None


def sign(user_id: str, secret: bytes, expires_at: int) -> str:
    """A token naming `user_id`, valid until POSIX second `expires_at` (exclusive).

    Raises:
        ValueError: `user_id` is not a valid user id, `expires_at` is negative,
            or `secret` is empty. These are the caller's bugs, not a peer's.
    """
    if not is_valid_user_id(user_id):
        raise ValueError(f"not a valid user id: {user_id!r}")
    if expires_at < 0:
        raise ValueError("expires_at must not be negative")
    if not secret:
        raise ValueError("the token secret must not be empty")
    payload = f"{_b64encode(user_id.encode('ascii'))}.{expires_at}"
    return f"{payload}.{_mac(secret, payload)}"


def verify(token: str, secret: bytes, now: float) -> str:
    """The user id in `token` when it was signed with `secret` and has not expired at `now`.

    Raises:
        InvalidToken: anything else — any text at all that is not such a token.
    """
    if not secret:
        raise InvalidToken("no token secret is configured")
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
        raise InvalidToken("token is too long or not ASCII")
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("token does not have three fields")
    encoded_user, expiry_text, mac_text = parts
    if len(mac_text) != _MAC_TEXT_LENGTH:
        raise InvalidToken("token signature has the wrong length")
    # Check the signature before looking at the claims, so nothing about an
    # unauthenticated token's contents influences what we do next.
    expected = _mac(secret, f"{encoded_user}.{expiry_text}")
    if not hmac.compare_digest(expected, mac_text):
        raise InvalidToken("token signature does not verify")
    if _EXPIRY_DIGITS.fullmatch(expiry_text) is None:
        raise InvalidToken("token expiry is not a number")
    if now >= int(expiry_text):
        raise InvalidToken("token has expired")
    user_id = _b64decode(encoded_user)
    if user_id is None or not is_valid_user_id(user_id):
        raise InvalidToken("token user id is malformed")
    return user_id


def token_from_headers(headers: Mapping[str, str]) -> str | None:
    """The token the request carries: `Authorization: Bearer`, else the `bo_user` cookie.

    `headers` must look names up case-insensitively (aiohttp's
    `request.headers` does). An explicit Authorization header wins over the
    ambient cookie. When the cookie is sent more than once the first one is
    used: RFC 6265 section 5.4 puts the most specific path first. Returns None
    when neither is present; the token itself is not checked here.
    """
    authorization = headers.get("Authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.strip().partition(" ")
        # RFC 9110 section 11.1: the auth-scheme is case-insensitive.
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    cookie = headers.get("Cookie")
    if cookie is not None:
        for pair in cookie.split(";"):
            name, separator, value = pair.strip().partition("=")
            if separator and name == COOKIE_NAME:
                return value.strip().strip('"')
    return None


def user_from_headers(headers: Mapping[str, str], secret: bytes, now: float) -> str:
    """The verified user id of the request's caller.

    Raises:
        MissingToken: the request carries no token.
        InvalidToken: the token does not verify (see `verify`).
    """
    token = token_from_headers(headers)
    if token is None:
        raise MissingToken("no user token: send the bo_user cookie or Authorization: Bearer")
    return verify(token, secret, now)


def issue_cookie(user_id: str, secret: bytes, now: float, ttl: int, *, secure: bool = False) -> str:
    """A `Set-Cookie` value carrying a fresh token for `user_id`, valid `ttl` seconds from `now`.

    HttpOnly keeps page script (and so injected script) from reading the
    token; SameSite=Lax keeps other sites' subresource requests from carrying
    it; Path=/ so `/v1/hints` and `/sw.js` both see it. `secure` adds the
    Secure attribute; the local demo stack serves plain HTTP, so it is off by
    default.

    Raises:
        ValueError: as for `sign`, or `ttl` is not positive.
    """
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    token = sign(user_id, secret, int(now) + ttl)
    attributes = f"{COOKIE_NAME}={token}; Max-Age={ttl}; Path=/; HttpOnly; SameSite=Lax"
    return f"{attributes}; Secure" if secure else attributes


def _mac(secret: bytes, payload: str) -> str:
    digest = hmac.new(secret, _DOMAIN + payload.encode("ascii"), hashlib.sha256).digest()
    return _b64encode(digest)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> str | None:
    if _BASE64URL.fullmatch(text) is None or len(text) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return raw.decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        return None
