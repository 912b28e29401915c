"""`boxoffice edge …` (also `python -m edge …`): run a caching POP."""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import multiprocessing.process
import sys
from collections.abc import Sequence

from edge.settings import EdgeSettings
from ops.runtime import configure_logging
from ops.settings import SettingsError, add_arguments, load

DESCRIPTION = """\
An edge POP: a caching reverse proxy (RFC 9111) in front of its regional
shard, with request coalescing, stale-while-revalidate, push invalidation from
the upstream's change feed (HTTP long-poll, or Redis Streams with --feed redis),
routing by the shard map (--shardmap-url, --region) and failover across
--upstreams. Settings come from flags, BOXOFFICE_EDGE_* variables, the [edge]
table of --config, then defaults.
"""


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="run the POP", description=DESCRIPTION)
    add_arguments(serve, EdgeSettings)
    serve.add_argument("--listen", metavar="HOST:PORT", help="shorthand for --host and --port")
    serve.add_argument("--upstream", action="append", metavar="URL",
                       help="an upstream base URL; repeat in failover order (same as --upstreams a,b)")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "boxoffice edge") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.listen:
        host, _, port = args.listen.rpartition(":")
        args.host, args.port = host.strip("[]") or "127.0.0.1", port
    if args.upstream:
        args.upstreams = ",".join(args.upstream)
    try:
        settings = load(EdgeSettings, "edge", args=args)
    except SettingsError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    children: list[multiprocessing.process.BaseProcess] = []
    try:
        _start_workers(settings, children)
        _run(settings)
    except OSError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    finally:
        for child in children:
            child.terminate()  # SIGTERM: each worker finishes its in-flight requests
        for child in children:
            child.join(settings.shutdown_timeout + 5)
    return 0


def _run(settings: EdgeSettings, worker: int = 0) -> None:
    from edge.service import serve
    from ops.runtime import run

    run(serve(settings, worker=worker))


def _worker(settings: EdgeSettings, worker: int) -> None:
    configure_logging(settings.log_level)
    with contextlib.suppress(KeyboardInterrupt):
        _run(settings, worker)


def _start_workers(settings: EdgeSettings, children: list[multiprocessing.process.BaseProcess]) -> None:
    """Start `workers - 1` more processes on the same port, appending each to `children` once started."""
    context = multiprocessing.get_context("spawn")
    for n in range(1, settings.workers):
        child = context.Process(target=_worker, args=(settings, n), name=f"edge-worker-{n}")
        child.start()
        children.append(child)
