"""Settings of the origin service (see ops.settings for how they are loaded)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from ops.settings import MINUTE, SECOND, Bytes, Seconds, SettingsError, setting
from origin.inventory import MAX_QTY_PER_HOLD
from origin.ledger import LedgerLimits

HOUR = 60 * MINUTE
# Hold and order bodies are a few hundred bytes; 16 KiB leaves room for a long
# seat list and refuses anything that is not a ticketing request.
DEFAULT_MAX_BODY = 16 * 1024


@dataclass(frozen=True, slots=True)
class OriginSettings:
    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(8100, "HTTP port")
    database: str = setting("sqlite:var/origin.db", "sqlite:PATH (embedded default) or postgresql://user@host/db")
    node_id: str = setting("origin", "this node's id in HLC stamps (letters, digits, underscores)")
    seed_demo: bool = setting(False, "load the demo catalog at start when the database has no events")
    demo_seed: int = setting(2026, "random seed of the demo catalog")
    demo_venues: int = setting(300, "venues in the demo catalog")
    demo_events: int = setting(3000, "events in the demo catalog")
    hold_ttl: Seconds = setting(Seconds(10 * MINUTE), "how long a hold keeps its stock unless the request asks less")
    max_hold_ttl: Seconds = setting(Seconds(30 * MINUTE), "longest hold a request may ask for (ttl_seconds)")
    max_qty_per_hold: int = setting(8, f"most units one hold may take (hard ceiling {MAX_QTY_PER_HOLD})")
    item_max_age: Seconds = setting(Seconds(2 * SECOND), "Cache-Control max-age of item documents")
    item_stale_while_revalidate: Seconds = setting(
        Seconds(30 * SECOND), "Cache-Control stale-while-revalidate of item documents"
    )
    item_stale_if_error: Seconds = setting(Seconds(5 * MINUTE), "Cache-Control stale-if-error of item documents")
    event_max_age: Seconds = setting(Seconds(30 * SECOND), "Cache-Control max-age of event documents and lists")
    max_body: Bytes = setting(Bytes(DEFAULT_MAX_BODY), "largest request body accepted (413 beyond)")
    feed_max_wait: Seconds = setting(Seconds(30 * SECOND), "longest long-poll `wait` on /v1/changes")
    feed_retention: Seconds = setting(Seconds(24 * HOUR), "change records older than this are pruned")
    feed_retention_changes: int = setting(1_000_000, "at most this many change records are kept")
    idempotency_retention: Seconds = setting(Seconds(24 * HOUR), "how long Idempotency-Key results are replayed")
    hold_sweep_interval: Seconds = setting(Seconds(1 * SECOND), "how often expired holds are released")
    prune_interval: Seconds = setting(Seconds(1 * MINUTE), "how often the change feed and keys are pruned")
    db_pool_size: int = setting(20, "PostgreSQL connections per process (below the expected concurrency, p99 grows)")
    db_timeout: Seconds = setting(Seconds(5 * SECOND), "timeout of one database statement")
    shutdown_timeout: Seconds = setting(Seconds(10 * SECOND), "grace period for in-flight requests on shutdown")
    access_log: bool = setting(True, "log one line per request")
    log_level: str = setting("info", "debug, info, warning or error")

    def validate(self) -> None:
        """Raise SettingsError naming the first inconsistent setting."""
        if not 0 < self.port < 65536:
            raise SettingsError(f"origin.port: {self.port} is not a TCP port")
        if not self.node_id.replace("_", "").isalnum():
            raise SettingsError(f"origin.node_id: {self.node_id!r} must be letters, digits and underscores")
        if not self.database.startswith(("sqlite:", "postgresql://", "postgres://")):
            raise SettingsError("origin.database: must start with sqlite: or postgresql://")
        if not 1 <= self.max_qty_per_hold <= MAX_QTY_PER_HOLD:
            raise SettingsError(f"origin.max_qty_per_hold: must be 1 to {MAX_QTY_PER_HOLD}")
        if not 0 < self.hold_ttl <= self.max_hold_ttl:
            raise SettingsError("origin.hold_ttl: must be positive and at most max_hold_ttl")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise SettingsError(f"origin.log_level: {self.log_level!r} is not debug, info, warning or error")
        for name in ("demo_venues", "demo_events", "db_pool_size", "feed_retention_changes"):
            if getattr(self, name) < 1:
                raise SettingsError(f"origin.{name}: must be at least 1")
        if self.max_body < 256:
            raise SettingsError("origin.max_body: must be at least 256 bytes")

    def ledger_limits(self) -> LedgerLimits:
        return LedgerLimits(
            hold_ttl=timedelta(seconds=self.hold_ttl),
            max_hold_ttl=timedelta(seconds=self.max_hold_ttl),
            max_qty_per_hold=self.max_qty_per_hold,
        )
