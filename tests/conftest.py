"""Shared pytest fixtures for boxoffice."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.servers import (
    PostgresServer,
    RedisServer,
    start_postgres,
    start_redis,
)

# --------------------------------------------------------------------------
# Real PostgreSQL and Redis servers (tests/support/servers.py).
# Session-scoped and lazy: a server starts only when a test first asks for it,
# and stops when the session ends. Never the machine's own 5432/6379.
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PostgresServer]:
    server = start_postgres(tmp_path_factory.mktemp("postgres"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """DSN of a fresh, empty database for this test alone; dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    dsn = postgres_server.create_database(name)
    try:
        yield dsn
    finally:
        postgres_server.drop_database(name)


# --------------------------------------------------------------------------
# End of server fixtures.
# --------------------------------------------------------------------------
