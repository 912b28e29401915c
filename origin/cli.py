"""`boxoffice origin …` (also `python -m origin …`): serve the primary, seed the demo catalog."""

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
holds and orders, with a change feed for shards. Settings come from flags, then
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
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "boxoffice origin") -> int:
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
        print(f"{settings.database} already holds events; nothing seeded")
    else:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
