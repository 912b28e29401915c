"""The PostgreSQL backend: an asyncpg pool, READ COMMITTED write transactions.

Rows are the same JSON documents as in the SQLite backend, with the columns
that queries filter on (region, event, hold status and expiry) beside them.
``item_for_update`` and ``hold_for_update`` are ``SELECT … FOR UPDATE``, so
transactions touching one item queue on its row lock.

Ordering of the change feed. A sequence or serial column would hand numbers
out when a row is inserted, not when it commits: transaction A takes 5, B takes
6 and commits first, and a consumer reading ``seq > 4`` sees 6, moves its
checkpoint there and never sees 5. Instead every appending transaction bumps a
one-row counter, ``UPDATE feed_head SET seq = seq + 1 RETURNING seq``. The row
lock is held until commit, so the next appender waits for this commit (and
for it to become visible) before it reads the counter: numbers are gapless
(a rollback undoes its increment) and become visible in order. The ledger
appends last, so the serialised section is one statement and the commit.
The counter never goes down, so pruning never lets a number be reused, and
``feed_head.seq`` is the committed head that a snapshot reads in the same
REPEATABLE READ view as the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Final

import asyncpg

from origin.changefeed import ChangeOp, ChangeRecord, item_patch
from origin.errors import ServerError, StoreUnavailable
from origin.model import Event, Hold, Item, Order, Venue
from origin.store.base import (
    FeedBounds,
    HeadWatch,
    SnapshotPage,
    Store,
    StoredAllotment,
    StoredResponse,
    Transaction,
    allotment_row,
    change_record,
    dump,
    load,
    seats_json,
    to_ms,
)

SECOND: Final = 1.0
# Opening one connection to a reachable server takes milliseconds; past this the
# server is down or the network is partitioned.
CONNECT_TIMEOUT: Final = 10 * SECOND
# A write transaction's client sits idle between statements only while Python
# decides; a client that hangs there holds row locks (maybe `feed_head`, which
# stalls every writer), so the server ends it after this many statement timeouts.
IDLE_IN_TRANSACTION_FACTOR: Final = 3
# A catalog load or prune statement touches tens of thousands of rows (25k
# items load in about a second); give it room beyond the per-request timeout.
BULK_STATEMENT_TIMEOUT: Final = 120 * SECOND
# Closing waits this long for borrowed connections before terminating them.
CLOSE_TIMEOUT: Final = 10 * SECOND
# Change records deleted per statement when pruning, to stay far below the
# statement timeout however much history piled up.
PRUNE_BATCH: Final = 10_000
# Several processes may open a fresh database at once; CREATE TABLE IF NOT
# EXISTS is not safe against itself, so schema creation takes this advisory lock.
SCHEMA_LOCK_KEY: Final = 0x626F786F6666  # "boxoff"

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS venues (id TEXT PRIMARY KEY, region TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, region TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_region ON events (region, id);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY, event_id TEXT NOT NULL, region TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS items_by_event ON items (event_id, id);
CREATE INDEX IF NOT EXISTS items_by_region ON items (region, id);
CREATE TABLE IF NOT EXISTS holds (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, expires_ms BIGINT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS holds_due ON holds (status, expires_ms);
CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, hold_id TEXT NOT NULL UNIQUE, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS changes (
    seq BIGINT PRIMARY KEY, item_id TEXT NOT NULL, version BIGINT NOT NULL,
    hlc TEXT NOT NULL, op TEXT NOT NULL, patch TEXT NOT NULL, created_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, status INTEGER, body TEXT, created_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (source TEXT PRIMARY KEY, position TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS feed_head (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row), seq BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS lease_epochs (item_id TEXT PRIMARY KEY, epoch BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS allotments (
    item_id TEXT NOT NULL, shard TEXT NOT NULL, epoch BIGINT NOT NULL, units INTEGER NOT NULL,
    seats TEXT NOT NULL, expires_ms BIGINT NOT NULL, PRIMARY KEY (item_id, shard));
CREATE INDEX IF NOT EXISTS allotments_due ON allotments (expires_ms);
CREATE INDEX IF NOT EXISTS allotments_by_shard ON allotments (shard, item_id);
INSERT INTO feed_head (seq) SELECT coalesce(max(seq), 0) FROM changes ON CONFLICT DO NOTHING;
INSERT INTO meta (key, value) VALUES ('retained_after', '0') ON CONFLICT DO NOTHING;
"""

