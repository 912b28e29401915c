"""Settings of `boxoffice up`: the `[up]` table (see ops.settings for the layers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ops.settings import SECOND, Seconds, SettingsError, setting
from origin.cities import REGIONS

DEFAULT_REGIONS: Final = ("na-east", "eu-west", "ap-northeast")
# The synthetic users share two cores with the whole stack; beyond a few
# hundred requests per second they measure the laptop, not the cache.
MAX_TRAFFIC_RATE: Final = 500.0


@dataclass(frozen=True, slots=True)
class UpSettings:
    data_dir: Path = setting(Path("var/stack"), "databases, logs, generated configs and the state file")
    regions: tuple[str, ...] = setting(DEFAULT_REGIONS, "regions that get a shard and a POP, comma-separated")
    base_port: int = setting(
        0, "0: the standard ports (origin 8100, shards 8110…, POPs 8080…, DNS 5353, admin 8053, predictor 8200); "
        "N: every port counted up from N"
    )  # fmt: skip
    dns_host: str = setting("127.0.0.1", "address GeoDNS answers on (UDP and TCP)")
    redis: str = setting("", "redis:// URL: POPs share it as their L2 cache and follow the feed by Redis Streams")
    postgres: str = setting("", "postgresql:// DSN of the origin primary's database (default: SQLite in data_dir)")
    predictor: bool = setting(True, "run the predictor sidecar (trained on a generated workload on first start)")
    predictor_models: Path | None = setting(
        None, "serve these trained models (`boxoffice predictor train`) instead of training in DATA_DIR/predictor"
    )
    retrain: bool = setting(False, "generate and train the predictor's workload and models again")
    train_users: int = setting(10_000, "users of the predictor's generated workload")
    train_sessions_per_day: int = setting(15_000, "browsing sessions per day of that workload")
    train_seed: int = setting(1, "seed of that workload")
    train_boost_rounds: int = setting(100, "most boosting rounds of the predictor's models")
    traffic: bool = setting(False, "drive synthetic users through the POPs")
    traffic_rate: float = setting(
        20.0, f"synthetic user actions per second in all, 1 to 3 requests each (at most {MAX_TRAFFIC_RATE:g})"
    )
    demo_events: int = setting(3000, "events in the seeded demo catalog")
    demo_venues: int = setting(300, "venues in the seeded demo catalog")
    demo_seed: int = setting(2026, "seed of the demo catalog (the predictor's workload runs over the same one)")
    start_timeout: Seconds = setting(Seconds(90 * SECOND), "how long one service may take to become healthy")
    stop_grace: Seconds = setting(Seconds(15 * SECOND), "SIGTERM, then SIGKILL after this long")
    max_restarts: int = setting(5, "restarts of one crashed service within restart_window before giving up on it")
    restart_window: Seconds = setting(Seconds(300 * SECOND), "the window max_restarts counts in")
    log_level: str = setting("warning", "log level of the children (their logs are in DATA_DIR/logs)")

    def validate(self) -> None:
        """Raise SettingsError naming the first inconsistent setting."""
        if len(self.regions) < 1:
            raise SettingsError("up.regions: name at least one region")
        unknown = sorted(set(self.regions) - set(REGIONS))
        if unknown:
            raise SettingsError(f"up.regions: unknown region {unknown[0]!r} (known: {', '.join(REGIONS)})")
        if len(set(self.regions)) != len(self.regions):
            raise SettingsError("up.regions: a region is named twice")
        if len(self.regions) > 250:  # POP n binds 127.0.0.(n + 2)
            raise SettingsError("up.regions: at most 250 (one loopback address each)")
        if self.base_port and not 1024 <= self.base_port <= 65535 - 2 * len(self.regions) - 8:
            raise SettingsError(f"up.base_port: {self.base_port} leaves no room for the stack's ports")
        if self.redis and not self.redis.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError("up.redis: a redis://host:port/db URL")
        if self.postgres and not self.postgres.startswith(("postgresql://", "postgres://")):
            raise SettingsError("up.postgres: a postgresql://user@host/db DSN")
        if not 0 < self.traffic_rate <= MAX_TRAFFIC_RATE:
            raise SettingsError(f"up.traffic_rate: must be above 0 and at most {MAX_TRAFFIC_RATE:g}")
        if self.demo_events < 1 or self.demo_venues < 1:
            raise SettingsError("up.demo_events and up.demo_venues: must be at least 1")
        if self.train_users < len(REGIONS):  # the generator places at least one user in every region
            raise SettingsError(f"up.train_users: must be at least {len(REGIONS)}, one per region")
        for name in ("train_sessions_per_day", "train_boost_rounds"):
            if getattr(self, name) < 1:
                raise SettingsError(f"up.{name}: must be at least 1")
        if self.start_timeout <= 0:
            raise SettingsError("up.start_timeout: must be positive")
        if self.max_restarts < 0:
            raise SettingsError("up.max_restarts: must not be negative")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise SettingsError(f"up.log_level: {self.log_level!r} is not debug, info, warning or error")
