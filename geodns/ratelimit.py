"""Response-rate limiting per client network (the BIND RRL idea), pure.

Spoofed-source floods turn an authoritative server into an amplifier aimed at
the spoofed victim. Each client network (a /24 or /56 by default) gets a token
bucket of `responses_per_second`, refilled continuously, holding at most one
second of burst. Over the limit, a response is dropped — except every
`slip`-th one, which goes out as an empty truncated (TC) answer: a real
resolver behind a busy network retries over TCP and is answered; a victim of
spoofing receives a tiny packet at most. The clock is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address
from typing import Final

from geodns.model import IPAddress

# Buckets are forgotten after this many idle seconds, and the table is swept
# when it grows past MAX_TRACKED_NETWORKS so a scan of many sources cannot
# grow it without bound.
IDLE_FORGET_SECONDS: Final = 10.0
MAX_TRACKED_NETWORKS: Final = 100_000


class Verdict(Enum):
    SEND = "send"
    SLIP = "slip"  # send a truncated empty answer instead
    DROP = "drop"


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float
    limited: int  # responses limited since the bucket last had tokens


class RateLimiter:
    def __init__(self, responses_per_second: int, slip: int, ipv4_prefix: int = 24, ipv6_prefix: int = 56) -> None:
        self.rate = responses_per_second
        self.slip = slip
        self._prefixes = (ipv4_prefix, ipv6_prefix)
        self._buckets: dict[tuple[int, int], _Bucket] = {}
        self.dropped = 0
        self.slipped = 0

    def check(self, client: IPAddress, now: float) -> Verdict:
        """May a UDP response go to `client` at `now` (seconds, any monotonic clock)?"""
        if self.rate <= 0:
            return Verdict.SEND
        key = self._network(client)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_NETWORKS:
                self._sweep(now)
            bucket = self._buckets[key] = _Bucket(float(self.rate), now, 0)
        else:
            bucket.tokens = min(float(self.rate), bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            bucket.limited = 0
            return Verdict.SEND
        bucket.limited += 1
        if self.slip and bucket.limited % self.slip == 0:
            self.slipped += 1
            return Verdict.SLIP
        self.dropped += 1
        return Verdict.DROP

    def _network(self, client: IPAddress) -> tuple[int, int]:
        # (version, address >> host bits): cheaper per packet than ip_network().
        if isinstance(client, IPv4Address):
            return 4, int(client) >> (32 - self._prefixes[0])
        return 6, int(client) >> (128 - self._prefixes[1])

    def _sweep(self, now: float) -> None:
        stale = [key for key, bucket in self._buckets.items() if now - bucket.updated > IDLE_FORGET_SECONDS]
        for key in stale:
            del self._buckets[key]
        # Under a wide spoofed scan, start over rather than grow — and rather than
        # sweep again for every new network when only a few went stale.
        if len(self._buckets) >= MAX_TRACKED_NETWORKS * 3 // 4:
            self._buckets.clear()
