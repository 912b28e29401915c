"""Settings of `boxoffice predictor serve`: the `[predictor_serve]` table (see ops.settings for the layers).

A table of its own, not `[predictor]`: that one configures `generate`,
`train` and `evaluate`, and every layer refuses keys it does not know, so a
shared table would make each command reject the other's keys. Environment
variables are ``BOXOFFICE_PREDICTOR_SERVE_*``.

``--models`` is what `boxoffice predictor train` wrote (``predictor.models_dir``).
``--workload`` is what `generate` wrote: the sidecar reads its event plan (the
catalog's events and their on-sale schedule), the profiles of the users who
consented and their purchase history. Without it the sidecar rebuilds the
origin's demo catalog from the ``catalog_*`` settings and knows no user until
their events arrive.

``--replay-workload`` makes a demo look lived-in from the first request: the
workload's event log up to the current time is applied before the port
opens (see :func:`predictor.service.replay_workload`), so its engaged users
have hints and the forecast has demand to report.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final
from urllib.parse import urlsplit

from ops.settings import MINUTE, SECOND, Bytes, MiB, Seconds, SettingsError, setting
from origin.cities import REGIONS
from predictor.online import MAX_AHEAD_MS

DEFAULT_PORT: Final = 8200  # ARCHITECTURE.md: predictor HTTP
# The POP accepts a hint list for at most 15 minutes (edge.hints.MAX_HINT_LIFETIME).
MAX_HINT_LIFETIME: Final = 15 * MINUTE
LOG_LEVELS: Final = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class PopTarget:
    """A POP the sidecar pushes warm lists to: its id, the region it serves, its base URL."""

    pop_id: str
    region: str
    url: str


@dataclass(frozen=True, slots=True)
class ServeSettings:
    models: str = setting("var/models", "directory of the versioned model files (`predictor train` output)")
    workload: str = setting("", "directory of a generated workload: event plan, consenting profiles, history")
    replay_workload: bool = setting(
        False, "before serving, feed the --workload event log up to now into the sidecar (a demo's live users)"
    )
    listen: str = setting(f"127.0.0.1:{DEFAULT_PORT}", "HOST:PORT the HTTP API listens on")
    pops: tuple[str, ...] = setting(
        (), "POPs to push warm lists to: pop_id=URL or pop_id@region=URL, comma-separated (region: the pop id)"
    )
    warm_token: str = setting("", "bearer token of the POPs' POST /_edge/warm (edge.purge_token)")
    catalog_seed: int = setting(2026, "without --workload: seed of the origin's demo catalog")
    catalog_venues: int = setting(300, "without --workload: venues of that catalog")
    catalog_events: int = setting(3000, "without --workload: events of that catalog")
    catalog_start: str = setting("2026-01-05T00:00:00Z", "without --workload: that catalog's start (RFC 3339)")
    hint_threshold: float = setting(
        0.1, "calibrated purchase probability an event needs to be hinted (a hint costs one prefetch)"
    )
    hint_lifetime: Seconds = setting(Seconds(5 * MINUTE), "how long a hint list stays valid (expires_at)")
    max_batch_events: int = setting(1000, "most events in one POST /v1/events (413 beyond)")
    max_body: Bytes = setting(Bytes(1 * MiB), "largest request body accepted (413 beyond)")
    max_event_age: Seconds = setting(Seconds(60 * MINUTE), "oldest event accepted, behind the sidecar's clock")
    # 64 waiting batches hold at most 64 x max_body (64 MiB by default); 64 hint lists take most of a
    # second to score, longer than a POP waits for one (edge.hints: 300 ms), so more would be wasted work.
    max_queued_calls: int = setting(
        64, "requests waiting for the scoring thread at once; more get 503 with Retry-After (each may hold a body)"
    )
    max_clock_skew: Seconds = setting(Seconds(5 * MINUTE), "furthest an event may be ahead of the sidecar's clock")
    warm_lead: Seconds = setting(Seconds(1 * MINUTE), "push a POP's warm list this long before an on-sale")
    warm_lookahead: Seconds = setting(Seconds(60 * MINUTE), "GET /v1/warm covers on-sales this far ahead")
    warm_push_timeout: Seconds = setting(Seconds(10 * SECOND), "time limit of one warm push to a POP")
    warm_push_attempts: int = setting(3, "attempts per warm push (retried after 1 s, 2 s, …)")
    reload_interval: Seconds = setting(Seconds(30 * SECOND), "how often to look for a newer model (0: never)")
    shutdown_timeout: Seconds = setting(Seconds(5 * SECOND), "time to drain in-flight requests on SIGTERM")
    access_log: bool = setting(False, "log every request")
    log_level: str = setting("info", "debug, info, warning or error")

    def validate(self) -> None:
        """Raise SettingsError naming the first bad setting."""
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"predictor_serve.log_level: {self.log_level!r} is not {', '.join(LOG_LEVELS)}")
        if not self.models:
            raise SettingsError("predictor_serve.models: give the directory `boxoffice predictor train` wrote")
        self.bind_address()
        self.pop_targets()
        if not 0 <= self.hint_threshold <= 1:
            raise SettingsError(f"predictor_serve.hint_threshold: a probability in [0, 1], got {self.hint_threshold}")
        if not 0 < self.hint_lifetime <= MAX_HINT_LIFETIME:
            raise SettingsError(f"predictor_serve.hint_lifetime: above 0 and at most {MAX_HINT_LIFETIME:.0f} s")
        # online features keep their windows MAX_AHEAD_MS longer than their width for events from the future
        if not 0 <= self.max_clock_skew <= MAX_AHEAD_MS / 1000:
            raise SettingsError(
                f"predictor_serve.max_clock_skew: from 0 to {MAX_AHEAD_MS / 1000:.0f} s, got {self.max_clock_skew:g} s"
            )
        for name in (
            "max_batch_events", "max_body", "max_queued_calls", "warm_push_attempts", "catalog_venues",
            "catalog_events",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise SettingsError(f"predictor_serve.{name}: must be at least 1")
        for name in ("max_event_age", "warm_lead", "warm_lookahead", "warm_push_timeout"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"predictor_serve.{name}: must be above 0")
        if self.warm_lead > self.warm_lookahead:
            raise SettingsError("predictor_serve.warm_lead: must not exceed warm_lookahead (the pushed list covers it)")
        try:
            start = datetime.fromisoformat(self.catalog_start.replace("Z", "+00:00"))
        except ValueError:
            start = None
        if start is None or start.tzinfo is None:
            raise SettingsError(
                f"predictor_serve.catalog_start: an RFC 3339 time with a timezone like 2026-01-05T00:00:00Z, "
                f"got {self.catalog_start!r}"
            )
        if self.replay_workload and not self.workload:
            raise SettingsError("predictor_serve.replay_workload: needs --workload, the event log to replay")
        if self.pops and not self.warm_token:
            raise SettingsError("predictor_serve.warm_token: needed to push warm lists to --pops")

    def bind_address(self) -> tuple[str, int]:
        """(host, port) of ``listen``.

        Raises:
            SettingsError: not HOST:PORT with a port in 0–65535.
        """
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise SettingsError(f"predictor_serve.listen: expected HOST:PORT like 127.0.0.1:8200, got {self.listen!r}")
        return host, int(port)

    def pop_targets(self) -> tuple[PopTarget, ...]:
        """The POPs of ``pops``.

        Raises:
            SettingsError: an entry is not ``pop_id[@region]=http(s)://…``, a region is unknown, or an id repeats.
        """
        targets: dict[str, PopTarget] = {}
        for entry in self.pops:
            name, equals, url = entry.partition("=")
            pop_id, _, region = name.strip().partition("@")
            region = region or pop_id
            parts = urlsplit(url.strip())
            if not equals or not pop_id or parts.scheme not in ("http", "https") or not parts.netloc:
                raise SettingsError(f"predictor_serve.pops: expected pop_id=http://HOST:PORT, got {entry!r}")
            if region not in REGIONS:
                raise SettingsError(
                    f"predictor_serve.pops: {entry!r} serves unknown region {region!r}; "
                    f"write pop_id@region=URL with one of {', '.join(REGIONS)}"
                )
            if pop_id in targets:
                raise SettingsError(f"predictor_serve.pops: POP {pop_id!r} is listed twice")
            targets[pop_id] = PopTarget(pop_id, region, url.strip().rstrip("/"))
        return tuple(targets.values())
