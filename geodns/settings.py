"""Settings of the GeoDNS server: the `[geodns]` table (see ops.settings for the layers).

The zones, pools and POPs it serves live in the same config file, in the
`[zones.*]`, `[pools.*]` and `[pops.*]` tables (see geodns.config).
"""

from __future__ import annotations

from dataclasses import dataclass

from ops.settings import SECOND, Seconds, SettingsError, setting


@dataclass(frozen=True, slots=True)
class GeoDNSSettings:
    host: str = setting("127.0.0.1", "address to answer DNS on (UDP and TCP)")
    port: int = setting(5353, "DNS port (53 in production)")
    admin_host: str = setting("127.0.0.1", "address of the admin HTTP API and /metrics")
    admin_port: int = setting(8053, "admin HTTP port")
    admin_token: str = setting("", "bearer token for admin writes (empty: writes are refused)")
    geo_database: str = setting("", "MaxMind-format city database (.mmdb); empty: every client is 'unknown'")
    answer_count: int = setting(2, "POP addresses per steered answer")
    geo_ttl: int = setting(30, "TTL in seconds of steered answers")
    nsid: str = setting("", "name server id returned to +nsid queries (RFC 5001); empty: none")
    health_interval: Seconds = setting(Seconds(1 * SECOND), "how often each POP's health endpoint is checked")
    health_timeout: Seconds = setting(Seconds(0.5 * SECOND), "timeout of one health check")
    health_rise: int = setting(2, "consecutive good checks before a POP is healthy")
    health_fall: int = setting(2, "consecutive failed checks before a POP is unhealthy")
    rrl_responses_per_second: int = setting(200, "responses per second per client network over UDP (0: off)")
    rrl_slip: int = setting(2, "every Nth rate-limited response is sent truncated (TC), the rest dropped")
    rrl_ipv4_prefix: int = setting(24, "client networks for rate limiting: IPv4 prefix length")
    rrl_ipv6_prefix: int = setting(56, "client networks for rate limiting: IPv6 prefix length")
    max_amplification: int = setting(10, "UDP answers larger than this many times the query go out truncated")
    tcp_idle_timeout: Seconds = setting(Seconds(10 * SECOND), "close idle TCP connections after this long")
    tcp_max_connections: int = setting(256, "concurrent TCP connections")
    tcp_max_queries: int = setting(100, "queries answered on one TCP connection before it is closed")
    shutdown_timeout: Seconds = setting(Seconds(5 * SECOND), "grace period for admin requests on shutdown")
    log_level: str = setting("info", "debug, info, warning or error")

    def validate(self) -> None:
        for name in ("port", "admin_port"):
            if not 0 <= getattr(self, name) < 65536:
                raise SettingsError(f"geodns.{name}: {getattr(self, name)} is not a port")
        if not 1 <= self.answer_count <= 8:
            raise SettingsError("geodns.answer_count: must be 1 to 8")
        if not 0 <= self.geo_ttl <= 3600:
            raise SettingsError("geodns.geo_ttl: must be 0 to 3600 seconds")
        if len(self.nsid.encode()) > 128:
            raise SettingsError("geodns.nsid: at most 128 bytes")
        if self.health_rise < 1 or self.health_fall < 1:
            raise SettingsError("geodns.health_rise and health_fall: must be at least 1")
        if not 0 < self.health_timeout <= self.health_interval:
            raise SettingsError("geodns.health_timeout: must be positive and at most health_interval")
        if self.rrl_responses_per_second < 0 or self.rrl_slip < 0:
            raise SettingsError("geodns.rrl_responses_per_second and rrl_slip: must not be negative")
        if not 8 <= self.rrl_ipv4_prefix <= 32 or not 16 <= self.rrl_ipv6_prefix <= 128:
            raise SettingsError("geodns.rrl_ipv4_prefix (8-32) or rrl_ipv6_prefix (16-128) out of range")
        if self.max_amplification < 1:
            raise SettingsError("geodns.max_amplification: must be at least 1")
        if self.tcp_max_connections < 1 or self.tcp_max_queries < 1:
            raise SettingsError("geodns.tcp_max_connections and tcp_max_queries: must be at least 1")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise SettingsError(f"geodns.log_level: {self.log_level!r} is not debug, info, warning or error")
