"""`python -m edge serve` as a real process: banner, graceful shutdown, configuration errors."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

MakeServer = Callable[..., Awaitable[TestServer]]
START_BOUND = 30.0  # a fresh interpreter importing aiohttp, uvloop and httptools


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_sigterm_finishes_the_request_in_flight(aiohttp_server: MakeServer) -> None:
    arrived = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await asyncio.sleep(1.0)
        return web.Response(body=b"finished", headers={"Cache-Control": "max-age=60"})

    app = web.Application()
    app.router.add_get("/slow", slow)
    upstream = await aiohttp_server(app)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge", "serve", "--listen", f"127.0.0.1:{port}",
        "--upstream", str(upstream.make_url("")).rstrip("/"), "--no-follow-feed",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        banner = await asyncio.wait_for(process.stdout.readline(), START_BOUND)
        assert f"listening on http://127.0.0.1:{port}" in banner.decode()
        async with aiohttp.ClientSession() as session:
            request = asyncio.ensure_future(session.get(f"http://127.0.0.1:{port}/slow"))
            await asyncio.wait_for(arrived.wait(), START_BOUND)
            process.send_signal(signal.SIGTERM)
            response = await asyncio.wait_for(request, START_BOUND)
            assert response.status == 200
            assert await response.read() == b"finished"
            response.release()
        assert await asyncio.wait_for(process.wait(), START_BOUND) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_configuration_errors_name_the_key() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge", "serve", "--upstreams", "ftp://nowhere",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), START_BOUND)
    assert process.returncode == 2
    assert b"edge.upstreams" in stderr
