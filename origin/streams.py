"""Redis Streams fan-out: one follower of a source's change feed publishes it for many POPs.

How it works: :class:`StreamPublisher` long-polls ``GET {upstream}/v1/changes``
like any feed consumer and appends every record to the Redis Stream
``boxoffice:changes:{source}`` (``XADD key MAXLEN ~ N * …``). Each POP reads
that stream through its own consumer group, so one upstream follower serves
any number of POPs. The entry format, shared with the POP's consumer, and the
pure decisions (which entries a feed answer becomes) live in
:mod:`origin.streamformat`, the retry spacing in :mod:`ops.backoff`; this
module is the adapter that performs them.

The checkpoint (the last ``pos`` published) is the string key
``boxoffice:changes:{source}:checkpoint``. It is written in the same
``MULTI``/``EXEC`` as the batch's ``XADD`` s, under ``WATCH`` of the checkpoint
whose value we expect: a batch is published whole and exactly once, or not at
all. When ``EXEC`` is refused (another publisher of the same source moved the
checkpoint) or its answer is lost (a dropped connection), we re-read the
checkpoint from Redis and continue from there: never a duplicate, never a skip.
For the same reason cancellation (SIGTERM) is safe at any point.

Resets, each published as a marker in the transaction that moves the checkpoint:

- ``start``: no checkpoint in Redis (first run, or Redis lost its data). The
  position comes from ``GET /v1/snapshot?limit=1``;
- ``gone``: the upstream answered ``410`` (pruned past us, another history,
  ahead of its head) or answered with another epoch. A fresh snapshot position
  is taken first, then the marker is published with it;
- ``gap``: a sequence number is missing inside an answer (the feed is
  gapless, so the upstream is broken): the marker sits where the gap is and
  the records after it follow in the same transaction.

Upstream failures (connection errors, timeouts, 5xx, malformed answers) and
Redis failures back off exponentially with jitter; every wait is finite (the
long-poll ``wait`` plus a margin; a Redis socket timeout). Redis commands are
not retried by the client: after any Redis error the checkpoint is re-read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import redis.asyncio as redis_asyncio
from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError, WatchError
from yarl import URL

from ops.backoff import Backoff
from ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ops.metrics import Registry
from ops.runtime import configure_logging, run, until_signalled
from ops.settings import SECOND, Seconds, SettingsError, add_arguments, load, setting
from origin.changefeed import Position
from origin.errors import BadRequest, PositionGone
from origin.streamformat import (
    DEFAULT_MAXLEN,
    MAX_BATCH_LIMIT,
    OP_RESET,
    ChangesAnswer,
    UpstreamFeedError,
    check_source,
    checkpoint_key,
    parse_changes,
    parse_position,
    plan_batch,
    reset_fields,
    stream_key,
)

# The pure names are re-exported: callers and tests of the publisher import them from here.
__all__ = [
    "DEFAULT_MAXLEN",
    "MAX_BATCH_LIMIT",
    "MAX_RESPONSE_BYTES",
    "OP_RESET",
    "ChangesAnswer",
    "PublisherMetrics",
    "PublisherSettings",
    "StreamPublisher",
    "UpstreamFeedError",
    "check_source",
    "checkpoint_key",
    "connect_redis",
    "group_lag",
    "main",
    "parse_changes",
    "plan_batch",
    "publish",
    "status_app",
    "stream_key",
]

log = logging.getLogger("boxoffice.origin.streams")

MiB: Final = 1024 * 1024
# 1,000 records with whole-document patches are ~2 MB; 16 MiB refuses only a runaway answer.
MAX_RESPONSE_BYTES: Final = 16 * MiB
_READ_CHUNK: Final = 64 * 1024
_BATCH_BUCKETS: Final = (1, 5, 10, 50, 100, 250, 500, 1000)


class _CheckpointMoved(Exception):
    """The checkpoint in Redis is not the one we expected: re-read it."""


@dataclass(frozen=True, slots=True)
class PublisherSettings:
    upstream: str = setting("", "base URL of the origin or shard whose feed is published (required)")
    redis: str = setting("redis://127.0.0.1:6379/0", "Redis URL of the stream")
    source: str = setting("origin", "feed name: the stream is boxoffice:changes:SOURCE")
    maxlen: int = setting(DEFAULT_MAXLEN, "approximate stream length kept (XADD MAXLEN ~ N)")
    batch_limit: int = setting(500, f"records asked per /v1/changes request (1 to {MAX_BATCH_LIMIT})")
    long_poll_wait: Seconds = setting(Seconds(10 * SECOND), "long-poll wait (below the upstream's feed_max_wait)")
    request_margin: Seconds = setting(Seconds(5 * SECOND), "time past the wait for an answer to arrive")
    connect_timeout: Seconds = setting(Seconds(2 * SECOND), "TCP connect timeout to the upstream")
    redis_timeout: Seconds = setting(Seconds(2 * SECOND), "timeout of one Redis command or connect")
    backoff_initial: Seconds = setting(Seconds(0.1 * SECOND), "first retry delay after a failure")
    backoff_max: Seconds = setting(Seconds(5 * SECOND), "longest retry delay")
    host: str = setting("127.0.0.1", "address of the /metrics and /v1/health listener")
    port: int = setting(8191, "port of the /metrics and /v1/health listener (0: none; the shard manager has 8190)")
    log_level: str = setting("info", "debug, info, warning or error")

    def validate(self) -> None:
        """Raise SettingsError naming the first bad setting."""
        if not self.upstream.startswith(("http://", "https://")):
            raise SettingsError("publisher.upstream: required, an http:// or https:// base URL")
        if not self.redis.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError("publisher.redis: must be a redis://, rediss:// or unix:// URL")
        try:
            check_source(self.source)
        except ValueError as exc:
            raise SettingsError(f"publisher.source: {exc}") from None
        if self.maxlen < 1:
            raise SettingsError("publisher.maxlen: must be at least 1")
        if not 1 <= self.batch_limit <= MAX_BATCH_LIMIT:
            raise SettingsError(f"publisher.batch_limit: must be 1 to {MAX_BATCH_LIMIT}")
        for name in ("request_margin", "connect_timeout", "redis_timeout", "backoff_initial"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise SettingsError(f"publisher.{name}: must be a positive duration")
        if not math.isfinite(self.long_poll_wait) or not math.isfinite(self.backoff_max):
            raise SettingsError("publisher.long_poll_wait and backoff_max: must be finite")
        if self.long_poll_wait < 0:  # the upstream answers a negative wait with 400, every request
            raise SettingsError("publisher.long_poll_wait: must be 0 or more")
        if self.backoff_max < self.backoff_initial:
            raise SettingsError("publisher.backoff_max: must be at least backoff_initial")
        if not 0 <= self.port < 65536:
            raise SettingsError(f"publisher.port: {self.port} is not a TCP port")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise SettingsError(f"publisher.log_level: {self.log_level!r} is not debug, info, warning or error")


# The adapter ----------------------------------------------------------------


class PublisherMetrics:
    """What `/metrics` shows about one publisher (labelled by source, so one registry can hold several)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        r, by_source, by_group = registry, ("source",), ("source", "group")
        self.published = r.counter("publisher_records_published_total", "Change records added to the stream", by_source)
        self.resets = r.counter(
            "publisher_resets_total", "Reset markers added, by reason (start, gone, gap)", ("source", "reason")
        )
        self.batches = r.histogram(
            "publisher_batch_entries", "Entries per published transaction", by_source, _BATCH_BUCKETS
        )
        self.failures = r.counter(
            "publisher_failures_total", "Failed attempts by side (upstream, redis)", ("source", "side")
        )
        self.stream_length = r.gauge("publisher_stream_length", "XLEN after the last publish", None, by_source)
        self.behind = r.gauge(
            "publisher_upstream_behind_records", "Upstream head minus the checkpoint, as last seen", None, by_source
        )
        self.group_lag = r.gauge(
            "publisher_group_lag_entries", "Entries not yet delivered to each consumer group", None, by_group
        )
        self.group_lag_unknown = r.gauge("publisher_group_lag_unknown", "1 when Redis cannot tell a group's lag",
                                         None, by_group)  # fmt: skip


