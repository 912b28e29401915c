"""The embedded SQLite backend: WAL, one writer thread, a pool of reader threads.

SQLite calls block, so none runs on the event loop. Writes go through one
dedicated thread and one connection; an asyncio lock lets one transaction at a
time own it (`BEGIN IMMEDIATE` also takes SQLite's write lock at the start, so a
second process writing the same file waits on `busy_timeout` instead of failing
mid-transaction). Reads run on a small thread pool, each thread with its own
connection; WAL lets them proceed while a write is in progress.

Because one writer serialises all write transactions, feed sequence numbers are
allocated in commit order for free.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

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

T = TypeVar("T")

# How long a statement waits for another process's write lock before failing.
BUSY_TIMEOUT_MS: Final = 5_000
# Readers: enough to overlap a few slow snapshot pages with item reads on 2 cores.
DEFAULT_READ_THREADS: Final = 4
# Rows deleted per statement when pruning, so a prune never holds the write
# lock long enough to stall holds.
PRUNE_BATCH: Final = 10_000

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS venues (id TEXT PRIMARY KEY, region TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, region TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_region ON events (region, id);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY, event_id TEXT NOT NULL, region TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS items_by_event ON items (event_id, id);
CREATE INDEX IF NOT EXISTS items_by_region ON items (region, id);
CREATE TABLE IF NOT EXISTS holds (
    id TEXT PRIMARY KEY, status TEXT NOT NULL, expires_ms INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS holds_due ON holds (status, expires_ms);
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY, hold_id TEXT NOT NULL UNIQUE, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY, item_id TEXT NOT NULL, version INTEGER NOT NULL,
    hlc TEXT NOT NULL, op TEXT NOT NULL, patch TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, status INTEGER,
    body TEXT, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (source TEXT PRIMARY KEY, position TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS lease_epochs (item_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS allotments (
    item_id TEXT NOT NULL, shard TEXT NOT NULL, epoch INTEGER NOT NULL, units INTEGER NOT NULL,
    seats TEXT NOT NULL, expires_ms INTEGER NOT NULL, PRIMARY KEY (item_id, shard));
CREATE INDEX IF NOT EXISTS allotments_due ON allotments (expires_ms);
CREATE INDEX IF NOT EXISTS allotments_by_shard ON allotments (shard, item_id);
"""


