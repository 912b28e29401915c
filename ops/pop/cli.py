"""`boxoffice pop deploy|retire|list`: the arguments, their validation into plans, and `main`."""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final, TextIO

from ops.pop.deploy import DEFAULT_STOP_GRACE, Deployment, DeployPlan
from ops.pop.peers import edge_health
from ops.pop.process import STATE_FILE, read_record
from ops.pop.retire import Retirement, RetirePlan
from ops.pop.steps import PopError, run_steps
from ops.runtime import process_alive
from ops.settings import Seconds, SettingsError, load, parse_duration

DEFAULT_RUN_DIR: Final = Path("var/pops")
# geodns.settings.GeoDNSSettings.geo_ttl's default, used when neither --dns-ttl nor --geodns-config says otherwise.
DEFAULT_GEO_TTL: Final = 30
POP_ID_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")  # what GeoDNS accepts as a POP id

DESCRIPTION = """\
Deploy and retire edge POPs. `deploy` starts a POP (or --attach to a running
one), warms it from the predictor, waits until it is healthy, and registers it
with GeoDNS; a failed step rolls back the earlier ones. `retire` deregisters
it, waits out the DNS TTL, drains it and stops it.
"""
TOKEN_ENV = "BOXOFFICE_GEODNS_ADMIN_TOKEN"


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    deploy = commands.add_parser("deploy", help="start, warm, check and register a POP", description=DESCRIPTION)
    deploy.add_argument("--name", required=True, help="POP id (lower-case letters, digits, - and _)")
    deploy.add_argument("--region", required=True, help="region the POP serves, e.g. eu-west")
    deploy.add_argument("--address", required=True, help="address to listen on and to publish in DNS (127.0.0.x)")
    deploy.add_argument("--port", type=int, default=8080, help="HTTP port (default: 8080)")
    deploy.add_argument("--lat", type=float, required=True, help="latitude of the POP, degrees")
    deploy.add_argument("--lon", type=float, required=True, help="longitude of the POP, degrees")
    deploy.add_argument("--upstream", action="append", default=[], metavar="URL",
                        help="upstream base URL; repeat in failover order (regional shard, …, origin); "
                             "required unless --attach")  # fmt: skip
    deploy.add_argument("--predictor", default="", metavar="URL", help="predictor base URL for the warm list")
    deploy.add_argument("--capacity", type=float, default=5000.0, help="requests per second (default: 5000)")
    deploy.add_argument("--weight", type=float, default=1.0, help="GeoDNS steering weight (default: 1)")
    deploy.add_argument("--purge-token", default="",
                        help="the POP's warm token (default: $BOXOFFICE_EDGE_PURGE_TOKEN, else random)")  # fmt: skip
    deploy.add_argument("--edge-config", default="", metavar="FILE", help="TOML file with more [edge] settings")
    deploy.add_argument("--attach", action="store_true", help="use the POP already running at --address:--port")
    deploy.add_argument("--health-timeout", default="30s", metavar="DURATION",
                        help="how long to wait for the POP, then GeoDNS, to see it healthy (default: 30s)")  # fmt: skip
    _common(deploy, geodns_required=True)

    retire = commands.add_parser("retire", help="deregister, wait out the TTL, drain and stop a POP")
    retire.add_argument("--name", required=True, help="POP id given to deploy")
    retire.add_argument("--dns-ttl", metavar="DURATION", help="TTL of steered answers (default: from --geodns-config)")
    retire.add_argument("--geodns-config", metavar="FILE",
                        help=f"GeoDNS config file to read geo_ttl from (default TTL: {DEFAULT_GEO_TTL} s)")  # fmt: skip
    retire.add_argument("--drain-timeout", default="30s", metavar="DURATION", help="longest drain (default: 30s)")
    retire.add_argument("--stop-grace", default=f"{DEFAULT_STOP_GRACE:g}s", metavar="DURATION",
                        help="SIGKILL this long after SIGTERM (default: %(default)s)")  # fmt: skip
    _common(retire, geodns_required=False)

    listing = commands.add_parser("list", help="POPs deployed from this run directory, with their state")
    listing.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="default: %(default)s")
    return parser


def _common(parser: argparse.ArgumentParser, *, geodns_required: bool) -> None:
    parser.add_argument("--geodns-admin", required=geodns_required, default="", metavar="URL",
                        help="GeoDNS admin API base URL, e.g. http://127.0.0.1:8053"
                        + ("" if geodns_required else " (default: the one deploy used)"))  # fmt: skip
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV, ""),
                        help=f"GeoDNS admin token (default: ${TOKEN_ENV})")  # fmt: skip
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR,
                        help="where POP state and logs live (default: %(default)s)")  # fmt: skip


class UsageError(ValueError):
    """A bad argument; the message names it."""