def connect_redis(url: str, timeout: float) -> Any:
    """A redis-py asyncio client with finite timeouts and no hidden retries (our loop retries)."""
    return redis_asyncio.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                        decode_responses=True, retry=Retry(NoBackoff(), 0))  # fmt: skip


async def group_lag(redis: Any, source: str) -> dict[str, int | None]:
    """Lag of every consumer group of `source`'s stream, from XINFO GROUPS (Redis 7.0).

    None (nil) means Redis cannot tell, when entries were deleted in a way it
    cannot count past the group's position: that consumer must treat it as a
    gap. No stream: {}.
    """
    try:
        groups = await redis.xinfo_groups(stream_key(source))
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return {}
        raise
    lags: dict[str, int | None] = {}
    for group in groups:
        name = group["name"]
        lag = group.get("lag")
        lags[name.decode() if isinstance(name, bytes) else str(name)] = None if lag is None else int(lag)
    return lags


class StreamPublisher:
    """Publishes one upstream's change feed into one Redis Stream until cancelled.

    Args:
        settings: the upstream, Redis URL, source name, limits and timeouts.
        metrics: where counters go (a fresh registry when omitted).
        rand: floats in [0, 1) for the backoff jitter.
    """

    def __init__(
        self,
        settings: PublisherSettings,
        *,
        metrics: PublisherMetrics | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        settings.validate()
        self.settings = settings
        self.metrics = metrics or PublisherMetrics(Registry())
        self.source = settings.source
        self._stream = stream_key(settings.source)
        self._checkpoint_key = checkpoint_key(settings.source)
        upstream = settings.upstream.rstrip("/")
        self.upstream = upstream
        self._changes_url = URL(upstream + "/v1/changes")
        self._snapshot_url = URL(upstream + "/v1/snapshot")
        self._backoff = Backoff(settings.backoff_initial, settings.backoff_max, rand)
        self._loaded = False  # whether _checkpoint mirrors Redis
        self._checkpoint: str | None = None  # the checkpoint text in Redis, as far as we know
        self._pending_reset: tuple[str, str] | None = None  # (reason label, message)
        self._caught_up = False
        self._consecutive_gone = 0
        self.failures = 0
        self.last_error: str | None = None
        self.redis: Any = None

    @property
    def position(self) -> str | None:
        return self._checkpoint if self._loaded else None

    def status(self) -> dict[str, Any]:
        return {"source": self.source, "upstream": self.upstream, "stream": self._stream, "checkpoint": self.position,
                "caught_up": self._caught_up, "consecutive_failures": self.failures,
                "last_error": self.last_error}  # fmt: skip

    async def run(self) -> None:
        """Publish until cancelled. Raises only CancelledError."""
        settings = self.settings
        timeout = aiohttp.ClientTimeout(
            total=settings.long_poll_wait + settings.request_margin, sock_connect=settings.connect_timeout
        )
        self.redis = connect_redis(settings.redis, settings.redis_timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=2)) as session:
                while True:
                    await self._step(session)
        finally:
            client, self.redis = self.redis, None
            await client.aclose()

    async def _step(self, session: aiohttp.ClientSession) -> None:
        try:
            if not self._loaded:
                await self._load_checkpoint()
            if self._pending_reset is not None:
                await self._publish_reset(session, *self._pending_reset)
            await self._poll(session)
        except PositionGone as gone:
            log.warning("stream %s: %s; re-snapshotting and publishing a reset", self._stream, gone)
            self._pending_reset = ("gone", str(gone))
            self._caught_up = False
            self._consecutive_gone += 1
            if self._consecutive_gone > 1:
                # A fresh snapshot position that is gone at once: a broken upstream, not a pruned
                # feed. Back off rather than fill the stream with reset markers.
                await self._fail_and_wait("upstream", gone)
        except (_CheckpointMoved, WatchError) as exc:
            # Not a failure of anyone: another publisher won, or an EXEC answer was lost. Re-read.
            log.warning("stream %s: checkpoint moved under us (%s); re-reading it", self._stream, exc or "WATCH")
            self._loaded = False
        except UpstreamFeedError as exc:
            await self._fail_and_wait("upstream", exc)
        except (RedisError, OSError, TimeoutError) as exc:
            self._loaded = False  # did the last EXEC apply? Only Redis knows
            await self._fail_and_wait("redis", exc)

    async def _load_checkpoint(self) -> None:
        raw = await self.redis.get(self._checkpoint_key)
        self._checkpoint, self._loaded = raw, True
        if raw is None:
            self._pending_reset = ("start", "no checkpoint in Redis: publishing from a new snapshot position")
            return
        try:
            Position.parse(raw)
        except BadRequest:
            log.error("stream %s: checkpoint %r is not EPOCH:SEQ; starting over", self._stream, raw[:80])
            self._pending_reset = ("start", f"unreadable checkpoint {raw[:80]!r}")
            return
        # A reset decided against an older checkpoint is decided again against this one.
        self._pending_reset = None
        log.info("stream %s: resuming after %s", self._stream, raw)

    async def _publish_reset(self, session: aiohttp.ClientSession, reason: str, message: str) -> None:
        """Take a snapshot position first, then publish the marker with it."""
        doc = await self._get_json(session, self._snapshot_url, {"limit": "1"})
        if not isinstance(doc, dict):
            raise UpstreamFeedError("snapshot answer is not an object")
        position = parse_position(doc.get("position"), "snapshot position")
        await self._publish([reset_fields(position)], position)
        self.metrics.resets.inc(self.source, reason)
        self._pending_reset = None
        self._caught_up = True  # the snapshot position was the head a moment ago
        log.warning("stream %s: reset marker at %s (%s)", self._stream, position.encode(), message)

    async def _poll(self, session: aiohttp.ClientSession) -> None:
        assert self._checkpoint is not None
        since = Position.parse(self._checkpoint)
        # Long-poll only at the head; otherwise ask without waiting (records come at once).
        wait = self.settings.long_poll_wait if self._caught_up else 0.0
        params = {"since": since.encode(), "limit": str(self.settings.batch_limit), "wait": f"{wait:g}"}
        answer = parse_changes(await self._get_json(session, self._changes_url, params))
        plan = plan_batch(since, answer)
        if plan.entries:
            await self._publish(plan.entries, plan.position)
            self.metrics.published.inc(self.source, amount=plan.records)
            if plan.gaps:
                self.metrics.resets.inc(self.source, "gap", amount=plan.gaps)
                log.error("stream %s: %d gap(s) in the upstream feed after %s; reset marker(s) published",
                          self._stream, plan.gaps, since.encode())  # fmt: skip
        self._recovered()
        self.metrics.behind.set(max(0, answer.head.seq - plan.position.seq), self.source)
        self._caught_up = plan.position == answer.head
        if not plan.entries and not self._caught_up:
            raise UpstreamFeedError(f"no changes after {since.encode()} although the head is {answer.head.encode()}")

    async def _publish(self, entries: Sequence[dict[str, str]], position: Position) -> None:
        """XADD `entries` and move the checkpoint to `position`, in one transaction, or not at all.

        Raises _CheckpointMoved (or WatchError) when the checkpoint is not the one we hold.
        """
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.watch(self._checkpoint_key)
            current = await pipe.get(self._checkpoint_key)
            if current != self._checkpoint:
                raise _CheckpointMoved(f"expected {self._checkpoint!r}, found {current!r}")
            pipe.multi()
            for fields in entries:
                pipe.xadd(self._stream, fields, maxlen=self.settings.maxlen, approximate=True)
            pipe.set(self._checkpoint_key, position.encode())
            pipe.xlen(self._stream)
            results = await pipe.execute()
        self._checkpoint = position.encode()
        self.metrics.batches.observe(len(entries), self.source)
        self.metrics.stream_length.set(results[-1], self.source)
        log.debug("stream %s: published %d entries up to %s", self._stream, len(entries), self._checkpoint)

    async def _get_json(self, session: aiohttp.ClientSession, url: URL, params: dict[str, str]) -> Any:
        """GET `url` and decode its JSON. Raises PositionGone on 410, UpstreamFeedError on any other failure."""
        try:
            async with session.get(url, params=params) as response:
                body = await _read_bounded(response)
                status, reason = response.status, response.reason
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamFeedError(f"{url.path}: {type(exc).__name__}: {exc}"[:300]) from exc
        if status == 410:
            raise PositionGone(_error_message(body) or "410 Gone from the change feed")
        if status != 200:
            raise UpstreamFeedError(f"{url.path} answered {status}: {_error_message(body) or reason or ''}"[:300])
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the interpreter goes
            raise UpstreamFeedError(f"{url.path} answered invalid JSON: {exc}") from None

    def _recovered(self) -> None:
        if self.failures:
            log.info("stream %s: working again after %d failure(s)", self._stream, self.failures)
        self.failures = 0
        self._consecutive_gone = 0
        self._backoff.reset()

    async def _fail_and_wait(self, side: str, exc: BaseException) -> None:
        self.last_error = f"{side}: {type(exc).__name__}: {exc}"[:500]
        self.failures += 1
        self._caught_up = False
        self.metrics.failures.inc(self.source, side)
        if self.failures == 1:
            log.warning("stream %s: %s; backing off", self._stream, self.last_error)
        else:
            log.debug("stream %s: failure %d: %s", self._stream, self.failures, self.last_error)
        await asyncio.sleep(self._backoff.next_delay())

    async def refresh_group_lag(self) -> dict[str, int | None]:
        """Read every group's lag into the metrics; returns it. Raises RedisError (also when not running)."""
        if self.redis is None:
            raise RedisError("the publisher is not running")
        lags = await asyncio.wait_for(group_lag(self.redis, self.source), self.settings.redis_timeout)
        for group, lag in lags.items():
            self.metrics.group_lag_unknown.set(1 if lag is None else 0, self.source, group)
            if lag is not None:
                self.metrics.group_lag.set(lag, self.source, group)
        return lags


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(_READ_CHUNK):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise UpstreamFeedError(f"{response.url.path} answer is over {MAX_RESPONSE_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _error_message(body: bytes) -> str | None:
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, RecursionError, KeyError, TypeError):
        return None
    return message if isinstance(message, str) else None


