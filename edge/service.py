"""Run one edge POP: upstream pool, cache, change-feed follower, shard map, HTTP server, graceful shutdown.

The change feed is followed over HTTP (edge.feedfollow, `/v1/changes` of the
upstream `feed_upstream` names) or through Redis Streams (edge.streamfollow,
`feed = "redis"`). Each process has its own cache, so each needs every
change: every process reads with a consumer group of its own
(`pop:{pop}.{host}[.w{n}]`, see `feed_reader_id`), where a shared group would
split the entries between them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import socket

import aiohttp

from edge.feedfollow import FeedFollower, FollowOptions
from edge.hints import HintService
from edge.l2 import RedisL2
from edge.pop import Pop
from edge.routes import EdgeApp
from edge.server import ServerState, slow_fields
from edge.settings import EdgeSettings
from edge.shardmap import Router, ShardMapPoller
from edge.streamfollow import StreamFollower, StreamOptions
from edge.upstream import Outcome, UpstreamConfig, UpstreamPool
from ops.runtime import until_signalled

log = logging.getLogger("boxoffice.edge")

TICK_SECONDS = 1.0  # load figure refresh
GC_FREEZE_EVERY_TICKS = 10


def build(
    settings: EdgeSettings, *, worker: int = 0
) -> tuple[EdgeApp, ServerState, UpstreamPool, FeedFollower | StreamFollower | None]:
    """Wire a POP together (nothing started yet); `worker` numbers the processes sharing the port."""
    holder: list[EdgeApp] = []

    def on_latency(target: str, seconds: float, outcome: Outcome) -> None:
        if holder:
            holder[0].upstream_latency.observe(seconds, target, str(outcome))

    upstream = UpstreamPool(
        UpstreamConfig(
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_read_timeout,
            total_timeout=settings.request_timeout,
            max_body=settings.max_entry_bytes * 4,
        ),
        on_latency=on_latency,
    )
    shardmap = None
    router = None
    if settings.shardmap_url:
        shardmap = ShardMapPoller(settings.shardmap_url, interval=settings.shardmap_interval)
        router = Router(settings.region, settings.upstreams, lambda: shardmap.current)
    l2 = RedisL2(settings.redis, site=settings.site) if settings.redis else None
    pop = Pop(settings, upstream, l2=l2, router=router)
    follower: FeedFollower | StreamFollower | None = None
    if settings.follow_feed and settings.feed == "redis":
        follower = StreamFollower(
            settings.feed_redis,
            settings.feed_source,
            feed_reader_id(settings.pop, settings.workers, worker),
            pop.on_item_changed,
            pop.on_feed_reset,
            options=StreamOptions(max_outage=settings.feed_max_outage),
        )
    elif settings.follow_feed:
        follower = FeedFollower(
            feed_upstream(settings),
            pop.on_item_changed,
            pop.on_feed_reset,
            options=FollowOptions(long_poll_wait=settings.feed_wait, max_outage=settings.feed_max_outage),
        )
    app = EdgeApp(pop, hints=None, follower=follower, shardmap=shardmap)
    holder.append(app)
    state = ServerState(
        pop,
        app.internal,
        max_connections=settings.max_connections,
        max_url_bytes=settings.max_url_bytes,
        max_header_bytes=settings.max_header_bytes,
        max_body_bytes=settings.max_body_bytes,
        keepalive_timeout=settings.keepalive_timeout,
        request_timeout=settings.request_timeout,
        slow_fields=slow_fields(app.hints_enabled),
        access_log=settings.access_log,
    )
    return app, state, upstream, follower


async def serve(settings: EdgeSettings, *, worker: int = 0) -> None:
    """Serve until SIGINT/SIGTERM, then finish in-flight requests for up to `shutdown_timeout`."""
    app, state, upstream, follower = build(settings, worker=worker)
    await upstream.start()
    if app.pop.l2 is not None:
        await app.pop.l2.start()
    hint_session = None
    if app.hints_enabled:
        hint_session = aiohttp.ClientSession() if settings.predictor else None
        app.hints = HintService(hint_session, settings.predictor or None)
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(state.protocol, settings.host, settings.port, backlog=1024,
                                          reuse_address=True, reuse_port=True)  # fmt: skip
        print(f"boxoffice edge POP {settings.pop} listening on http://{settings.host}:{settings.port} "
              f"for {settings.site}, upstream {', '.join(settings.upstreams)}")  # fmt: skip
        print(f"  try: curl -i http://{settings.host}:{settings.port}/v1/events?limit=3", flush=True)
        async with asyncio.TaskGroup() as tasks:
            follower_task = tasks.create_task(follower.run()) if follower is not None else None
            shardmap_task = tasks.create_task(app.shardmap.run()) if app.shardmap is not None else None
            ticker = tasks.create_task(_tick(app))
            await until_signalled()
            log.info("shutting down: finishing in-flight requests for up to %.0f s", settings.shutdown_timeout)
            server.close()
            state.close_idle()
            await state.wait_closed(settings.shutdown_timeout)
            ticker.cancel()
            if follower_task is not None:
                follower_task.cancel()
            if shardmap_task is not None:
                shardmap_task.cancel()
        await app.pop.drain()
    finally:
        await upstream.close()
        if app.pop.l2 is not None:
            await app.pop.l2.close()
        if hint_session is not None:
            await hint_session.close()


async def _tick(app: EdgeApp) -> None:
    ticks = 0
    while True:
        app.tick()
        ticks += 1
        if ticks % GC_FREEZE_EVERY_TICKS == 0:
            # Cached entries are long-lived and hold no reference cycles. Left
            # to the collector, every full collection rescans all of them: at
            # 25k entries one took 142 ms (the benchmark's miss p99). Collect
            # the young generations, then move everything that survived to the
            # permanent generation, which full collections skip; evicted
            # entries are still freed by reference counting.
            gc.collect(1)
            gc.freeze()
        await asyncio.sleep(TICK_SECONDS)


def feed_reader_id(pop_id: str, workers: int, worker: int) -> str:
    """The name a process reads the Redis feed under: one consumer group per process.

    A group splits its entries between its readers, and every process has a
    cache of its own, so two processes sharing a group would each miss the
    invalidations the other read. The host name tells replicas of one POP
    apart (pods, a rolling update); the worker number tells apart the workers
    of one process tree. Groups of replicas that are gone stay in Redis until
    removed (XGROUP DESTROY); MAXLEN still bounds the stream.
    """
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:63] or "host"
    name = f"{pop_id}.{host}"
    return name if workers == 1 else f"{name}.w{worker}"


def feed_upstream(settings: EdgeSettings) -> str:
    """Whose HTTP change feed the POP follows.

    Without a shard map, the first upstream's: every read goes there first.
    With a shard map, reads spread over several shards, and a shard's feed
    carries only its own events, so the POP follows the last upstream, which
    in failover order is the origin, whose feed carries every change.
    """
    return settings.upstreams[-1] if settings.shardmap_url else settings.upstreams[0]
