"""Signed user tokens: round trip, tampering, expiry, secrets, where the token is read from, fuzzing."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from edge.errors import PeerError
from edge.usertoken import (
    COOKIE_NAME,
    MAX_TOKEN_LENGTH,
    InvalidToken,
    MissingToken,
    issue_cookie,
    sign,
    token_from_headers,
    user_from_headers,
    verify,
)

FUZZ = settings(max_examples=400, deadline=None)
SECRET = b"s3cret-for-tests-only-0123456789"
OTHER_SECRET = b"another-secret-entirely-98765432"
NOW = 1_700_000_000
LATER = NOW + 3600

user_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:@~-]{0,127}", fullmatch=True)


def headers(*lines: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(lines)


# -- Round trip --------------------------------------------------------------------------------


@given(user_id=user_ids, lifetime=st.integers(min_value=1, max_value=10**9))
@FUZZ
def test_round_trip(user_id: str, lifetime: int) -> None:
    token = sign(user_id, SECRET, NOW + lifetime)
    assert len(token) <= MAX_TOKEN_LENGTH
    assert verify(token, SECRET, NOW) == user_id
    assert verify(token, SECRET, NOW + lifetime - 0.5) == user_id


def test_invalid_token_is_a_peer_error() -> None:
    assert issubclass(InvalidToken, PeerError)
    assert issubclass(MissingToken, InvalidToken)


# -- Tampering, secrets, expiry ----------------------------------------------------------------


def test_every_single_character_change_is_refused() -> None:
    token = sign("u-42", SECRET, LATER)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    for position, original in enumerate(token):
        for replacement in alphabet:
            if replacement == original:
                continue
            tampered = token[:position] + replacement + token[position + 1 :]
            with pytest.raises(InvalidToken):
                verify(tampered, SECRET, NOW)


def test_swapping_fields_between_tokens_is_refused() -> None:
    alice = sign("alice", SECRET, LATER).split(".")
    bob = sign("bob", SECRET, LATER).split(".")
    for forged in (
        [bob[0], alice[1], alice[2]],  # Bob's id under Alice's signature
        [alice[0], str(LATER + 10**6), alice[2]],  # a later expiry
        [alice[0], "0" + alice[1], alice[2]],  # the same number written differently
    ):
        with pytest.raises(InvalidToken):
            verify(".".join(forged), SECRET, NOW)


def test_truncated_and_extended_tokens_are_refused() -> None:
    token = sign("u-42", SECRET, LATER)
    for forged in (token[:-1], token + "A", token + ".", "." + token, token.rsplit(".", 1)[0]):
        with pytest.raises(InvalidToken):
            verify(forged, SECRET, NOW)


def test_wrong_secret_is_refused() -> None:
    token = sign("u-42", SECRET, LATER)
    with pytest.raises(InvalidToken, match="signature"):
        verify(token, OTHER_SECRET, NOW)
    with pytest.raises(InvalidToken):
        verify(token, b"", NOW)


def test_expiry_is_exclusive() -> None:
    token = sign("u-42", SECRET, LATER)
    assert verify(token, SECRET, LATER - 1) == "u-42"
    with pytest.raises(InvalidToken, match="expired"):
        verify(token, SECRET, LATER)
    with pytest.raises(InvalidToken, match="expired"):
        verify(token, SECRET, LATER + 86400)


@pytest.mark.parametrize("user_id", ["", "a/b", "../admin", ".hidden", "ü", "a b", "x" * 129, "a%2f"])
def test_sign_refuses_ids_that_could_not_travel_safely(user_id: str) -> None:
    with pytest.raises(ValueError, match="user id"):
        sign(user_id, SECRET, LATER)


def test_sign_refuses_an_empty_secret_and_negative_expiry() -> None:
    with pytest.raises(ValueError, match="secret"):
        sign("u-1", b"", LATER)
    with pytest.raises(ValueError, match="negative"):
        sign("u-1", SECRET, -1)


# -- Fuzzing: only InvalidToken escapes --------------------------------------------------------


@given(token=st.text(max_size=400), now=st.floats(allow_nan=False, allow_infinity=False))
@FUZZ
def test_arbitrary_text_raises_only_invalid_token(token: str, now: float) -> None:
    with pytest.raises(InvalidToken):
        verify(token, SECRET, now)


@given(
    fields=st.lists(st.text(alphabet="ABCDEFabcdef0123456789-_=+/.\x00é", max_size=60), min_size=3, max_size=3),
)
@FUZZ
def test_token_shaped_text_raises_only_invalid_token(fields: list[str]) -> None:
    with pytest.raises(InvalidToken):
        verify(".".join(fields), SECRET, NOW)


@given(user_id=user_ids, mac_bytes=st.binary(min_size=32, max_size=32))
@FUZZ
def test_random_signatures_never_verify(user_id: str, mac_bytes: bytes) -> None:
    payload = sign(user_id, SECRET, LATER).rsplit(".", 1)[0]
    forged = payload + "." + base64.urlsafe_b64encode(mac_bytes).rstrip(b"=").decode()
    with pytest.raises(InvalidToken):
        verify(forged, SECRET, NOW)


# -- Where the token comes from ----------------------------------------------------------------


def test_token_from_cookie_and_bearer() -> None:
    assert token_from_headers(headers(("Cookie", f"theme=dark; {COOKIE_NAME}=abc.1.xyz; lang=en"))) == "abc.1.xyz"
    assert token_from_headers(headers(("authorization", "Bearer abc.1.xyz"))) == "abc.1.xyz"
    assert token_from_headers(headers(("Authorization", "bearer   abc.1.xyz  "))) == "abc.1.xyz"
    assert token_from_headers(headers(("Authorization", "Basic dXNlcjpwdw=="))) is None
    assert token_from_headers(headers(("Cookie", "bo_user_other=abc; xbo_user=def"))) is None
    assert token_from_headers(headers()) is None


def test_bearer_wins_over_cookie_and_first_cookie_wins() -> None:
    both = headers(("Authorization", "Bearer from-header"), ("Cookie", f"{COOKIE_NAME}=from-cookie"))
    assert token_from_headers(both) == "from-header"
    twice = headers(("Cookie", f"{COOKIE_NAME}=first; {COOKIE_NAME}=second"))
    assert token_from_headers(twice) == "first"


def test_user_from_headers() -> None:
    token = sign("u-7", SECRET, LATER)
    assert user_from_headers(headers(("Cookie", f"{COOKIE_NAME}={token}")), SECRET, NOW) == "u-7"
    assert user_from_headers(headers(("Authorization", f"Bearer {token}")), SECRET, NOW) == "u-7"
    with pytest.raises(MissingToken):
        user_from_headers(headers(), SECRET, NOW)
    with pytest.raises(InvalidToken):
        user_from_headers(headers(("Cookie", f"{COOKIE_NAME}={token}x")), SECRET, NOW)


# -- The demo cookie ---------------------------------------------------------------------------


def test_issue_cookie() -> None:
    value = issue_cookie("u-9", SECRET, NOW, 3600)
    pair, *attributes = [part.strip() for part in value.split(";")]
    name, _, token = pair.partition("=")
    assert name == COOKIE_NAME
    assert set(attributes) == {"Max-Age=3600", "Path=/", "HttpOnly", "SameSite=Lax"}
    assert verify(token, SECRET, NOW + 3599) == "u-9"
    with pytest.raises(InvalidToken):
        verify(token, SECRET, NOW + 3600)
    # What a browser sends back is what we read.
    assert user_from_headers(headers(("Cookie", pair)), SECRET, NOW) == "u-9"
    assert issue_cookie("u-9", SECRET, NOW, 60, secure=True).endswith("; Secure")
    with pytest.raises(ValueError, match="ttl"):
        issue_cookie("u-9", SECRET, NOW, 0)