# The command ----------------------------------------------------------------

DESCRIPTION = """\
Follow a source's change feed over HTTP and publish it into the Redis Stream
boxoffice:changes:SOURCE, for POPs to read through their consumer groups.
Settings come from flags, then BOXOFFICE_PUBLISHER_* environment variables,
then the [publisher] table of the --config file, then defaults.
"""
PUBLISHER: Final = web.AppKey("publisher", StreamPublisher)


def status_app(publisher: StreamPublisher) -> web.Application:
    """`GET /v1/health` (position, failures, group lag) and `GET /metrics`."""
    app = web.Application()
    app[PUBLISHER] = publisher
    app.router.add_get("/v1/health", _health)
    app.router.add_get("/metrics", _metrics)
    return app


async def _health(request: web.Request) -> web.Response:
    publisher = request.app[PUBLISHER]
    doc = publisher.status()
    try:
        doc["groups"] = await publisher.refresh_group_lag()
    except (RedisError, OSError, TimeoutError) as exc:
        doc["groups"], doc["redis_error"] = None, str(exc)[:300]
    return web.json_response(doc, status=200 if publisher.failures == 0 else 503)


async def _metrics(request: web.Request) -> web.Response:
    publisher = request.app[PUBLISHER]
    try:
        await publisher.refresh_group_lag()
    except (RedisError, OSError, TimeoutError) as exc:
        log.debug("group lag unavailable for /metrics: %s", exc)
    return web.Response(text=publisher.metrics.registry.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})