class SQLiteStore(Store):
    def __init__(self, path: str | Path, *, read_threads: int = DEFAULT_READ_THREADS) -> None:
        self._path = str(path)
        self._read_threads = read_threads
        self._writer_pool: ThreadPoolExecutor | None = None
        self._reader_pool: ThreadPoolExecutor | None = None
        self._writer: sqlite3.Connection | None = None
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._local = threading.local()
        self._write_lock = asyncio.Lock()
        self._epoch = ""
        self.head_watch = HeadWatch()

    @property
    def epoch(self) -> str:
        return self._epoch

    # Lifecycle -------------------------------------------------------------
    async def open(self) -> None:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader_pool = ThreadPoolExecutor(self._read_threads, thread_name_prefix="sqlite-reader")
        self._epoch = await self._write(self._open_writer)

    def _open_writer(self) -> str:
        conn = self._connect()
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode loses at most the last transactions on power loss,
        # never consistency; FULL would fsync every hold.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)", (secrets.token_hex(6),))
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('retained_after', '0')")
        conn.commit()
        self._writer = conn
        row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        return str(row[0])

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self._path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self._path}: {exc}") from exc
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return conn

    async def close(self) -> None:
        if self._writer_pool is not None:
            writer = self._writer
            if writer is not None:
                await self._write(writer.close)
            self._writer_pool.shutdown(wait=True)
        if self._reader_pool is not None:
            self._reader_pool.shutdown(wait=True)
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._writer = None
        self._writer_pool = self._reader_pool = None

    # Thread plumbing ---------------------------------------------------------
    async def _write(self, fn: Callable[[], T]) -> T:
        if self._writer_pool is None:
            raise ServerError("SQLite store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._writer_pool, _guarded(fn))

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader_pool is None:
            raise ServerError("SQLite store is not open")
        return await asyncio.get_running_loop().run_in_executor(
            self._reader_pool, _guarded(functools.partial(self._with_reader, fn))
        )

    def _with_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return fn(conn)

    def _writer_conn(self) -> sqlite3.Connection:
        if self._writer is None:
            raise ServerError("SQLite store is not open")
        return self._writer

    # Writes ------------------------------------------------------------------
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._write_lock:
            conn = self._writer_conn()
            tx = _SQLiteTransaction(self, conn)
            try:
                # Inside the try: a cancellation while BEGIN runs in the writer
                # thread must still roll back, or the connection (and SQLite's
                # write lock) would stay in a transaction no one owns.
                await self._write(functools.partial(conn.execute, "BEGIN IMMEDIATE"))
                yield tx
            except BaseException:
                # Queued behind any statement still running in the writer thread.
                await asyncio.shield(self._write(functools.partial(_rollback_if_open, conn)))
                raise
            try:
                await self._write(functools.partial(conn.execute, "COMMIT"))
            except BaseException:
                await asyncio.shield(self._write(functools.partial(_rollback_if_open, conn)))
                raise
            if tx.appended:
                self.head_watch.notify()

    # Reads -------------------------------------------------------------------
    async def item(self, item_id: str) -> Item | None:
        doc = await self._read(_one_doc("SELECT doc FROM items WHERE id = ?", (item_id,)))
        return None if doc is None else Item.from_document(doc)

    async def event(self, event_id: str) -> Event | None:
        doc = await self._read(_one_doc("SELECT doc FROM events WHERE id = ?", (event_id,)))
        return None if doc is None else Event.from_document(doc)

    async def venue(self, venue_id: str) -> Venue | None:
        doc = await self._read(_one_doc("SELECT doc FROM venues WHERE id = ?", (venue_id,)))
        return None if doc is None else Venue.from_document(doc)

    async def events(self, region: str | None, after: str | None, limit: int) -> list[Event]:
        sql = "SELECT doc FROM events WHERE id > ?"
        params: list[Any] = [after or ""]
        if region is not None:
            sql += " AND region = ?"
            params.append(region)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        docs = await self._read(_all_docs(sql, tuple(params)))
        return [Event.from_document(doc) for doc in docs]

    async def event_items(self, event_id: str) -> list[Item]:
        docs = await self._read(_all_docs("SELECT doc FROM items WHERE event_id = ? ORDER BY id", (event_id,)))
        return [Item.from_document(doc) for doc in docs]

    async def checkpoint(self, source: str) -> str | None:
        def query(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT position FROM checkpoints WHERE source = ?", (source,)).fetchone()
            return None if row is None else str(row[0])

        return await self._read(query)

    async def hold(self, hold_id: str) -> Hold | None:
        doc = await self._read(_one_doc("SELECT doc FROM holds WHERE id = ?", (hold_id,)))
        return None if doc is None else Hold.from_document(doc)

    async def order(self, order_id: str) -> Order | None:
        doc = await self._read(_one_doc("SELECT doc FROM orders WHERE id = ?", (order_id,)))
        return None if doc is None else Order.from_document(doc)

    async def due_holds(self, now: datetime, limit: int) -> list[str]:
        def query(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT id FROM holds WHERE status = 'active' AND expires_ms <= ? ORDER BY expires_ms LIMIT ?",
                (to_ms(now), limit),
            ).fetchall()
            return [str(row[0]) for row in rows]

        return await self._read(query)

    async def allotments(self, shard: str | None) -> list[StoredAllotment]:
        def query(conn: sqlite3.Connection) -> list[StoredAllotment]:
            sql = "SELECT item_id, shard, epoch, units, seats, expires_ms FROM allotments"
            params: tuple[Any, ...] = ()
            if shard is not None:
                sql, params = sql + " WHERE shard = ?", (shard,)
            return [allotment_row(row) for row in conn.execute(sql + " ORDER BY item_id, shard", params).fetchall()]

        return await self._read(query)

    async def due_allotments(self, before: datetime, limit: int) -> list[str]:
        def query(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT DISTINCT item_id FROM allotments WHERE expires_ms <= ? ORDER BY item_id LIMIT ?",
                (to_ms(before), limit),
            ).fetchall()
            return [str(row[0]) for row in rows]

        return await self._read(query)

    # Change feed -------------------------------------------------------------
    async def feed_bounds(self) -> FeedBounds:
        return await self._read(self._bounds)

    def _bounds(self, conn: sqlite3.Connection) -> FeedBounds:
        retained_after = conn.execute("SELECT value FROM meta WHERE key = 'retained_after'").fetchone()
        head = conn.execute("SELECT max(seq) FROM changes").fetchone()
        retained = int(retained_after[0])
        return FeedBounds(self._epoch, retained, max(retained, int(head[0] or 0)))

    async def changes(self, after: int, limit: int) -> list[ChangeRecord]:
        def query(conn: sqlite3.Connection) -> list[ChangeRecord]:
            rows = conn.execute(
                "SELECT seq, item_id, version, hlc, op, patch FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
            return [change_record(self._epoch, *row) for row in rows]

        return await self._read(query)

    async def snapshot(
        self, *, region: str | None, event_ids: Sequence[str] | None, after: str | None, limit: int
    ) -> SnapshotPage:
        sql = "SELECT id, doc FROM items WHERE id > ?"
        params: list[Any] = [after or ""]
        if region is not None:
            sql += " AND region = ?"
            params.append(region)
        if event_ids is not None:
            sql += f" AND event_id IN ({','.join('?' * len(event_ids))})"
            params.extend(event_ids)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit + 1)

        def query(conn: sqlite3.Connection) -> SnapshotPage:
            # One read transaction: the head and the rows come from one WAL snapshot.
            conn.execute("BEGIN")
            try:
                bounds = self._bounds(conn)
                rows = conn.execute(sql, params).fetchall()
            finally:
                conn.execute("COMMIT")
            items = tuple(Item.from_document(load(row[1])) for row in rows[:limit])
            next_after = items[-1].id if len(rows) > limit else None
            return SnapshotPage(bounds.head_position, items, next_after)

        return await self._read(query)

    # Maintenance -------------------------------------------------------------
    async def load_catalog(
        self, venues: Sequence[Venue], events: Sequence[Event], items: Sequence[Item], now: datetime
    ) -> int:
        region_of_event = {event.id: event.region for event in events}
        async with self.transaction() as tx:
            assert isinstance(tx, _SQLiteTransaction)
            await self._write(functools.partial(_insert_catalog, tx.conn, venues, events, items, region_of_event, now))
            tx.appended = bool(items)
        return len(items)

    async def prune(self, *, keep_changes: int, changes_before: datetime, idempotency_before: datetime) -> int:
        def run(conn: sqlite3.Connection) -> int:
            head = int(conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0])
            old = conn.execute(
                "SELECT coalesce(max(seq), 0) FROM changes WHERE created_ms < ?", (to_ms(changes_before),)
            ).fetchone()[0]
            cut = max(head - keep_changes, int(old))
            dropped = 0
            while True:
                cursor = conn.execute(
                    "DELETE FROM changes WHERE seq IN (SELECT seq FROM changes WHERE seq <= ? LIMIT ?)",
                    (cut, PRUNE_BATCH),
                )
                dropped += cursor.rowcount
                if cursor.rowcount < PRUNE_BATCH:
                    break
            if cut > 0:
                conn.execute(
                    "UPDATE meta SET value = CAST(max(CAST(value AS INTEGER), ?) AS TEXT) WHERE key = 'retained_after'",
                    (cut,),
                )
            conn.execute("DELETE FROM idempotency WHERE created_ms < ?", (to_ms(idempotency_before),))
            return dropped

        async with self.transaction() as tx:
            assert isinstance(tx, _SQLiteTransaction)
            return await self._write(functools.partial(run, tx.conn))

    async def counts(self) -> dict[str, int]:
        def query(conn: sqlite3.Connection) -> dict[str, int]:
            return {
                table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
                for table in ("venues", "events", "items", "holds", "orders", "changes")
            }

        return await self._read(query)


class _SQLiteTransaction(Transaction):
    def __init__(self, store: SQLiteStore, conn: sqlite3.Connection) -> None:
        self._store = store
        self.conn = conn
        self.appended = False

    async def _run(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        return await self._store._write(lambda: self.conn.execute(sql, params).fetchall())

    async def item_for_update(self, item_id: str) -> Item | None:
        rows = await self._run("SELECT doc FROM items WHERE id = ?", (item_id,))
        return Item.from_document(load(rows[0][0])) if rows else None

    async def put_item(self, item: Item) -> None:
        await self._run("UPDATE items SET doc = ? WHERE id = ?", (dump(item.to_document()), item.id))

    async def event_for_update(self, event_id: str) -> Event | None:
        rows = await self._run("SELECT doc FROM events WHERE id = ?", (event_id,))
        return Event.from_document(load(rows[0][0])) if rows else None

    async def hold_for_update(self, hold_id: str) -> Hold | None:
        rows = await self._run("SELECT doc FROM holds WHERE id = ?", (hold_id,))
        return Hold.from_document(load(rows[0][0])) if rows else None

    async def put_hold(self, hold: Hold) -> None:
        await self._run(
            "INSERT INTO holds (id, status, expires_ms, doc) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET status = excluded.status, doc = excluded.doc",
            (hold.id, hold.status, to_ms(hold.expires_at), dump(hold.to_document())),
        )

    async def put_order(self, order: Order) -> None:
        await self._run(
            "INSERT INTO orders (id, hold_id, doc) VALUES (?, ?, ?)",
            (order.id, order.hold_id, dump(order.to_document())),
        )

    async def append_change(
        self, item_id: str, version: int, hlc: str, op: ChangeOp, patch: dict[str, Any], now: datetime
    ) -> int:
        self.appended = True

        def run() -> int:
            head = int(self.conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0])
            retained = int(self.conn.execute("SELECT value FROM meta WHERE key = 'retained_after'").fetchone()[0])
            seq = max(head, retained) + 1
            self.conn.execute(
                "INSERT INTO changes (seq, item_id, version, hlc, op, patch, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (seq, item_id, version, hlc, op, dump(patch), to_ms(now)),
            )
            return seq

        return await self._store._write(run)

    async def claim_idempotency_key(self, scope: str, fingerprint: str, now: datetime) -> StoredResponse | None:
        rows = await self._run("SELECT fingerprint, status, body FROM idempotency WHERE scope = ?", (scope,))
        if rows:
            stored_fingerprint, status, body = rows[0]
            return StoredResponse(stored_fingerprint, int(status), load(body))
        await self._run(
            "INSERT INTO idempotency (scope, fingerprint, created_ms) VALUES (?, ?, ?)",
            (scope, fingerprint, to_ms(now)),
        )
        return None

    async def complete_idempotency_key(self, scope: str, status: int, body: dict[str, Any]) -> None:
        await self._run("UPDATE idempotency SET status = ?, body = ? WHERE scope = ?", (status, dump(body), scope))

    async def lease_state(self, item_id: str) -> tuple[int, list[StoredAllotment]]:
        epoch = await self._run("SELECT epoch FROM lease_epochs WHERE item_id = ?", (item_id,))
        rows = await self._run(
            "SELECT item_id, shard, epoch, units, seats, expires_ms FROM allotments WHERE item_id = ? ORDER BY shard",
            (item_id,),
        )
        return (int(epoch[0][0]) if epoch else 0), [allotment_row(row) for row in rows]

    async def put_lease_state(self, item_id: str, epoch: int, allotments: Sequence[StoredAllotment]) -> None:
        def run() -> None:
            self.conn.execute("INSERT OR REPLACE INTO lease_epochs (item_id, epoch) VALUES (?, ?)", (item_id, epoch))
            self.conn.execute("DELETE FROM allotments WHERE item_id = ?", (item_id,))
            self.conn.executemany(
                "INSERT INTO allotments (item_id, shard, epoch, units, seats, expires_ms) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (item_id, held.shard, held.epoch, held.units, seats_json(held.seats), to_ms(held.expires_at))
                    for held in allotments
                ],
            )

        await self._store._write(run)

    async def put_replica_item(self, item: Item, region: str) -> None:
        await self._run(
            "INSERT OR REPLACE INTO items (id, event_id, region, doc) VALUES (?, ?, ?, ?)",
            (item.id, item.event_id, region, dump(item.to_document())),
        )

    async def delete_item(self, item_id: str) -> None:
        await self._run("DELETE FROM items WHERE id = ?", (item_id,))

    async def put_event(self, event: Event) -> None:
        await self._run(
            "INSERT OR REPLACE INTO events (id, region, doc) VALUES (?, ?, ?)",
            (event.id, event.region, dump(event.to_document())),
        )

    async def put_venue(self, venue: Venue) -> None:
        await self._run(
            "INSERT OR REPLACE INTO venues (id, region, doc) VALUES (?, ?, ?)",
            (venue.id, venue.region, dump(venue.to_document())),
        )

    async def drop_event(self, event_id: str) -> list[Item]:
        rows = await self._run("DELETE FROM items WHERE event_id = ? RETURNING doc", (event_id,))
        await self._run("DELETE FROM events WHERE id = ?", (event_id,))
        return sorted((Item.from_document(load(row[0])) for row in rows), key=lambda item: item.id)

    async def checkpoint(self, source: str) -> str | None:
        rows = await self._run("SELECT position FROM checkpoints WHERE source = ?", (source,))
        return str(rows[0][0]) if rows else None

    async def set_checkpoint(self, source: str, position: str) -> None:
        await self._run("INSERT OR REPLACE INTO checkpoints (source, position) VALUES (?, ?)", (source, position))

    async def clear_checkpoint(self, source: str) -> None:
        await self._run("DELETE FROM checkpoints WHERE source = ?", (source,))


