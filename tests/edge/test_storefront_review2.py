"""Review regressions for the POP's own endpoints (edge.routes, edge.storefront) on a real loopback POP."""

from __future__ import annotations

import math

import aiohttp
import pytest

from edge.errors import PeerError
from edge.storefront import MAX_LOGIN_BODY, parse_login
from tests.support.edgepop import TOKEN, MakePop, Scripted, fetch

SECRET = "storefront-review2-secret"
# Nested past the parser's recursion limit (1,000 frames by default): the parser recurses into every
# "[" before it can notice that the document never closes.
LOGIN_DEEP = b"[" * MAX_LOGIN_BODY
BODY_DEEP = b'{"urls":' + b"[" * 5_000 + b"]" * 5_000 + b"}"


def test_review2_parse_login_refuses_deep_json_with_peer_error() -> None:
    assert len(LOGIN_DEEP) <= MAX_LOGIN_BODY
    with pytest.raises(PeerError, match="not valid JSON"):
        parse_login(LOGIN_DEEP, "application/json")


async def test_review2_a_deeply_nested_login_body_is_a_400_not_a_500(
    make_pop: MakePop, upstream: Scripted, client: aiohttp.ClientSession
) -> None:
    running = await make_pop([upstream.url], user_secret=SECRET)
    got = await fetch(client, running, "/_edge/demo/login", method="POST", data=LOGIN_DEEP,
                      headers={"Content-Type": "application/json"})  # fmt: skip
    assert got.status == 400
    assert "Set-Cookie" not in got.headers


@pytest.mark.parametrize("path", ["/_edge/purge", "/_edge/warm"])
async def test_review2_a_deeply_nested_purge_or_warm_body_is_a_400_not_a_500(
    make_pop: MakePop, upstream: Scripted, client: aiohttp.ClientSession, path: str
) -> None:
    running = await make_pop([upstream.url])
    got = await fetch(client, running, path, method="POST", data=BODY_DEEP,
                      headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})  # fmt: skip
    assert got.status == 400


async def test_review2_feed_lag_is_nan_not_zero_while_unknown(
    make_pop: MakePop, upstream: Scripted, client: aiohttp.ClientSession
) -> None:
    # A follower that has never reached its feed (Redis on a closed port) cannot vouch for anything:
    # its lag is unknown, and the metric must not claim the POP is current.
    running = await make_pop([upstream.url], follow_feed=True, feed="redis", feed_redis="redis://127.0.0.1:1/0")
    assert running.follower is not None and running.follower.status().lag_seconds is None
    body = (await fetch(client, running, "/metrics")).body.decode()
    line = next(line for line in body.splitlines() if line.startswith("edge_feed_lag_seconds "))
    assert math.isnan(float(line.split()[1]))
