"""POP health: a hysteresis state machine, a health-body parser, and the checker.

The first two are pure. :class:`HealthTracker` turns a stream of check results
into a stable healthy/unhealthy verdict per POP, so one lost packet does not
move traffic and one lucky answer does not bring a dying POP back.
:func:`parse_health_body` reads one HTTP response. :class:`HealthChecker` is the
adapter: it fetches every POP's health URL on an interval with aiohttp, bounded
in time and concurrency, and feeds the tracker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv6Address
from typing import Final

import aiohttp

from geodns.model import Pop, PopHealth

logger = logging.getLogger(__name__)

SECOND: Final = 1.0
KiB: Final = 1024

# Two in a row either way: one dropped probe never moves traffic, and a real
# outage is acted on within two intervals (HAProxy's and Envoy's usual defaults).
DEFAULT_RISE: Final = 2
DEFAULT_FALL: Final = 2
# A DNS TTL of ~30 s means clients follow a verdict within about a TTL; checking
# every 5 s keeps detection (fall x interval = 10 s) well inside that.
DEFAULT_INTERVAL: Final = 5 * SECOND
# A loopback or same-continent POP answers in milliseconds; 2 s is ample and
# keeps one check round (timeout x ceil(pops / concurrency)) under the interval.
DEFAULT_TIMEOUT: Final = 2 * SECOND
# Enough to check a few dozen POPs in one or two rounds of requests without
# opening a burst of sockets from the DNS server.
DEFAULT_CONCURRENCY: Final = 32
# The edge POP's HTTP port and health path (ARCHITECTURE.md, default ports).
DEFAULT_HEALTH_PORT: Final = 8080
HEALTH_PATH: Final = "/_edge/health"
# The edge's health document is a small JSON object (load, capacity, cache
# stats); anything larger is not it, and is not worth buffering.
MAX_HEALTH_BODY_BYTES: Final = 64 * KiB
HTTP_OK: Final = 200
USER_AGENT: Final = "boxoffice-geodns-health"


# ---------------------------------------------------------------- hysteresis


@dataclass(slots=True)
class _PopRecord:
    healthy: bool
    load: float | None = None
    successes: int = 0  # consecutive, reset by a failure
    failures: int = 0  # consecutive, reset by a success


class HealthTracker:
    """Per-POP health with rise/fall hysteresis.

    Rules (``record(pop_id, ok, load)``; streaks count consecutive results):

    ============  ======  ==========================  ===========================
    state         result  condition                   next state
    ============  ======  ==========================  ===========================
    unhealthy     ok      successes + 1 <  rise       unhealthy (streak grows)
    unhealthy     ok      successes + 1 >= rise       **healthy** (changed)
    unhealthy     fail    —                           unhealthy, successes = 0
    healthy       fail    failures + 1 <  fall        healthy (streak grows)
    healthy       fail    failures + 1 >= fall        **unhealthy** (changed)
    healthy       ok      —                           healthy, failures = 0
    ============  ======  ==========================  ===========================

    A POP never seen before starts in ``initially_healthy`` (default False: a
    POP must prove itself with `rise` successes before it gets traffic). At
    startup every POP is therefore unhealthy for a moment; steering's all-down
    rule answers the nearest POPs anyway, so a fresh server still works.

    Load: a success replaces the load with the one it reported (None if it
    reported none); a failure keeps the last known load, since a missed check
    says nothing about load. Only a change of ``healthy`` counts as a change.
    """

    def __init__(self, *, rise: int = DEFAULT_RISE, fall: int = DEFAULT_FALL, initially_healthy: bool = False) -> None:
        if rise < 1 or fall < 1:
            raise ValueError(f"rise and fall must be at least 1, got rise={rise} fall={fall}")
        self.rise = rise
        self.fall = fall
        self.initially_healthy = initially_healthy
        self._pops: dict[str, _PopRecord] = {}

    def record(self, pop_id: str, ok: bool, load: float | None = None) -> tuple[PopHealth, bool]:
        """Apply one check result; return the new health and whether ``healthy`` flipped."""
        entry = self._pops.get(pop_id)
        if entry is None:
            entry = self._pops[pop_id] = _PopRecord(healthy=self.initially_healthy)
        was_healthy = entry.healthy
        if ok:
            entry.load = load
            entry.failures = 0
            entry.successes += 1
            if not entry.healthy and entry.successes >= self.rise:
                entry.healthy = True
        else:
            entry.successes = 0
            entry.failures += 1
            if entry.healthy and entry.failures >= self.fall:
                entry.healthy = False
        return PopHealth(healthy=entry.healthy, load=entry.load), entry.healthy != was_healthy

    def state(self, pop_id: str) -> PopHealth:
        """The current verdict; a POP never recorded is in the initial state."""
        entry = self._pops.get(pop_id)
        if entry is None:
            return PopHealth(healthy=self.initially_healthy)
        return PopHealth(healthy=entry.healthy, load=entry.load)

    def snapshot(self) -> dict[str, PopHealth]:
        """Every recorded POP's verdict, by id (a new dict; safe to hand to steering)."""
        return {pop_id: PopHealth(healthy=entry.healthy, load=entry.load) for pop_id, entry in self._pops.items()}

    def forget(self, pop_id: str) -> None:
        """Drop a POP's history (it was deregistered); unknown ids are ignored."""
        self._pops.pop(pop_id, None)


# ---------------------------------------------------------------- parsing