def deploy_plan(args: argparse.Namespace) -> DeployPlan:
    name = _pop_name(args.name)
    try:
        address = str(ipaddress.ip_address(args.address))
    except ValueError:
        raise UsageError(f"--address: {args.address!r} is not an IP address") from None
    if not 0 < args.port < 65536:
        raise UsageError(f"--port: {args.port} is not a TCP port")
    if not -90 <= args.lat <= 90 or not -180 <= args.lon <= 180:
        raise UsageError("--lat must be -90..90 and --lon -180..180")
    if not args.capacity > 0 or not args.weight > 0:
        raise UsageError("--capacity and --weight must be positive")
    if not args.upstream and not args.attach:
        raise UsageError("--upstream: at least one upstream URL (the regional shard, then the origin)")
    upstreams = tuple(_base_url(url, "--upstream") for url in args.upstream)
    return DeployPlan(
        name=name, region=args.region, address=address, port=args.port, lat=args.lat, lon=args.lon,
        upstreams=upstreams, geodns_admin=_base_url(args.geodns_admin, "--geodns-admin"), token=args.token,
        predictor=_base_url(args.predictor, "--predictor") if args.predictor else "",
        capacity=args.capacity, weight=args.weight, run_dir=args.run_dir, attach=args.attach,
        edge_config=args.edge_config,
        purge_token=args.purge_token or os.environ.get("BOXOFFICE_EDGE_PURGE_TOKEN") or secrets.token_urlsafe(24),
        health_timeout=_duration(args.health_timeout, "--health-timeout"),
    )  # fmt: skip


def retire_plan(args: argparse.Namespace) -> RetirePlan:
    name = _pop_name(args.name)
    try:
        record = read_record(args.run_dir, name)
    except PopError as exc:
        raise UsageError(str(exc)) from None
    if record is None:
        raise UsageError(f"no POP {name} in {args.run_dir}: was it deployed with this --run-dir?")
    ttl, source = _dns_ttl(args)
    return RetirePlan(
        record=record,
        geodns_admin=_base_url(args.geodns_admin or record.geodns_admin, "--geodns-admin"),
        token=args.token,
        dns_ttl=ttl,
        ttl_source=source,
        drain_timeout=_duration(args.drain_timeout, "--drain-timeout"),
        stop_grace=_duration(args.stop_grace, "--stop-grace"),
        run_dir=args.run_dir,
    )


def _dns_ttl(args: argparse.Namespace) -> tuple[float, str]:
    if args.dns_ttl is not None:
        return _duration(args.dns_ttl, "--dns-ttl"), "--dns-ttl"
    if args.geodns_config:
        from geodns.settings import GeoDNSSettings  # a pure settings module: no I/O, no dnslib

        try:
            settings = load(GeoDNSSettings, "geodns", args=argparse.Namespace(config=args.geodns_config), environ={})
        except SettingsError as exc:
            raise UsageError(f"--geodns-config: {exc}") from None
        return float(settings.geo_ttl), f"geo_ttl of {args.geodns_config}"
    return float(DEFAULT_GEO_TTL), "GeoDNS's default geo_ttl; pass --dns-ttl or --geodns-config if yours differs"


def _pop_name(name: str) -> str:
    if not name or not set(name) <= POP_ID_CHARS:
        raise UsageError(f"--name: {name!r} must be lower-case letters, digits, - and _")
    return name


def _base_url(url: str, flag: str) -> str:
    if not url.startswith(("http://", "https://")) or len(url) < len("http://x"):
        raise UsageError(f"{flag}: {url!r} is not an http:// URL")
    return url.rstrip("/")


def _duration(raw: str, flag: str) -> Seconds:
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def list_pops(run_dir: Path, out: TextIO) -> int:
    rows = []
    for path in sorted(run_dir.glob(f"*/{STATE_FILE}")):
        try:
            record = read_record(run_dir, path.parent.name)
        except PopError as exc:
            print(f"{path}: {exc}", file=out)
            continue
        if record is None:
            continue
        if record.pid is None:
            process = "attached"
        else:
            process = f"pid {record.pid} " + ("running" if process_alive(record.pid) else "GONE")
        try:
            status = str(edge_health(record).get("status"))
        except PopError:
            status = "no answer"
        rows.append((record.name, record.region, f"{record.address}:{record.port}", process, status))
    if not rows:
        print(f"no POPs deployed from {run_dir}", file=out)
        return 0
    header = ("POP", "REGION", "LISTENS", "PROCESS", "HEALTH")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "boxoffice pop") -> int:
    args = build_parser(prog).parse_args(argv)
    out = sys.stdout
    try:
        if args.command == "list":
            return list_pops(args.run_dir, out)
        if args.command == "deploy":
            deployment = Deployment(deploy_plan(args))
            if not run_steps(deployment.steps(), out, rollback=True):
                print(f"{prog} deploy: POP {args.name} was not deployed (rolled back)", file=sys.stderr)
                return 1
            print(f"POP {args.name} is in service at {deployment.record.url}")
            return 0
        retirement = Retirement(retire_plan(args))
        if not run_steps(retirement.steps(), out, rollback=False):
            print(f"{prog} retire: POP {args.name} is not fully retired; fix the cause and run retire again",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(f"POP {args.name} is retired")
        return 0
    except UsageError as exc:
        print(f"{prog} {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
