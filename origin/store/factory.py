"""Pick a storage backend from a database URL.

``sqlite:PATH`` (``sqlite:///abs/path.db`` or ``sqlite:relative/path.db``) is the
embedded default; ``postgresql://…`` (or ``postgres://…``) selects PostgreSQL.
"""

from __future__ import annotations

from origin.errors import BadRequest
from origin.store.base import Store


def store_from_url(url: str, *, pool_size: int = 10, statement_timeout: float = 5.0) -> Store:
    """Return an unopened Store for `url`. Raises BadRequest for an unknown scheme."""
    if url.startswith(("postgresql://", "postgres://")):
        from origin.store.postgres import PostgresStore

        return PostgresStore(url, pool_size=pool_size, statement_timeout=statement_timeout)
    if url.startswith("sqlite:"):
        from origin.store.sqlite import SQLiteStore

        path = url.removeprefix("sqlite:")
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise BadRequest("sqlite: URL needs a file path, e.g. sqlite:var/origin.db")
        return SQLiteStore(path)
    raise BadRequest(f"database URL must start with sqlite: or postgresql://, got {url.split(':')[0]!r}")
