"""Settings of an edge POP: the `[edge]` table (see ops.settings for the layers)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ops.settings import SECOND, Bytes, MiB, Seconds, SettingsError, setting

# RFC 9110 leaves header limits to servers; nginx's default is 8 KiB per line
# and 32 KiB in all (large_client_header_buffers 4 8k). Ours is one total.
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
DEFAULT_MAX_URL = 4096
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # feed sources are "origin" or shard ids


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    pop: str = setting("local", "this POP's id (as registered with GeoDNS)")
    host: str = setting("127.0.0.1", "address to listen on")
    port: int = setting(8080, "HTTP port")
    site: str = setting("www.boxoffice.test", "the site this POP serves: the authority of every cache key")
    upstreams: tuple[str, ...] = setting(
        ("http://127.0.0.1:8100",), "upstream base URLs in failover order: region shard, secondary, primary"
    )
    workers: int = setting(1, "processes sharing the listening port (SO_REUSEPORT), each with its own cache")
    redis: str = setting("", "redis:// URL of a second cache level shared by the workers (empty: none)")
    cache_bytes: Bytes = setting(Bytes(256 * MiB), "memory for cached responses (S3-FIFO, bounded by bytes)")
    max_entry_bytes: Bytes = setting(Bytes(1 * MiB), "largest response body kept in the cache")
    capacity: float = setting(5000.0, "requests per second this POP is sized for (reported to GeoDNS)")
    max_upstream_requests: int = setting(256, "concurrent upstream requests before new misses get 503")
    max_connections: int = setting(10_000, "concurrent client connections")
    max_header_bytes: Bytes = setting(Bytes(DEFAULT_MAX_HEADER_BYTES), "request line and headers (431 beyond)")
    max_url_bytes: int = setting(DEFAULT_MAX_URL, "request target length (414 beyond)")
    max_body_bytes: Bytes = setting(Bytes(64 * 1024), "request body (413 beyond)")
    keepalive_timeout: Seconds = setting(Seconds(75 * SECOND), "idle keep-alive connections close after this")
    request_timeout: Seconds = setting(Seconds(10 * SECOND), "a whole request, upstream included (504 beyond)")
    upstream_connect_timeout: Seconds = setting(Seconds(1 * SECOND), "connecting to an upstream")
    upstream_read_timeout: Seconds = setting(Seconds(5 * SECOND), "silence from an upstream mid-response")
    coalesce_timeout: Seconds = setting(Seconds(5 * SECOND), "how long a request waits for an identical miss")
    max_coalesced_waiters: int = setting(10_000, "requests that may wait on one miss")
    follow_feed: bool = setting(
        True,
        "follow a change feed (the first upstream's; with a shard map the last, the origin) and evict changed items",
    )
    feed_wait: Seconds = setting(Seconds(20 * SECOND), "long-poll wait on the change feed")
    feed: str = setting("http", "change feed transport: http (long-poll the first upstream) or redis (Streams)")
    feed_redis: str = setting("", "redis:// URL of the Redis Streams change feed (feed = redis)")
    feed_source: str = setting("origin", "the Redis feed to follow: origin or a shard id (boxoffice:changes:{source})")
    feed_max_outage: Seconds = setting(Seconds(30 * SECOND), "purge once when the feed is unreachable this long")
    region: str = setting("", "this POP's region, for routing by the shard map (e.g. eu-west)")
    shardmap_url: str = setting("", "URL of the shard map (GET …/v1/shardmap); empty: route to upstreams only")
    shardmap_interval: Seconds = setting(Seconds(5 * SECOND), "how often the shard map is fetched")
    purge_token: str = setting("", "bearer token for POST /_edge/warm and /_edge/purge (empty: refused)")
    warm_concurrency: int = setting(8, "upstream fetches in flight while warming")
    predictor: str = setting("", "predictor base URL for per-user hints (empty: no hints)")
    user_secret: str = setting("", "HMAC secret of user tokens (bo_user cookie); empty: hints are off")
    shutdown_timeout: Seconds = setting(Seconds(10 * SECOND), "grace period for in-flight requests on shutdown")
    access_log: bool = setting(False, "log one line per request")
    log_level: str = setting("info", "debug, info, warning or error")

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise SettingsError(f"edge.port: {self.port} is not a TCP port")
        if not self.upstreams or not all(u.startswith(("http://", "https://")) for u in self.upstreams):
            raise SettingsError("edge.upstreams: one or more http:// URLs, comma separated")
        if not self.site or "/" in self.site:
            raise SettingsError("edge.site: a host name such as www.boxoffice.test")
        if self.max_entry_bytes > self.cache_bytes // 10:
            raise SettingsError("edge.max_entry_bytes: at most a tenth of cache_bytes (the small S3-FIFO queue)")
        if not 1 <= self.workers <= 64:
            raise SettingsError("edge.workers: must be 1 to 64")
        if self.redis and not self.redis.startswith(_REDIS_SCHEMES):
            raise SettingsError("edge.redis: a redis://host:port/db URL")
        if self.feed not in ("http", "redis"):
            raise SettingsError(f"edge.feed: {self.feed!r} is not http or redis")
        if self.feed == "redis" and not self.feed_redis.startswith(_REDIS_SCHEMES):
            raise SettingsError("edge.feed_redis: a redis://host:port/db URL (needed when feed = redis)")
        if not _NAME.match(self.feed_source):
            raise SettingsError(f"edge.feed_source: {self.feed_source[:80]!r} is not origin or a shard id")
        if self.shardmap_url and not self.shardmap_url.startswith(("http://", "https://")):
            raise SettingsError("edge.shardmap_url: an http:// URL such as http://127.0.0.1:8100/v1/shardmap")
        if self.shardmap_url and not self.region:
            raise SettingsError("edge.region: needed to route by the shard map (edge.shardmap_url is set)")
        for name in ("max_upstream_requests", "max_connections", "warm_concurrency", "max_coalesced_waiters"):
            if getattr(self, name) < 1:
                raise SettingsError(f"edge.{name}: must be at least 1")
        for name in ("keepalive_timeout", "request_timeout", "upstream_connect_timeout", "upstream_read_timeout",
                     "coalesce_timeout", "feed_wait", "feed_max_outage", "shardmap_interval"):  # fmt: skip
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):  # a TOML file can say inf
                raise SettingsError(f"edge.{name}: must be a positive finite number of seconds")
        if self.shutdown_timeout < 0:
            raise SettingsError("edge.shutdown_timeout: must not be negative")
        if self.capacity <= 0:
            raise SettingsError("edge.capacity: must be positive")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise SettingsError(f"edge.log_level: {self.log_level!r} is not debug, info, warning or error")
