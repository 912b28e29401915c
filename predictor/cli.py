"""`boxoffice predictor …` (also `python -m predictor …`): generate the synthetic workload.

``generate`` builds the origin's demo catalog (same seed and size as the
origin's ``demo_*`` settings, so every id matches), generates the workload
over it and writes the files (see :mod:`predictor.traces`), then prints the
counts, the realised statistics and the demo users as JSON.

The catalog starts with the workload's window unless ``--catalog-start``
says otherwise: the origin seeds its demo catalog once, from midnight UTC of
its first day, and a workload generated on a later day (its window around
that day) must still run over that very catalog, or every date it names
would be off by the days in between. The demo users
(:func:`predictor.traces.demo_users`) are picked as of the wall clock,
clamped into the window.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from ops.settings import SettingsError, add_arguments, load, to_toml
from origin.catalog import build_catalog
from predictor.errors import PredictorError, WorkloadConfigError
from predictor.modelcli import add_evaluate_arguments, run_evaluate, run_train
from predictor.report import add_report_arguments, run_report
from predictor.service import SERVE_DESCRIPTION, add_serve_arguments, run_serve
from predictor.settings import PredictorSettings, setting_for
from predictor.traces import demo_users, write_workload
from predictor.workload import generate

DESCRIPTION = """\
The predictor sidecar. `generate` writes a realistic synthetic workload (a user
event log, per-POP request traces and every session's true purchase
probability) from one seed over the origin's demo catalog; `train` fits the
purchase and demand models on it and `evaluate` measures them against
baselines and the generator's truth. Settings come from
flags, then BOXOFFICE_PREDICTOR_* environment variables, then the [predictor]
table of the --config file (or $BOXOFFICE_CONFIG), then defaults.
"""

log = logging.getLogger("predictor")

# The other commands, not built yet; each says so (exit 2) instead of argparse's "invalid choice".
PLANNED: dict[str, str] = {}


def build_parser(prog: str = "boxoffice predictor") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generate_parser = commands.add_parser(
        "generate", help="write the synthetic workload and print its statistics", description=DESCRIPTION
    )
    add_arguments(generate_parser, PredictorSettings)
    generate_parser.add_argument("--seed", dest="workload_seed", metavar="N", help="same as --workload-seed")
    generate_parser.add_argument("--out", dest="workload_dir", metavar="DIR", help="same as --workload-dir")
    generate_parser.add_argument(
        "--catalog-start", dest="catalog_start", metavar="TIME", default=None,
        help="start of the catalog, RFC 3339 (default: the workload's start); the origin's first day",
    )  # fmt: skip
    config_parser = commands.add_parser("config", help="print the effective settings as TOML and exit")
    add_arguments(config_parser, PredictorSettings)
    train_parser = commands.add_parser(
        "train", help="train the purchase and demand models into versioned files", description=DESCRIPTION
    )
    add_arguments(train_parser, PredictorSettings)
    evaluate_parser = commands.add_parser(
        "evaluate", help="score the models against baselines and the generator's truth", description=DESCRIPTION
    )
    add_arguments(evaluate_parser, PredictorSettings)
    add_evaluate_arguments(evaluate_parser)
    serve_parser = commands.add_parser(
        "serve", help="ingest events and serve warm lists, hints and forecasts", description=SERVE_DESCRIPTION
    )
    add_serve_arguments(serve_parser)
    for name, summary in PLANNED.items():
        commands.add_parser(name, help=f"{summary} (not in this version yet)", add_help=False)
    report_parser = commands.add_parser(
        "report", help="replay the traces through the edge's cache and write the HTML report"
    )
    add_report_arguments(report_parser)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "boxoffice predictor") -> int:
    args, extra = build_parser(prog).parse_known_args(argv)
    if args.command in PLANNED:
        print(f"{prog} {args.command}: not in this version of boxoffice yet", file=sys.stderr)
        return 2
    if extra:
        build_parser(prog).parse_args(argv)  # prints the usage and the unknown arguments, and exits 2
    if args.command == "report":
        return run_report(args, prog, argv)
    if args.command == "serve":
        return run_serve(args, prog)
    try:
        settings = load(PredictorSettings, "predictor", args=args)
    except SettingsError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        if args.command == "generate":
            catalog_start = _catalog_start(args.catalog_start, settings.workload_config().start)
            if catalog_start is None:
                print(f"{prog}: --catalog-start: an RFC 3339 time with a timezone like 2026-01-05T00:00:00Z, "
                      f"got {args.catalog_start!r}", file=sys.stderr)  # fmt: skip
                return 2
            print(json.dumps(_generate(settings, catalog_start, time.time()), indent=2))
        elif args.command == "train":
            print(run_train(settings))
        elif args.command == "evaluate":
            print(run_evaluate(settings, args))
        else:
            print(to_toml(settings, "predictor"))
    except WorkloadConfigError as exc:  # rates that contradict each other only once the workload is drawn
        print(f"{prog}: configuration error: predictor.{setting_for(exc.key)}: {exc.reason}", file=sys.stderr)
        return 2
    except PredictorError as exc:
        print(f"{prog}: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    return 0


def _generate(settings: PredictorSettings, catalog_start: datetime, now: float) -> dict[str, Any]:
    config = settings.workload_config()
    began = time.monotonic()
    catalog = build_catalog(
        settings.catalog_seed, venues=settings.catalog_venues, events=settings.catalog_events, start=catalog_start
    )
    workload = generate(config, catalog)
    generated = time.monotonic()
    window_ms = (
        round(config.start.timestamp() * 1000),
        round((config.start + timedelta(days=config.days)).timestamp() * 1000),
    )
    demo = demo_users(workload, min(max(round(now * 1000), window_ms[0]), window_ms[1]))
    catalog_info: dict[str, Any] = {
        "seed": settings.catalog_seed, "venues": settings.catalog_venues, "events": settings.catalog_events,
    }  # fmt: skip
    if catalog_start != config.start:  # only then: a reader rebuilds the catalog from config.start otherwise
        catalog_info["start"] = catalog_start.isoformat().replace("+00:00", "Z")
    summary = write_workload(workload, settings.workload_dir, catalog_info, demo)
    log.info(
        "generated in %.1f s, wrote %s in %.1f s",
        generated - began,
        settings.workload_dir,
        time.monotonic() - generated,
    )
    return {
        "directory": str(settings.workload_dir), "counts": summary["counts"], "statistics": summary["statistics"],
        "demo_users": summary["demo_users"],
    }  # fmt: skip


def _catalog_start(text: str | None, default: datetime) -> datetime | None:
    """``--catalog-start`` as a time (`default` when absent), or None when it is not RFC 3339 with a zone."""
    if text is None:
        return default
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
