"""The `boxoffice` command: one subcommand per service.

This is the composition root: it loads a service's command-line module only
when that subcommand runs (so `boxoffice origin` never imports the predictor's
xgboost), and it is the one place allowed to reach every package's adapters.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

SERVICES = {
    "origin": "the primary inventory service and its demo catalog",
    "edge": "a caching reverse-proxy POP",
    "geodns": "the authoritative GeoDNS server",
    "predictor": "the demand and prefetch predictor sidecar",
    "pop": "deploy and retire edge POPs (start, warm, register with GeoDNS)",
    "up": "run the whole stack on this machine (origin, shards, POPs, GeoDNS, predictor)",
    "status": "show the local stack's services, health, hit ratios and sync lag",
}
# Commands whose module is not `<name>.cli`.
MODULES = {"pop": "ops.pop", "up": "ops.up", "status": "ops.status"}


def _module(service: str) -> str:
    return MODULES.get(service, f"{service}.cli")


def available(service: str) -> bool:
    return importlib.util.find_spec(_module(service)) is not None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="boxoffice",
        description="Edge infrastructure for ticket inventory. Run `boxoffice SERVICE --help` for a service.",
    )
    commands = parser.add_subparsers(dest="service", required=True, metavar="SERVICE")
    for name, summary in SERVICES.items():
        suffix = "" if available(name) else " (not in this version yet)"
        commands.add_parser(name, help=summary + suffix, add_help=False)
    if not argv or argv[0] not in SERVICES:
        parser.parse_args(argv)  # prints usage or the error, and exits
        return 2
    service, rest = argv[0], argv[1:]
    if not available(service):
        print(f"boxoffice {service}: not in this version of boxoffice yet", file=sys.stderr)
        return 2
    module = importlib.import_module(_module(service))
    code: int = module.main(rest, prog=f"boxoffice {service}")
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
