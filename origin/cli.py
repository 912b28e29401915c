"""`boxoffice origin …` (also `python -m origin …`): serve the primary or a shard, seed the demo catalog."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ops.runtime import configure_logging, run
from ops.settings import SettingsError, add_arguments, load, to_toml
from origin.errors import OriginError
from origin.service import open_store, seed_demo_catalog, serve
from origin.settings import OriginSettings

DESCRIPTION = """\
The primary inventory service: the source of truth for venues, events, items,
holds and orders, with a change feed for shards. With --role shard (and
--upstream URL plus --region R, --events E1,E2 or --shardmap-url URL) it runs a
regional shard that mirrors those events from the upstream's feed, serves the
same read API and forwards holds and orders. Settings come from flags, then
BOXOFFICE_ORIGIN_* environment variables, then the [origin] table of the
--config file (or $BOXOFFICE_CONFIG), then defaults.
"""


def build_parser(prog: str = "boxoffice origin") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_parser = commands.add_parser("serve", help="run the origin HTTP API", description=DESCRIPTION)
    add_arguments(serve_parser, OriginSettings)
    seed_parser = commands.add_parser(
        "seed", help="load the demo catalog into the database and print a summary", description=DESCRIPTION
    )
    add_arguments(seed_parser, OriginSettings)
    seed_parser.add_argument("--if-empty", action="store_true", help="do nothing when the database has events")
    config_parser = commands.add_parser("config", help="print the effective settings as TOML and exit")
    add_arguments(config_parser, OriginSettings)
    # Own parsers and settings: dispatched before this parser runs (see main).
    commands.add_parser("manager", add_help=False, help="run the shard manager (see: manager --help)")
    commands.add_parser(
        "publish",
        add_help=False,
        help="publish a source's change feed into a Redis Stream for POPs (see: publish --help)",
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "boxoffice origin") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["manager"]:
        from origin.manager_cli import main as manager_main  # lazy: only this command needs it

        return manager_main(argv[1:], prog=f"{prog} manager")
    if argv[:1] == ["publish"]:
        from origin.streams import main as publish_main  # lazy: only this command needs redis

        return publish_main(argv[1:], prog=f"{prog} publish")
    args = build_parser(prog).parse_args(argv)
    try:
        settings = load(OriginSettings, "origin", args=args)
    except SettingsError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        if args.command == "serve":
            run(serve(settings))
        elif args.command == "seed":
            run(_seed(settings, only_if_empty=args.if_empty))
        else:
            print(to_toml(settings, "origin"))
    except OriginError as exc:
        print(f"{prog}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _seed(settings: OriginSettings, *, only_if_empty: bool) -> None:
    store = open_store(settings)
    await store.open()
    try:
        summary = await seed_demo_catalog(store, settings, only_if_empty=only_if_empty)
    finally:
        await store.close()
    if summary is None:
        print(f"{settings.database_url()} already holds events; nothing seeded")
    else:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