def _insert_catalog(
    conn: sqlite3.Connection,
    venues: Sequence[Venue],
    events: Sequence[Event],
    items: Sequence[Item],
    region_of_event: dict[str, str],
    now: datetime,
) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO venues (id, region, doc) VALUES (?, ?, ?)",
        [(venue.id, venue.region, dump(venue.to_document())) for venue in venues],
    )
    conn.executemany(
        "INSERT OR REPLACE INTO events (id, region, doc) VALUES (?, ?, ?)",
        [(event.id, event.region, dump(event.to_document())) for event in events],
    )
    conn.executemany(
        "INSERT OR REPLACE INTO items (id, event_id, region, doc) VALUES (?, ?, ?, ?)",
        [(item.id, item.event_id, region_of_event.get(item.event_id, ""), dump(item.to_document())) for item in items],
    )
    head = int(conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0])
    retained = int(conn.execute("SELECT value FROM meta WHERE key = 'retained_after'").fetchone()[0])
    first = max(head, retained) + 1
    created = to_ms(now)
    conn.executemany(
        "INSERT INTO changes (seq, item_id, version, hlc, op, patch, created_ms) VALUES (?, ?, ?, ?, 'upsert', ?, ?)",
        [
            (first + offset, item.id, item.version, item.hlc, dump(item_patch(None, item.to_document())), created)
            for offset, item in enumerate(items)
        ],
    )


def _rollback_if_open(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _one_doc(sql: str, params: tuple[Any, ...]) -> Callable[[sqlite3.Connection], dict[str, Any] | None]:
    def query(conn: sqlite3.Connection) -> dict[str, Any] | None:
        row = conn.execute(sql, params).fetchone()
        return None if row is None else load(row[0])

    return query


def _all_docs(sql: str, params: tuple[Any, ...]) -> Callable[[sqlite3.Connection], list[dict[str, Any]]]:
    def query(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        return [load(row[0]) for row in conn.execute(sql, params).fetchall()]

    return query


def _guarded(fn: Callable[[], T]) -> Callable[[], T]:
    """Translate sqlite3 errors into ours, inside the worker thread."""

    def call() -> T:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from exc
        except sqlite3.Error as exc:
            raise ServerError(f"SQLite: {exc}") from exc

    return call