_BOUNDS_SQL: Final = (
    "SELECT (SELECT value FROM meta WHERE key = 'retained_after'), (SELECT seq FROM feed_head WHERE only_row)"
)

# Failures that say "the database is unreachable, overloaded or slow": 503, retry later.
_UNAVAILABLE: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08, including a dropped connection
    asyncpg.OperatorInterventionError,  # class 57: statement timeout, shutdown, starting up
    asyncpg.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.TransactionRollbackError,  # class 40: deadlock or serialization failure
    asyncpg.LockNotAvailableError,
)


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Re-raise asyncpg and socket errors as ours, naming what we were doing."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"PostgreSQL {what}: {type(exc).__name__}: {exc}") from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
        raise ServerError(f"PostgreSQL {what}: {type(exc).__name__}: {exc}") from exc


class _QuietResetConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection released without asyncpg's reset query.

    asyncpg runs `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`
    on every release: a second round trip per read (measured: 1.86 server
    transactions per GET, and 2.8k -> 4.1k reads/s without it). This store
    leaves no session state behind — no LISTEN, no session SET or advisory
    lock (only SET LOCAL and xact locks), no cursors — and asyncpg still rolls
    back any open transaction on release.
    """

    def get_reset_query(self) -> str:
        return ""


class PostgresStore(Store):
    def __init__(self, dsn: str, *, pool_size: int = 10, statement_timeout: float = 5.0) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._statement_timeout = statement_timeout
        self._pool: Any = None  # asyncpg.Pool once open
        self._epoch = ""
        self.head_watch = HeadWatch()

    @property
    def epoch(self) -> str:
        return self._epoch

    # Lifecycle -------------------------------------------------------------
    async def open(self) -> None:
        timeout_ms = str(int(self._statement_timeout * 1000))
        idle_ms = str(int(self._statement_timeout * IDLE_IN_TRANSACTION_FACTOR * 1000))
        with _translated("connect"):
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._pool_size,
                command_timeout=self._statement_timeout,
                timeout=CONNECT_TIMEOUT,
                server_settings={"statement_timeout": timeout_ms, "idle_in_transaction_session_timeout": idle_ms},
                connection_class=_QuietResetConnection,
            )
        try:
            async with self._connection("create schema") as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_KEY)
                await conn.execute(SCHEMA)
                await conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('epoch', $1) ON CONFLICT DO NOTHING", secrets.token_hex(6)
                )
                self._epoch = str(await conn.fetchval("SELECT value FROM meta WHERE key = 'epoch'"))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            pool.terminate()  # a connection stuck mid-query; the server rolls it back

    @asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[Any]:
        """Borrow a pool connection (waiting at most one statement timeout), translating errors."""
        if self._pool is None:
            raise ServerError("PostgreSQL store is not open")
        with _translated(what):
            async with self._pool.acquire(timeout=self._statement_timeout) as conn:
                yield conn

    # Writes ------------------------------------------------------------------
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresTransaction]:
        if self._pool is None:
            raise ServerError("PostgreSQL store is not open")
        with _translated("acquire"):
            conn = await self._pool.acquire(timeout=self._statement_timeout)
        try:
            handle = conn.transaction(isolation="read_committed")
            with _translated("begin"):
                await handle.start()
            tx = _PostgresTransaction(conn)
            try:
                yield tx
            except BaseException:
                # The body's error is the one to report; if ROLLBACK fails too,
                # releasing the connection resets or discards it.
                with contextlib.suppress(*_UNAVAILABLE, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await handle.rollback()
                raise
            with _translated("commit"):
                await handle.commit()
        finally:
            with _translated("release"):
                await self._pool.release(conn, timeout=self._statement_timeout)
        if tx.appended:
            self.head_watch.notify()

    # Reads -------------------------------------------------------------------
    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self._connection("read") as conn:
            rows: list[Any] = await conn.fetch(sql, *args)
        return rows

    async def _doc(self, sql: str, key: str) -> dict[str, Any] | None:
        rows = await self._fetch(sql, key)
        return load(rows[0][0]) if rows else None

    async def item(self, item_id: str) -> Item | None:
        doc = await self._doc("SELECT doc FROM items WHERE id = $1", item_id)
        return None if doc is None else Item.from_document(doc)

    async def event(self, event_id: str) -> Event | None:
        doc = await self._doc("SELECT doc FROM events WHERE id = $1", event_id)
        return None if doc is None else Event.from_document(doc)

    async def venue(self, venue_id: str) -> Venue | None:
        doc = await self._doc("SELECT doc FROM venues WHERE id = $1", venue_id)
        return None if doc is None else Venue.from_document(doc)

    async def events(self, region: str | None, after: str | None, limit: int) -> list[Event]:
        rows = await self._fetch(
            "SELECT doc FROM events WHERE id > $1 AND ($2::text IS NULL OR region = $2) ORDER BY id LIMIT $3",
            after or "",
            region,
            limit,
        )
        return [Event.from_document(load(row[0])) for row in rows]

    async def event_items(self, event_id: str) -> list[Item]:
        rows = await self._fetch("SELECT doc FROM items WHERE event_id = $1 ORDER BY id", event_id)
        return [Item.from_document(load(row[0])) for row in rows]

    async def checkpoint(self, source: str) -> str | None:
        rows = await self._fetch("SELECT position FROM checkpoints WHERE source = $1", source)
        return str(rows[0][0]) if rows else None

    async def hold(self, hold_id: str) -> Hold | None:
        doc = await self._doc("SELECT doc FROM holds WHERE id = $1", hold_id)
        return None if doc is None else Hold.from_document(doc)

    async def order(self, order_id: str) -> Order | None:
        doc = await self._doc("SELECT doc FROM orders WHERE id = $1", order_id)
        return None if doc is None else Order.from_document(doc)

    async def due_holds(self, now: datetime, limit: int) -> list[str]:
        # No lock here: the ledger re-reads each hold FOR UPDATE before expiring it.
        rows = await self._fetch(
            "SELECT id FROM holds WHERE status = 'active' AND expires_ms <= $1 ORDER BY expires_ms LIMIT $2",
            to_ms(now),
            limit,
        )
        return [str(row[0]) for row in rows]

    async def allotments(self, shard: str | None) -> list[StoredAllotment]:
        rows = await self._fetch(
            "SELECT item_id, shard, epoch, units, seats, expires_ms FROM allotments"
            " WHERE $1::text IS NULL OR shard = $1 ORDER BY item_id, shard",
            shard,
        )
        return [allotment_row(tuple(row)) for row in rows]

    async def due_allotments(self, before: datetime, limit: int) -> list[str]:
        # No lock here: the lease sweeper re-reads each book under its item's row lock.
        rows = await self._fetch(
            "SELECT DISTINCT item_id FROM allotments WHERE expires_ms <= $1 ORDER BY item_id LIMIT $2",
            to_ms(before),
            limit,
        )
        return [str(row[0]) for row in rows]

    # Change feed -------------------------------------------------------------
    async def feed_bounds(self) -> FeedBounds:
        # One statement, so both values come from one READ COMMITTED snapshot.
        rows = await self._fetch(_BOUNDS_SQL)
        return self._bounds(rows[0])

    def _bounds(self, row: Any) -> FeedBounds:
        retained, head = int(row[0]), int(row[1])
        return FeedBounds(self._epoch, retained, max(retained, head))

    async def changes(self, after: int, limit: int) -> list[ChangeRecord]:
        rows = await self._fetch(
            "SELECT seq, item_id, version, hlc, op, patch FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
            after,
            limit,
        )
        return [
            change_record(self._epoch, int(seq), str(item_id), int(version), str(hlc), str(op), str(patch))
            for seq, item_id, version, hlc, op, patch in rows
        ]

    async def snapshot(
        self, *, region: str | None, event_ids: Sequence[str] | None, after: str | None, limit: int
    ) -> SnapshotPage:
        sql = (
            "SELECT doc FROM items WHERE id > $1 AND ($2::text IS NULL OR region = $2)"
            " AND ($3::text[] IS NULL OR event_id = ANY($3)) ORDER BY id LIMIT $4"
        )
        event_list = None if event_ids is None else list(event_ids)
        # REPEATABLE READ: the head and the rows come from one MVCC snapshot.
        async with (
            self._connection("snapshot") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            bounds = self._bounds(await conn.fetchrow(_BOUNDS_SQL))
            rows = await conn.fetch(sql, after or "", region, event_list, limit + 1)
        items = tuple(Item.from_document(load(row[0])) for row in rows[:limit])
        next_after = items[-1].id if len(rows) > limit else None
        return SnapshotPage(bounds.head_position, items, next_after)

    # Maintenance -------------------------------------------------------------
    async def load_catalog(
        self, venues: Sequence[Venue], events: Sequence[Event], items: Sequence[Item], now: datetime
    ) -> int:
        # Encode everything before the transaction opens, so it holds locks only
        # while rows travel; the last row for an id wins, as INSERT OR REPLACE does.
        region_of_event = {event.id: event.region for event in events}
        venue_rows = {venue.id: (venue.region, dump(venue.to_document())) for venue in venues}
        event_rows = {event.id: (event.region, dump(event.to_document())) for event in events}
        item_rows = {
            item.id: (item.event_id, region_of_event.get(item.event_id, ""), dump(item.to_document())) for item in items
        }
        created = to_ms(now)
        change_rows = [
            (item.id, item.version, item.hlc, "upsert", dump(item_patch(None, item.to_document())), created)
            for item in items
        ]
        async with self.transaction() as tx:
            with _translated("load catalog"):
                conn = tx.conn
                await conn.execute(f"SET LOCAL statement_timeout = {int(BULK_STATEMENT_TIMEOUT * 1000)}")
                for table, rows in (("venues", venue_rows), ("events", event_rows)):
                    await conn.execute(
                        f"INSERT INTO {table} (id, region, doc)"
                        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[])"
                        " ON CONFLICT (id) DO UPDATE SET region = excluded.region, doc = excluded.doc",
                        list(rows),
                        [region for region, _ in rows.values()],
                        [doc for _, doc in rows.values()],
                        timeout=BULK_STATEMENT_TIMEOUT,
                    )
                await conn.execute(
                    "INSERT INTO items (id, event_id, region, doc)"
                    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) ON CONFLICT (id)"
                    " DO UPDATE SET event_id = excluded.event_id, region = excluded.region, doc = excluded.doc",
                    list(item_rows),
                    *([row[column] for row in item_rows.values()] for column in range(3)),
                    timeout=BULK_STATEMENT_TIMEOUT,
                )
                if change_rows:
                    # One block of numbers from the same counter single appends use (module docstring).
                    last = int(
                        await conn.fetchval("UPDATE feed_head SET seq = seq + $1 RETURNING seq", len(change_rows))
                    )
                    first = last - len(change_rows) + 1
                    await conn.copy_records_to_table(
                        "changes",
                        records=[(first + offset, *row) for offset, row in enumerate(change_rows)],
                        columns=("seq", "item_id", "version", "hlc", "op", "patch", "created_ms"),
                        timeout=BULK_STATEMENT_TIMEOUT,
                    )
                    tx.appended = True
        return len(items)

    async def prune(self, *, keep_changes: int, changes_before: datetime, idempotency_before: datetime) -> int:
        async with self.transaction() as tx:
            with _translated("prune"):
                conn = tx.conn
                head = int(await conn.fetchval("SELECT seq FROM feed_head WHERE only_row"))
                old = int(
                    await conn.fetchval(
                        "SELECT coalesce(max(seq), 0) FROM changes WHERE created_ms < $1", to_ms(changes_before)
                    )
                )
                cut = max(head - keep_changes, old)
                dropped = 0
                while True:
                    status = await conn.execute(
                        "DELETE FROM changes WHERE seq IN"
                        " (SELECT seq FROM changes WHERE seq <= $1 ORDER BY seq LIMIT $2)",
                        cut,
                        PRUNE_BATCH,
                    )
                    deleted = int(str(status).rsplit(" ", 1)[-1])  # command tag "DELETE n"
                    dropped += deleted
                    if deleted < PRUNE_BATCH:
                        break
                if cut > 0:
                    await conn.execute(
                        "UPDATE meta SET value = greatest(value::bigint, $1)::text WHERE key = 'retained_after'", cut
                    )
                await conn.execute("DELETE FROM idempotency WHERE created_ms < $1", to_ms(idempotency_before))
        return dropped

    async def counts(self) -> dict[str, int]:
        tables = ("venues", "events", "items", "holds", "orders", "changes")
        rows = await self._fetch("SELECT " + ", ".join(f"(SELECT count(*) FROM {table})" for table in tables))
        return {table: int(count) for table, count in zip(tables, rows[0], strict=True)}


class _PostgresTransaction(Transaction):
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.appended = False

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        with _translated("write transaction"):
            rows: list[Any] = await self.conn.fetch(sql, *args)
        return rows

    async def item_for_update(self, item_id: str) -> Item | None:
        rows = await self._fetch("SELECT doc FROM items WHERE id = $1 FOR UPDATE", item_id)
        return Item.from_document(load(rows[0][0])) if rows else None

    async def put_item(self, item: Item) -> None:
        await self._fetch("UPDATE items SET doc = $1 WHERE id = $2", dump(item.to_document()), item.id)

    async def event_for_update(self, event_id: str) -> Event | None:
        rows = await self._fetch("SELECT doc FROM events WHERE id = $1 FOR UPDATE", event_id)
        return Event.from_document(load(rows[0][0])) if rows else None

    async def hold_for_update(self, hold_id: str) -> Hold | None:
        rows = await self._fetch("SELECT doc FROM holds WHERE id = $1 FOR UPDATE", hold_id)
        return Hold.from_document(load(rows[0][0])) if rows else None

    async def put_hold(self, hold: Hold) -> None:
        await self._fetch(
            "INSERT INTO holds (id, status, expires_ms, doc) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (id) DO UPDATE SET status = excluded.status, doc = excluded.doc",
            hold.id,
            hold.status,
            to_ms(hold.expires_at),
            dump(hold.to_document()),
        )

    async def put_order(self, order: Order) -> None:
        await self._fetch(
            "INSERT INTO orders (id, hold_id, doc) VALUES ($1, $2, $3)",
            order.id,
            order.hold_id,
            dump(order.to_document()),
        )

    async def append_change(
        self, item_id: str, version: int, hlc: str, op: ChangeOp, patch: dict[str, Any], now: datetime
    ) -> int:
        # The counter row stays locked until this transaction ends (module docstring);
        # one statement keeps the round trips inside that section to one.
        rows = await self._fetch(
            "WITH head AS (UPDATE feed_head SET seq = seq + 1 WHERE only_row RETURNING seq) "
            "INSERT INTO changes (seq, item_id, version, hlc, op, patch, created_ms) "
            "SELECT seq, $1, $2, $3, $4, $5, $6 FROM head RETURNING seq",
            item_id,
            version,
            hlc,
            op,
            dump(patch),
            to_ms(now),
        )
        if not rows:
            raise ServerError("PostgreSQL feed_head row is missing")
        self.appended = True
        return int(rows[0][0])

    async def claim_idempotency_key(self, scope: str, fingerprint: str, now: datetime) -> StoredResponse | None:
        # The INSERT waits while another open transaction holds `scope`, then
        # conflicts if that one committed, or inserts if it rolled back. A second
        # attempt covers the key being pruned between our INSERT and SELECT.
        for _ in range(2):
            inserted = await self._fetch(
                "INSERT INTO idempotency (scope, fingerprint, created_ms) VALUES ($1, $2, $3) "
                "ON CONFLICT (scope) DO NOTHING RETURNING scope",
                scope,
                fingerprint,
                to_ms(now),
            )
            if inserted:
                return None
            rows = await self._fetch("SELECT fingerprint, status, body FROM idempotency WHERE scope = $1", scope)
            if rows:
                stored_fingerprint, status, body = rows[0]
                if status is None or body is None:
                    raise ServerError(f"idempotency key {scope!r} was committed without a response")
                return StoredResponse(str(stored_fingerprint), int(status), load(body))
        raise ServerError(f"idempotency key {scope!r} could be neither claimed nor read")

    async def complete_idempotency_key(self, scope: str, status: int, body: dict[str, Any]) -> None:
        await self._fetch("UPDATE idempotency SET status = $1, body = $2 WHERE scope = $3", status, dump(body), scope)

    async def lease_state(self, item_id: str) -> tuple[int, list[StoredAllotment]]:
        # The caller holds the item's row lock, which serialises every writer of this book.
        epoch = await self._fetch("SELECT epoch FROM lease_epochs WHERE item_id = $1", item_id)
        rows = await self._fetch(
            "SELECT item_id, shard, epoch, units, seats, expires_ms FROM allotments WHERE item_id = $1 ORDER BY shard",
            item_id,
        )
        return (int(epoch[0][0]) if epoch else 0), [allotment_row(tuple(row)) for row in rows]

    async def put_lease_state(self, item_id: str, epoch: int, allotments: Sequence[StoredAllotment]) -> None:
        await self._fetch(
            "INSERT INTO lease_epochs (item_id, epoch) VALUES ($1, $2)"
            " ON CONFLICT (item_id) DO UPDATE SET epoch = excluded.epoch",
            item_id,
            epoch,
        )
        await self._fetch("DELETE FROM allotments WHERE item_id = $1", item_id)
        if allotments:
            await self._fetch(
                "INSERT INTO allotments (item_id, shard, epoch, units, seats, expires_ms)"
                " SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::int[], $5::text[], $6::bigint[])",
                item_id,
                [held.shard for held in allotments],
                [held.epoch for held in allotments],
                [held.units for held in allotments],
                [seats_json(held.seats) for held in allotments],
                [to_ms(held.expires_at) for held in allotments],
            )

    async def put_replica_item(self, item: Item, region: str) -> None:
        await self._fetch(
            "INSERT INTO items (id, event_id, region, doc) VALUES ($1, $2, $3, $4) ON CONFLICT (id)"
            " DO UPDATE SET event_id = excluded.event_id, region = excluded.region, doc = excluded.doc",
            item.id,
            item.event_id,
            region,
            dump(item.to_document()),
        )

    async def delete_item(self, item_id: str) -> None:
        await self._fetch("DELETE FROM items WHERE id = $1", item_id)

    async def put_event(self, event: Event) -> None:
        await self._fetch(
            "INSERT INTO events (id, region, doc) VALUES ($1, $2, $3)"
            " ON CONFLICT (id) DO UPDATE SET region = excluded.region, doc = excluded.doc",
            event.id,
            event.region,
            dump(event.to_document()),
        )

    async def put_venue(self, venue: Venue) -> None:
        await self._fetch(
            "INSERT INTO venues (id, region, doc) VALUES ($1, $2, $3)"
            " ON CONFLICT (id) DO UPDATE SET region = excluded.region, doc = excluded.doc",
            venue.id,
            venue.region,
            dump(venue.to_document()),
        )

    async def drop_event(self, event_id: str) -> list[Item]:
        rows = await self._fetch("DELETE FROM items WHERE event_id = $1 RETURNING doc", event_id)
        await self._fetch("DELETE FROM events WHERE id = $1", event_id)
        return sorted((Item.from_document(load(row[0])) for row in rows), key=lambda item: item.id)

    async def checkpoint(self, source: str) -> str | None:
        rows = await self._fetch("SELECT position FROM checkpoints WHERE source = $1 FOR UPDATE", source)
        return str(rows[0][0]) if rows else None

    async def set_checkpoint(self, source: str, position: str) -> None:
        await self._fetch(
            "INSERT INTO checkpoints (source, position) VALUES ($1, $2)"
            " ON CONFLICT (source) DO UPDATE SET position = excluded.position",
            source,
            position,
        )

    async def clear_checkpoint(self, source: str) -> None:
        await self._fetch("DELETE FROM checkpoints WHERE source = $1", source)
