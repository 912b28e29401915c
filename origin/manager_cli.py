"""`boxoffice origin manager …`: run the shard manager, or print its settings (`… manager config`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import aiohttp
from aiohttp import web

from ops.runtime import configure_logging, run, until_signalled
from ops.settings import SettingsError, add_arguments, load, to_toml
from origin.backends import Backend, BackendError, KubernetesBackend, LocalProcessBackend
from origin.errors import OriginError
from origin.manager import ShardManager, create_manager_app
from origin.manager_settings import ManagerSettings
from origin.metadata import SHARDMAP_PATH
from origin.placement_state import STATE_FILE

DESCRIPTION = """\
The shard manager: reads a demand forecast, decides which events each region's
shard mirrors, starts and stops shards through a backend (local processes or
Kubernetes), health-checks them and publishes the shard map to the origin.
Settings come from flags, then BOXOFFICE_MANAGER_* environment variables, then
the [manager] table of the --config file (or $BOXOFFICE_CONFIG), then defaults.
"""


def build_parser(prog: str = "boxoffice origin manager") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(parser, ManagerSettings)
    parser.add_argument(
        "--once",
        action="store_true",
        help="run one round, print what it did and exit (local shards stop with the manager)",
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "boxoffice origin manager") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_config = bool(argv) and argv[0] == "config"
    if show_config:
        argv = argv[1:]
        prog = f"{prog} config"
    args = build_parser(prog).parse_args(argv)
    try:
        settings = load(ManagerSettings, "manager", args=args)
    except SettingsError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return 2
    if show_config:
        print(to_toml(settings, "manager"))
        return 0
    configure_logging(settings.log_level)
    try:
        run(_serve(settings, once=args.once))
    except (OriginError, BackendError) as exc:
        print(f"{prog}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    return 0


def make_backend(settings: ManagerSettings, session: aiohttp.ClientSession) -> Backend:
    shardmap_url = settings.origin.rstrip("/") + SHARDMAP_PATH
    if settings.backend == "kubernetes":
        return KubernetesBackend(
            namespace=settings.namespace,
            image=settings.image,
            upstream=settings.upstream_url,
            shardmap_url=shardmap_url,
            storage=settings.storage,
            kubectl=settings.kubectl,
            start_timeout=settings.start_timeout,
        )
    return LocalProcessBackend(
        session=session,
        data_dir=settings.state_dir / "shards",
        upstream=settings.upstream_url,
        shardmap_url=shardmap_url,
        host=settings.shard_host,
        base_port=settings.base_port,
        start_timeout=settings.start_timeout,
        stop_grace=settings.stop_grace,
        extra_args=settings.shard_args,
    )


async def _serve(settings: ManagerSettings, *, once: bool) -> None:
    async with aiohttp.ClientSession() as session:
        backend = make_backend(settings, session)
        try:
            manager = ShardManager(
                forecast_source=settings.forecast,
                origin_url=settings.origin,
                token=settings.shardmap_token,
                state_path=settings.state_dir / STATE_FILE,
                backend=backend,
                session=session,
                config=settings.placement_config(),
                unhealthy_after=settings.unhealthy_after,
                healthy_after=settings.healthy_after,
                http_timeout=settings.http_timeout,
            )
            if once:
                report = await manager.run_round()
                print(report)
                return
            runner: web.AppRunner | None = None
            if settings.metrics_port:
                runner = web.AppRunner(create_manager_app(manager), access_log=None)
                await runner.setup()
                await web.TCPSite(runner, settings.metrics_host, settings.metrics_port, reuse_address=True).start()
            print(
                f"boxoffice shard manager: backend {backend.name}, forecast {settings.forecast}, "
                f"origin {settings.origin}, every {settings.interval:g} s; stop with Ctrl-C",
                flush=True,
            )
            stop = asyncio.Event()
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(manager.run_forever(settings.interval, stop))
                    await until_signalled()
                    stop.set()
            finally:
                if runner is not None:
                    await runner.cleanup()
        finally:
            await backend.close()
