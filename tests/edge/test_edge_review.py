"""Regression tests from a review of the edge POP's HTTP server and slow path, over real loopback sockets.

Each test pins one bug: connection handling (keep-alive, pipelining order,
idle requests, unexpected errors), framing (HEAD and 204 bodies, transfer
codings, trailers, 100-continue), header bytes that must survive the cache
or reach the upstream, and responses that must not be shared between
clients (Vary: Cookie, Range). Waits are bounded; nothing asserts on
wall-clock time.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from edge.pop import ClientRequest
from tests.edge.test_edge_limits import at_eof, connection, get, read_response
from tests.support.edgepop import WAIT_BOUND, MakePop, Reply, Scripted, cacheable, fetch, until

# Connections -----------------------------------------------------------------------


async def test_edge_review_body_mentioning_connection_close_keeps_the_connection(
    upstream: Scripted, make_pop: MakePop
) -> None:
    # The close decision must read the response head, not the body.
    upstream.routes["/doc"] = Reply(headers=cacheable(600), body=b"say Connection: close\r\nto end it")
    running = await make_pop([upstream.url])
    async with connection(running) as (reader, writer):
        writer.write(get("/doc"))
        first = await read_response(reader)
        assert (first.status, first.headers["X-Cache"]) == (200, "MISS") and "Connection" not in first.headers
        writer.write(get("/other"))
        assert (await read_response(reader)).body == b"body of /other"


async def test_edge_review_a_partial_request_does_not_hold_the_connection(
    upstream: Scripted, make_pop: MakePop
) -> None:
    running = await make_pop([upstream.url], keepalive_timeout=0.2)
    async with connection(running) as (reader, writer):
        writer.write(b"GET /x HTTP/1.1\r\nHo")  # and nothing more, ever
        assert await at_eof(reader)
    assert upstream.total == 0


async def test_edge_review_a_malformed_pipelined_request_is_refused_after_the_ones_before_it(
    upstream: Scripted, make_pop: MakePop
) -> None:
    upstream.routes["/slow"] = Reply(headers=cacheable(600), body=b"slow", delay=0.2)
    running = await make_pop([upstream.url])
    async with connection(running) as (reader, writer):
        writer.write(get("/slow") + b"HELLO WORLD\r\n\r\n")
        first = await read_response(reader)
        assert (first.status, first.body) == (200, b"slow")
        refused = await read_response(reader)
        assert refused.status == 400 and json.loads(refused.body)["error"]["status"] == 400
        assert await at_eof(reader)


async def test_edge_review_a_pipelined_upgrade_is_refused_once_and_in_order(
    upstream: Scripted, make_pop: MakePop
) -> None:
    upstream.routes["/slow"] = Reply(headers=cacheable(600), body=b"slow", delay=0.2)
    running = await make_pop([upstream.url])
    async with connection(running) as (reader, writer):
        writer.write(get("/slow") + get("/ws", "Connection: Upgrade", "Upgrade: websocket"))
        assert (await read_response(reader)).body == b"slow"
        refused = await read_response(reader)
        assert refused.status == 400 and refused.headers["Connection"] == "close"
        assert await at_eof(reader)
    assert upstream.counts == {"/slow": 1}


async def test_edge_review_an_unexpected_error_gets_a_json_500_not_a_hang(
    upstream: Scripted, make_pop: MakePop, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = await make_pop([upstream.url])

    async def broken(request: ClientRequest) -> bytes:
        raise RuntimeError("a bug in the POP")

    monkeypatch.setattr(running.pop, "handle", broken)
    async with connection(running) as (reader, writer):
        writer.write(get("/any"))
        answer = await read_response(reader)
        assert answer.status == 500 and json.loads(answer.body)["error"]["code"] == "internal_error"
        assert await at_eof(reader)


# Framing ---------------------------------------------------------------------------


async def test_edge_review_an_error_to_head_has_no_body(upstream: Scripted, make_pop: MakePop) -> None:
    running = await make_pop([upstream.url])
    async with connection(running) as (reader, writer):
        head = get("/a/%zz").replace(b"GET", b"HEAD", 1)
        writer.write(head + get("/after"))
        refused = await read_response(reader, head_only=True)
        assert refused.status == 400 and int(refused.headers["Content-Length"]) > 0
        after = await read_response(reader)  # the error's body would be read as this response
        assert (after.status, after.body) == (200, b"body of /after")


async def test_edge_review_a_transfer_coding_other_than_chunked_is_refused(
    upstream: Scripted, make_pop: MakePop
) -> None:
    running = await make_pop([upstream.url])
    async with connection(running) as (reader, writer):
        # llhttp removes the chunked framing; the gzip coding would be lost on the way upstream.
        writer.write(b"POST /orders HTTP/1.1\r\nHost: www.boxoffice.test\r\n"
                     b"Transfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")  # fmt: skip
        answer = await read_response(reader)
        assert answer.status == 501 and json.loads(answer.body)["error"]["status"] == 501
        assert await at_eof(reader)
    assert upstream.total == 0


async def test_edge_review_trailer_fields_are_not_forwarded_as_header_fields(
    upstream: Scripted, make_pop: MakePop
) -> None:
    running = await make_pop([upstream.url])
    async with connection(running) as (reader, writer):
        # RFC 9110 section 6.5.1: a trailer field is never merged into the header section.
        writer.write(b"POST /orders HTTP/1.1\r\nHost: www.boxoffice.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"2\r\n{}\r\n0\r\nX-Sneaky: 1\r\n\r\n")  # fmt: skip
        assert (await read_response(reader)).status == 200
    assert upstream.seen[-1].method == "POST" and "X-Sneaky" not in upstream.seen[-1].headers


async def test_edge_review_a_stored_204_has_no_content_length(upstream: Scripted, make_pop: MakePop) -> None:
    upstream.routes["/empty"] = Reply(status=204, headers=cacheable(600))
    running = await make_pop([upstream.url])
    for expected in ("MISS", "HIT"):
        async with connection(running) as (reader, writer):
            writer.write(get("/empty"))
            answer = await read_response(reader)
            assert (answer.status, answer.headers["X-Cache"]) == (204, expected)
            assert "Content-Length" not in answer.headers  # RFC 9110 section 8.6
    assert upstream.counts["/empty"] == 1


async def test_edge_review_expect_100_continue_is_answered(upstream: Scripted, make_pop: MakePop) -> None:
    running = await make_pop([upstream.url])
    async with connection(running) as (reader, writer):
        # aiohttp's client, among others, sends no body until it sees the 100 (RFC 9110 section 10.1.1).
        writer.write(b"POST /orders HTTP/1.1\r\nHost: www.boxoffice.test\r\nContent-Length: 2\r\n"
                     b"Expect: 100-continue\r\n\r\n")  # fmt: skip
        async with asyncio.timeout(WAIT_BOUND):
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"{}")
        assert (await read_response(reader)).status == 200
    assert upstream.seen[-1].method == "POST"


# Header bytes ----------------------------------------------------------------------


async def _utf8_header(request: web.Request) -> web.Response:
    return web.Response(body=b"named", headers={"Cache-Control": "max-age=600", "X-Name": "Zoë €"})


async def test_edge_review_header_bytes_beyond_latin_1_pass_through(upstream: Scripted, make_pop: MakePop) -> None:
    upstream.routes["/named"] = _utf8_header
    running = await make_pop([upstream.url])
    for expected in ("MISS", "HIT"):
        async with connection(running) as (reader, writer):
            writer.write(get("/named"))
            async with asyncio.timeout(WAIT_BOUND):
                head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert "X-Name: Zoë €\r\n".encode() in head  # the upstream's bytes, unchanged
            assert f"X-Cache: {expected}\r\n".encode() in head


async def test_edge_review_a_connection_header_cannot_remove_the_forwarding_fields(
    upstream: Scripted, make_pop: MakePop
) -> None:
    running = await make_pop([upstream.url])
    async with connection(running) as (reader, writer):
        writer.write(get("/fwd", "Connection: X-Forwarded-For, Via"))
        assert (await read_response(reader)).status == 200
    seen = upstream.seen[-1].headers
    assert seen.get("X-Forwarded-For") == "127.0.0.1" and seen.get("Via", "").startswith("1.1 boxoffice-")


# Responses that belong to one client -----------------------------------------------


async def _by_cookie(request: web.Request) -> web.Response:
    who = request.headers.get("Cookie", "nobody")
    return web.Response(body=f"for {who}".encode(), headers={"Cache-Control": "max-age=600", "Vary": "Cookie"})


async def test_edge_review_a_response_varying_on_cookie_is_not_served_without_it(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    upstream.routes["/mine"] = _by_cookie
    running = await make_pop([upstream.url])
    alice = await fetch(client, running, "/mine", headers={"Cookie": "sid=alice"})
    assert alice.body == b"for sid=alice"
    anonymous = await fetch(client, running, "/mine")
    assert anonymous.body == b"for nobody"


async def test_edge_review_a_range_request_never_shares_its_partial_response(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    gate = asyncio.Event()

    async def ranged(request: web.Request) -> web.Response:
        await asyncio.wait_for(gate.wait(), WAIT_BOUND)
        if "Range" in request.headers:
            return web.Response(status=206, body=b"d", headers={"Content-Range": "bytes 0-0/8"})
        return web.Response(body=b"document", headers={"Cache-Control": "max-age=600"})

    upstream.routes["/ranged"] = ranged
    running = await make_pop([upstream.url])
    partial = asyncio.create_task(fetch(client, running, "/ranged", headers={"Range": "bytes=0-0"}))
    await until(lambda: upstream.total == 1, "the range request reached the upstream")
    whole = asyncio.create_task(fetch(client, running, "/ranged"))
    await until(lambda: running.pop.stats.coalesced == 1, "the plain request joined the fetch")
    gate.set()
    got = await whole
    assert (got.status, got.body) == (200, b"document")
    assert (await partial).status in (200, 206)
    assert (await fetch(client, running, "/ranged")).body == b"document"