async def publish(settings: PublisherSettings) -> None:
    """Publish until SIGINT or SIGTERM; the transaction design makes stopping anywhere safe."""
    publisher = StreamPublisher(settings)
    runner = web.AppRunner(status_app(publisher), access_log=None)
    await runner.setup()
    try:
        if settings.port:
            await web.TCPSite(runner, settings.host, settings.port).start()
        print(f"boxoffice origin publish: {settings.upstream} -> {stream_key(settings.source)} on {settings.redis}"
              + (f"; status on http://{settings.host}:{settings.port}/v1/health" if settings.port else ""),
              flush=True)  # fmt: skip
        task = asyncio.create_task(publisher.run(), name="stream publisher")
        stop = asyncio.create_task(until_signalled(), name="signals")
        try:
            done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for owned in (task, stop):
                owned.cancel()
            await asyncio.gather(task, stop, return_exceptions=True)
        if task in done:
            task.result()  # the publisher only returns by raising: re-raise what stopped it
        log.info("stopped at checkpoint %s", publisher.position)
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None, prog: str = "boxoffice origin publish") -> int:
    """`boxoffice origin publish --upstream URL --redis URL --source NAME [--maxlen N]`."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(parser, PublisherSettings)
    args = parser.parse_args(argv)
    try:
        settings = load(PublisherSettings, "publisher", args=args)
    except SettingsError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        run(publish(settings))
    except OSError as exc:  # the status port is taken, for one
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    return 0
