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


ROLES = ("primary", "shard")
DEFAULT_DATABASE = "sqlite:var/origin.db"


@dataclass(frozen=True, slots=True)
class OriginSettings:
    role: str = setting("primary", "primary (the source of truth) or shard (a regional read replica of --upstream)")
    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(8100, "HTTP port")
    database: str = setting(DEFAULT_DATABASE, "sqlite:PATH (embedded default) or postgresql://user@host/db")
    listen: str = setting("", "HOST:PORT to listen on; when set it overrides host and port")
    data_dir: str = setting("", "directory for the embedded database; when set, database is sqlite:DIR/origin.db")
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
    shard_id: str = setting("", "shard role: this shard's id in the shard map")
    region: str = setting("", "shard role: the region whose events it mirrors when no events are listed")
    upstream: str = setting("", "shard role: base URL of the feed it follows (the primary or another shard)")
    events: tuple[str, ...] = setting((), "shard role: event ids to mirror (default: every event of --region)")
    shardmap_url: str = setting("", "shard role: shard map URL polled for this shard's events (overrides --events)")
    shardmap_interval: Seconds = setting(Seconds(10 * SECOND), "shard role: how often the shard map is read")
    max_lag: Seconds = setting(Seconds(10 * SECOND), "shard role: reads answer 503 when further behind than this")
    follow_wait: Seconds = setting(Seconds(2 * SECOND), "shard role: long-poll wait on the upstream feed")
    upstream_timeout: Seconds = setting(Seconds(10 * SECOND), "shard role: timeout of one upstream request")
    shardmap_token: str = setting(
        "", "primary: bearer token the shard manager sends with PUT /v1/shardmap (empty: refused)"
    )
    admin_token: str = setting("", "primary: bearer token of PATCH /v1/events/{id} metadata edits (empty: refused)")
    shardmap_file: str = setting("", "primary: where the shard map is kept (empty: DATA_DIR/shardmap.json or var/)")
    public_url: str = setting("", "primary: its URL as shards and POPs reach it (empty: http://HOST:PORT)")
    shard_token: str = setting(
        "", "bearer token of the lease API: the primary requires it, a shard sends it (empty: leases refused)"
    )
    lease_duration: Seconds = setting(Seconds(30 * SECOND), "primary: how long a grant or renewal lasts")
    clock_skew_margin: Seconds = setting(
        Seconds(2 * SECOND), "primary: a lapsed allotment stays frozen this long before it is taken back"
    )
    lease_sweep_interval: Seconds = setting(Seconds(1 * SECOND), "primary: how often lapsed allotments are taken back")
    lease_items: tuple[str, ...] = setting((), "shard role: item ids to ask the primary for leases or allotments of")
    lease_units: int = setting(40, "shard role: general-admission units asked for in a first grant")
    lease_tick: Seconds = setting(Seconds(1 * SECOND), "shard role: how often leases are renewed, refilled, returned")
    lease_safety_margin: Seconds = setting(
        Seconds(5 * SECOND), "shard role: stop holding and reporting sales this long before a lease expires"
    )
    lease_renew_before: Seconds = setting(Seconds(20 * SECOND), "shard role: renew a lease with this much left")
    lease_low_watermark: int = setting(10, "shard role: ask for a refill with fewer free GA units than this")
    lease_refill_units: int = setting(40, "shard role: GA units asked for in one refill")
    lease_high_watermark: int = setting(120, "shard role: give back free GA units above this")
    log_level: str = setting("info", "debug, info, warning or error")

    def validate(self) -> None:
        """Raise SettingsError naming the first inconsistent setting."""
        if not 0 < self.port < 65536:
            raise SettingsError(f"origin.port: {self.port} is not a TCP port")
        if self.listen:
            _, sep, port = self.listen.rpartition(":")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise SettingsError(f"origin.listen: {self.listen!r} is not HOST:PORT")
        if self.data_dir and self.database != DEFAULT_DATABASE:
            raise SettingsError("origin.data_dir: give either data_dir or database, not both")
        if not self.node_id.replace("_", "").isalnum():
            raise SettingsError(f"origin.node_id: {self.node_id!r} must be letters, digits and underscores")
        if not self.database_url().startswith(("sqlite:", "postgresql://", "postgres://")):
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
        if self.role not in ROLES:
            raise SettingsError(f"origin.role: {self.role!r} is not primary or shard")
        if self.role == "shard":
            self._validate_shard()
        if self.max_body < 256:
            raise SettingsError("origin.max_body: must be at least 256 bytes")
        if self.lease_duration <= 0 or self.clock_skew_margin < 0 or self.lease_sweep_interval <= 0:
            raise SettingsError("origin.lease_duration: lease_duration and lease_sweep_interval must be positive")

    def _validate_shard(self) -> None:
        if not self.upstream.startswith(("http://", "https://")):
            raise SettingsError("origin.upstream: a shard needs the http:// URL of the feed it follows")
        if not (self.region or self.events or self.shardmap_url):
            raise SettingsError("origin.region: a shard needs --region, --events or --shardmap-url")
        if self.shardmap_url and not self.shard_id:
            raise SettingsError("origin.shard_id: --shardmap-url needs --shard-id to find this shard in the map")
        if self.shardmap_url and not self.shardmap_url.startswith(("http://", "https://")):
            raise SettingsError("origin.shardmap_url: must be an http:// URL")
        if self.max_lag <= 0 or self.follow_wait <= 0 or self.upstream_timeout <= 0:
            raise SettingsError("origin.max_lag: max_lag, follow_wait and upstream_timeout must be positive")
        if self.follow_wait > self.feed_max_wait:
            raise SettingsError("origin.follow_wait: must not exceed feed_max_wait")
        if self.database_url() == DEFAULT_DATABASE:
            raise SettingsError(
                f"origin.database: a shard keeps its own copy; give it a database other than the primary's "
                f"default {DEFAULT_DATABASE}, e.g. sqlite:var/shard-{self.shard_id or self.region or 'a'}.db"
            )
        if self.seed_demo:
            raise SettingsError("origin.seed_demo: a shard copies its upstream; it is never seeded")
        if self.lease_items and not self.shard_id:
            raise SettingsError("origin.shard_id: a shard that asks for leases needs --shard-id")
        if self.lease_items and not self.shard_token:
            raise SettingsError("origin.shard_token: a shard that asks for leases needs the primary's shard token")
        if self.lease_tick <= 0 or self.lease_units < 1 or self.lease_refill_units < 1:
            raise SettingsError("origin.lease_tick: lease_tick, lease_units and lease_refill_units must be positive")
        if not 0 <= self.lease_low_watermark <= self.lease_high_watermark:
            raise SettingsError("origin.lease_low_watermark: need 0 ≤ lease_low_watermark ≤ lease_high_watermark")
        if not 0 <= self.lease_safety_margin < self.lease_renew_before:
            raise SettingsError("origin.lease_renew_before: must exceed lease_safety_margin, or leases lapse")

    def database_url(self) -> str:
        """The database to open: ``database``, or the SQLite file inside ``data_dir``."""
        if self.data_dir:
            return f"sqlite:{self.data_dir.rstrip('/')}/origin.db"
        return self.database

    def bind_address(self) -> tuple[str, int]:
        """(host, port) to listen on: ``listen`` when set, else ``host`` and ``port``."""
        if self.listen:
            host, _, port = self.listen.rpartition(":")
            return host.strip("[]") or "0.0.0.0", int(port)
        return self.host, self.port

    def ledger_limits(self) -> LedgerLimits:
        return LedgerLimits(
            hold_ttl=timedelta(seconds=self.hold_ttl),
            max_hold_ttl=timedelta(seconds=self.max_hold_ttl),
            max_qty_per_hold=self.max_qty_per_hold,
        )