def parse_health_body(status: int, body: bytes | None) -> tuple[bool, float | None]:
    """Judge one health response: ``(ok, load)``.

    200 is ok whatever the body (until every edge serves ``/_edge/health``, any
    200 counts). If the body is a JSON object with a finite, non-negative
    numeric ``load`` (requests per second), that load is returned; a
    ``capacity`` field is ignored — the registry's capacity is authoritative, so
    it is set in one place. Any other status is a failure. `body` None means it
    was not read (too large).
    """
    if status != HTTP_OK:
        return False, None
    if not body:
        return True, None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError and bad UTF-8 are ValueErrors
        return True, None
    if not isinstance(document, dict):
        return True, None
    load = document.get("load")
    if isinstance(load, bool) or not isinstance(load, int | float):
        return True, None
    load = float(load)
    if not math.isfinite(load) or load < 0:
        return True, None
    return True, load


def health_url(pop: Pop, port: int = DEFAULT_HEALTH_PORT) -> str | None:
    """The URL to check `pop` at: its own, else its first address; None if it has neither."""
    if pop.health_url:
        return pop.health_url
    if not pop.addresses:
        return None
    address = pop.addresses[0]
    host = f"[{address}]" if isinstance(address, IPv6Address) else str(address)
    return f"http://{host}:{port}{HEALTH_PATH}"


# ---------------------------------------------------------------- adapter

ChangeCallback = Callable[[str, PopHealth], None]


class HealthChecker:
    """Checks every POP each `interval` seconds and feeds a :class:`HealthTracker`.

    `pops` is called at the start of every round, so registry changes apply on
    the next round; POPs no longer returned are forgotten by the tracker.
    Drained POPs are checked too (undraining one should not wait for `rise`).
    Every failure — refused connection, timeout, non-200, malformed URL — is a
    failed check, logged at debug level; none escapes. (A 200 with an oversized
    or unparsable body is a success without a load.) `on_change` is called
    after each healthy/unhealthy transition; an exception from it is logged,
    not raised, so a faulty listener cannot stop health checking.
    """

    def __init__(
        self,
        pops: Callable[[], Iterable[Pop]],
        tracker: HealthTracker,
        *,
        interval: float = DEFAULT_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        concurrency: int = DEFAULT_CONCURRENCY,
        port: int = DEFAULT_HEALTH_PORT,
        on_change: ChangeCallback | None = None,
    ) -> None:
        if not (interval > 0 and timeout > 0 and math.isfinite(interval) and math.isfinite(timeout)):
            raise ValueError(f"interval and timeout must be positive and finite, got {interval} and {timeout}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._pops = pops
        self.tracker = tracker
        self.interval = interval
        self.timeout = timeout
        self.concurrency = concurrency
        self.port = port
        self._on_change = on_change

    async def run(self) -> None:
        """Check all POPs every `interval` (start to start) until cancelled."""
        loop = asyncio.get_running_loop()
        async with self._session() as session:
            while True:
                started = loop.time()
                await self._check_round(session)
                await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))

    async def check_once(self) -> dict[str, PopHealth]:
        """Run one round of checks with a fresh session; return the tracker's snapshot."""
        async with self._session() as session:
            await self._check_round(session)
        return self.tracker.snapshot()

    def _session(self) -> aiohttp.ClientSession:
        # force_close: each check opens a new connection, proving the POP still
        # accepts them (a kept-alive socket can outlive a wedged listener).
        connector = aiohttp.TCPConnector(limit=self.concurrency, force_close=True)
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"User-Agent": USER_AGENT},
        )

    async def _check_round(self, session: aiohttp.ClientSession) -> None:
        pops = {pop.id: pop for pop in self._pops()}
        for pop_id in set(self.tracker.snapshot()) - set(pops):
            self.tracker.forget(pop_id)
        limit = asyncio.Semaphore(self.concurrency)
        async with asyncio.TaskGroup() as group:
            for pop in pops.values():
                group.create_task(self._check_pop(session, limit, pop))

    async def _check_pop(self, session: aiohttp.ClientSession, limit: asyncio.Semaphore, pop: Pop) -> None:
        async with limit:
            ok, load = await self._probe(session, pop)
        health, changed = self.tracker.record(pop.id, ok, load)
        if changed:
            logger.info("POP %s is now %s", pop.id, "healthy" if health.healthy else "unhealthy")
            if self._on_change is not None:
                try:
                    self._on_change(pop.id, health)
                except Exception:
                    # Raising here would cancel the whole round (TaskGroup) and
                    # freeze every POP's health; the listener's bug is logged.
                    logger.exception("on_change listener failed for POP %s", pop.id)

    async def _probe(self, session: aiohttp.ClientSession, pop: Pop) -> tuple[bool, float | None]:
        url = health_url(pop, self.port)
        if url is None:
            logger.debug("POP %s has no address or health URL to check", pop.id)
            return False, None
        try:
            async with session.get(url, allow_redirects=False) as response:
                body = await _read_limited(response.content, MAX_HEALTH_BODY_BYTES)
                return parse_health_body(response.status, body)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            # ClientError covers refused/reset connections and bad responses;
            # TimeoutError the ClientTimeout; ValueError a malformed health_url.
            logger.debug("health check of POP %s at %s failed: %r", pop.id, url, exc)
            return False, None


async def _read_limited(stream: aiohttp.StreamReader, limit: int) -> bytes | None:
    """Read the body up to `limit` bytes; None if it is longer (not a health document)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read(limit + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return None
    return b"".join(chunks)
