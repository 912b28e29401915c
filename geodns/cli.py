"""`boxoffice geodns …` (also `python -m geodns …`): the authoritative GeoDNS server."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from geodns.config import ConfigError, load_zone_config
from geodns.geo import GeoDatabaseError
from geodns.settings import GeoDNSSettings
from ops.runtime import configure_logging
from ops.settings import SettingsError, add_arguments, load

DESCRIPTION = """\
Authoritative GeoDNS: answers steered names with the nearest healthy POPs, by
EDNS Client Subnet or resolver address. The --config FILE (TOML) holds the
[geodns] settings and the [zones.*], [pools.*] and [pops.*] it serves;
BOXOFFICE_GEODNS_* variables and flags override the settings.
"""


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="answer DNS on UDP and TCP, admin API on HTTP", description=DESCRIPTION)
    add_arguments(serve, GeoDNSSettings)
    check = commands.add_parser("check", help="validate the config file and print what it serves")
    add_arguments(check, GeoDNSSettings)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "boxoffice geodns") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        settings = load(GeoDNSSettings, "geodns", args=args)
    except SettingsError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return 2
    config_path = args.config
    if not config_path:
        print(f"{prog}: --config FILE is required: it lists the zones and POPs to serve", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        if args.command == "check":
            config = load_zone_config(Path(config_path))
            print(json.dumps({
                "zones": [zone.origin for zone in config.zones],
                "steered": sorted(name for zone in config.zones for name in zone.geo),
                "pools": sorted(config.pools),
                "pops": sorted(config.pops),
            }, indent=2))  # fmt: skip
            return 0
        from geodns.service import serve
        from ops.runtime import run

        run(serve(settings, Path(config_path)))
    except (ConfigError, GeoDatabaseError) as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    return 0
