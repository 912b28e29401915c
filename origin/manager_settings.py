"""Settings of the shard manager, ``boxoffice origin manager`` (see ops.settings for the layers).

They load from the ``[manager]`` table of the config file and from
``BOXOFFICE_MANAGER_*`` variables, so one file configures the whole stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from ops.settings import SECOND, Seconds, SettingsError, setting
from origin.cities import REGION_BY_ID, REGIONS
from origin.placement import (
    DEFAULT_COOL_DOWN,
    DEFAULT_CREATE_THRESHOLD,
    DEFAULT_MAX_EVENTS_PER_SHARD,
    DEFAULT_MIN_SHARD_LIFETIME,
    DEFAULT_RETIRE_THRESHOLD,
    SECONDARY_REGION,
    PlacementConfig,
    nearest_other_regions,
)

BACKENDS = ("local", "kubernetes")


@dataclass(frozen=True, slots=True)
class ManagerSettings:
    origin: str = setting("http://127.0.0.1:8100", "the origin primary's URL: the map is PUT to {origin}/v1/shardmap")
    forecast: str = setting("", "demand forecast: a JSON file, or the predictor's http(s)://…/v1/forecast")
    backend: str = setting("local", "where shards run: local (child processes) or kubernetes (kubectl apply)")
    state_dir: Path = setting(Path("var/manager"), "the placement state file and local shards' data directories")
    shardmap_token: str = setting("", "bearer token for PUT /v1/shardmap (the origin's shardmap_token)")
    upstream: str = setting("", "the URL shards follow (their change feed and snapshots); empty: the origin")
    interval: Seconds = setting(Seconds(15 * SECOND), "time between two rounds (forecast, health, plan, publish)")
    http_timeout: Seconds = setting(Seconds(5 * SECOND), "timeout of one forecast read, health check or publish")
    unhealthy_after: int = setting(3, "consecutive failed health checks that make a shard unhealthy")
    healthy_after: int = setting(2, "consecutive passed health checks that make an unhealthy shard healthy again")
    create_threshold: float = setting(DEFAULT_CREATE_THRESHOLD, "requests/s at which an event gets a shard")
    retire_threshold: float = setting(DEFAULT_RETIRE_THRESHOLD, "requests/s below which an event is dropped")
    cool_down: Seconds = setting(
        Seconds(DEFAULT_COOL_DOWN.total_seconds()), "how long demand stays below retire_threshold before a drop"
    )
    min_shard_lifetime: Seconds = setting(
        Seconds(DEFAULT_MIN_SHARD_LIFETIME.total_seconds()), "an emptied shard is kept at least this long"
    )
    max_events_per_shard: int = setting(DEFAULT_MAX_EVENTS_PER_SHARD, "most events one shard mirrors")
    regions: tuple[str, ...] = setting((), "regions that may hold shards, comma-separated (none: every region)")
    start_timeout: Seconds = setting(Seconds(60 * SECOND), "how long a new shard may take to answer /v1/health")
    stop_grace: Seconds = setting(Seconds(10 * SECOND), "SIGTERM, then SIGKILL after this long (local backend)")
    shard_host: str = setting("127.0.0.1", "address local shards listen on")
    base_port: int = setting(8110, "first port of local shards (8110, 8111, …)")
    shard_args: tuple[str, ...] = setting((), "extra flags of local shards, comma-separated (--max-lag,5s)")
    namespace: str = setting("boxoffice", "Kubernetes namespace of the shards")
    image: str = setting("boxoffice:latest", "container image of the shards (the one boxoffice image)")
    storage: str = setting("", "PersistentVolumeClaim size per shard, e.g. 10Gi (empty: an emptyDir)")
    kubectl: str = setting("kubectl", "the kubectl program")
    metrics_port: int = setting(8190, "port of the manager's /metrics and /v1/health (0: none)")
    metrics_host: str = setting("127.0.0.1", "address of the manager's /metrics")
    log_level: str = setting("info", "debug, info, warning or error")

    def validate(self) -> None:
        """Raise SettingsError naming the first inconsistent setting."""
        for name in ("origin", "upstream"):
            value = getattr(self, name)
            if value and (urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc):
                raise SettingsError(f"manager.{name}: {value!r} is not an http(s) URL")
        if not self.forecast:
            raise SettingsError("manager.forecast: name a forecast file or the predictor's /v1/forecast URL")
        if self.backend not in BACKENDS:
            raise SettingsError(f"manager.backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.unhealthy_after < 1 or self.healthy_after < 1:
            raise SettingsError("manager.unhealthy_after and manager.healthy_after: must be at least 1")
        if self.interval <= 0 or self.http_timeout <= 0 or self.start_timeout <= 0:
            raise SettingsError("manager.interval, http_timeout and start_timeout: must be positive")
        if not 0 < self.base_port < 65536:
            raise SettingsError(f"manager.base_port: {self.base_port} is not a TCP port")
        if not 0 <= self.metrics_port < 65536:
            raise SettingsError(f"manager.metrics_port: {self.metrics_port} is not a TCP port (or 0)")
        unknown = sorted(set(self.regions) - set(REGIONS))
        if unknown:
            raise SettingsError(f"manager.regions: unknown region {unknown[0]!r} (known: {', '.join(REGIONS)})")
        if len(set(self.regions)) == 1:
            raise SettingsError("manager.regions: name at least two, so each region has a secondary to fail over to")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise SettingsError(f"manager.log_level: {self.log_level!r} is not debug, info, warning or error")
        try:
            self.placement_config()
        except ValueError as exc:
            raise SettingsError(f"manager: {exc}") from None

    @property
    def upstream_url(self) -> str:
        return (self.upstream or self.origin).rstrip("/")

    def placement_config(self) -> PlacementConfig:
        """The thresholds of origin.placement; raises ValueError naming the bad one."""
        secondary = SECONDARY_REGION
        if self.regions:
            secondary = nearest_other_regions([REGION_BY_ID[region] for region in self.regions])
        return PlacementConfig(
            create_threshold=self.create_threshold,
            retire_threshold=self.retire_threshold,
            cool_down=timedelta(seconds=self.cool_down),
            min_shard_lifetime=timedelta(seconds=self.min_shard_lifetime),
            max_events_per_shard=self.max_events_per_shard,
            secondary_region=secondary,
        )
