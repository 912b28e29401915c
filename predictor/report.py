"""`boxoffice predictor report`: the offline evaluation as one self-contained HTML file.

The figures come from :func:`predictor.evaluation.evaluate`; this module only
presents them: a JSON headline on stdout, and an HTML page with the tables,
inline SVG plots (:mod:`predictor.svgplot`) of the hit ratio and the origin
request rate around the hottest on-sale and of the hit ratio by cache size,
and, when model metrics JSON files are found, ROC and calibration curves.

Models are looked for in ``--models DIR`` (default: ``models/`` in the
workload directory). Trained models there are used: the demand model as warm
list sources, the purchase model for hints, and both models' ROC and
calibration curves are computed on the purchase model's test sessions (the
metadata carries metrics, not curve points). Besides, every ``*.meta.json``
or ``*metrics*.json`` file there that holds, at any depth, a ROC curve or a
calibration curve (see :func:`curves_in`) is drawn too, with the scalar
numbers beside it (``roc_auc``, ``log_loss`` …) in a table.

The headline is :mod:`predictor.reportheadline` and the page
:mod:`predictor.reporthtml`; this module parses the flags, runs the
evaluation, finds the metrics files and writes the page under a temporary name,
then renames it into place.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from predictor.atomicfile import write_text_atomically
from predictor.errors import PredictorError
from predictor.evalinputs import DEFAULT_CAPACITY_SHARE, DEFAULT_HINT_K, Options, load_workload
from predictor.evaluation import Evaluation, evaluate
from predictor.modelinputs import prepare_models
from predictor.reportheadline import headline
from predictor.reporthtml import render_html
from predictor.warming import DEFAULT_BUDGET_SHARE, DEFAULT_LEAD_SECONDS, DEFAULT_WINDOW_SECONDS

log = logging.getLogger("predictor.report")

MAX_MODEL_FILES: Final = 20  # metrics files read from the models directory; more are ignored (and logged)
MAX_MODEL_FILE_BYTES: Final = 16 * 1024 * 1024  # a metrics file larger than this is not a metrics file


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The `report` subcommand's flags."""
    parser.add_argument("--workload", type=Path, default=Path("var/workload"), metavar="DIR",
                        help="a directory written by `generate` (default: var/workload)")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.html", help="the HTML report to write")
    parser.add_argument("--capacity-share", type=float, default=DEFAULT_CAPACITY_SHARE, metavar="F",
                        help="cache size as a share of each POP's footprint (default: %(default)s)")  # fmt: skip
    parser.add_argument("--capacity-bytes", type=int, default=None, metavar="N",
                        help="cache size in bytes for every POP (overrides --capacity-share)")  # fmt: skip
    parser.add_argument("--lead-seconds", type=float, default=DEFAULT_LEAD_SECONDS, metavar="S",
                        help="warm lists are loaded this long before each on-sale (default: %(default)s)")  # fmt: skip
    parser.add_argument("--window-seconds", type=float, default=DEFAULT_WINDOW_SECONDS, metavar="S",
                        help="length of an on-sale window (default: %(default)s)")  # fmt: skip
    parser.add_argument("--warm-budget-share", type=float, default=DEFAULT_BUDGET_SHARE, metavar="F",
                        help="a warm list's most bytes, as a share of the cache (default: %(default)s)")  # fmt: skip
    parser.add_argument("--pops", default="", metavar="ID,…", help="replay only these POPs (default: all)")
    parser.add_argument("--hint-k", default=",".join(map(str, DEFAULT_HINT_K)), metavar="K,…",
                        help="hint list lengths to replay (default: %(default)s)")  # fmt: skip
    parser.add_argument("--no-sweep", action="store_true", help="skip the hit ratio by cache size")
    parser.add_argument("--models", type=Path, default=None, metavar="DIR",
                        help="trained models and metrics JSON files (default: DIR/models of the workload)")  # fmt: skip


def options_from(args: argparse.Namespace) -> Options:
    """Options from parsed flags.

    Raises:
        PredictorError: a list flag does not parse.
    """
    try:
        hint_k = tuple(int(k) for k in args.hint_k.split(",") if k.strip())
    except ValueError:
        raise PredictorError(f"--hint-k: expected comma-separated integers, got {args.hint_k!r}") from None
    return Options(
        capacity_share=args.capacity_share,
        capacity_bytes=args.capacity_bytes,
        lead_seconds=args.lead_seconds,
        window_seconds=args.window_seconds,
        warm_budget_share=args.warm_budget_share,
        pops=tuple(pop.strip() for pop in args.pops.split(",") if pop.strip()),
        hint_k=hint_k,
        sweep=not args.no_sweep,
        models_dir=args.models or args.workload / "models",
    )


def run_report(args: argparse.Namespace, prog: str, argv: Sequence[str] | None = None) -> int:
    """Evaluate, write the HTML report, print the headline as JSON; the exit status.

    Args:
        argv: the command line after `prog` (default: sys.argv[1:]), quoted in the report.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    began = time.monotonic()
    try:
        options = options_from(args)
        options.validate()
        workload = load_workload(args.workload, options.pops)
        inputs = prepare_models(workload, options, progress=log.info)
        evaluation = evaluate(workload, options, progress=log.info, models=inputs)
        models = model_curves(evaluation) + find_model_metrics(args.models or args.workload / "models")
        command = " ".join([prog, *(sys.argv[1:] if argv is None else argv)])
        page = render_html(evaluation, models, args.workload, command)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(args.out, page)
    except PredictorError as exc:
        print(f"{prog} report: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{prog} report: {exc}", file=sys.stderr)
        return 1
    summary = headline(evaluation)
    summary["report"] = str(args.out)
    summary["seconds"] = round(time.monotonic() - began, 1)
    print(json.dumps(summary, indent=2))
    return 0


# --------------------------------------------------------------------------- model metrics


def _walk(value: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(value, dict):
        yield path, value
        for key, inner in value.items():
            yield from _walk(inner, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, inner in enumerate(value[:100]):
            yield from _walk(inner, f"{path}[{index}]")


def _numbers(value: Any) -> list[float] | None:
    if isinstance(value, list) and value and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    return None


def _pairs(value: Any, x_names: tuple[str, ...], y_names: tuple[str, ...]) -> tuple[list[float], list[float]] | None:
    """Two lists from {x: [...], y: [...]} or from [{x: .., y: ..}, ...], under any of the given names."""
    if isinstance(value, dict):
        xs = next((_numbers(value.get(name)) for name in x_names if _numbers(value.get(name))), None)
        ys = next((_numbers(value.get(name)) for name in y_names if _numbers(value.get(name))), None)
        return (xs, ys) if xs and ys else None
    if isinstance(value, list) and value and all(isinstance(point, dict) for point in value):
        xs = _numbers([next((point.get(name) for name in x_names if name in point), None) for point in value])
        ys = _numbers([next((point.get(name) for name in y_names if name in point), None) for point in value])
        return (xs, ys) if xs and ys else None
    return None


def curves_in(document: Any) -> list[dict[str, Any]]:
    """Every ROC and calibration curve in a metrics document, with the scalars beside it.

    A ROC curve is ``roc`` or ``roc_curve``: ``{fpr: [...], tpr: [...]}`` or a list of ``{fpr, tpr}``
    points; a calibration curve is ``calibration``, ``calibration_curve`` or ``reliability``:
    ``{predicted, observed}`` lists or a list of ``{predicted, observed}`` bins (as
    ``predictor.calibration.calibration_curve`` returns them).
    """
    found: list[dict[str, Any]] = []
    for path, node in _walk(document, ""):
        entry: dict[str, Any] = {"name": path or "model"}
        for key in ("roc", "roc_curve"):
            roc = _pairs(node.get(key), ("fpr",), ("tpr",))
            if roc is not None:
                entry["roc"] = roc
                break
        for key in ("calibration", "calibration_curve", "reliability"):
            calibration = _pairs(
                node.get(key), ("predicted", "mean_predicted"), ("observed", "fraction_positive", "observed_rate")
            )
            if calibration is not None:
                entry["calibration"] = calibration
                break
        if "roc" in entry or "calibration" in entry:
            entry["scalars"] = {
                key: value
                for key, value in node.items()
                if isinstance(value, int | float) and not isinstance(value, bool)
            }
            found.append(entry)
    return found


def find_model_metrics(directory: Path) -> list[dict[str, Any]]:
    """Curves from the metrics JSON files in `directory` (none if it does not exist)."""
    if not directory.is_dir():
        return []
    found: list[dict[str, Any]] = []
    # Metadata and metrics files only: `<kind>-v<N>.json` beside them is the xgboost model itself (megabytes).
    files = sorted(
        path for path in directory.rglob("*.json") if path.name.endswith(".meta.json") or "metrics" in path.name
    )
    if len(files) > MAX_MODEL_FILES:
        log.warning("%s: reading the first %d of %d JSON files", directory, MAX_MODEL_FILES, len(files))
    for path in files[:MAX_MODEL_FILES]:
        try:
            if path.stat().st_size > MAX_MODEL_FILE_BYTES:
                continue
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("%s: not read as model metrics: %s", path, exc)
            continue
        for entry in curves_in(document):
            entry["name"] = f"{path.name}: {entry['name']}"
            found.append(entry)
    return found


def model_curves(evaluation: Evaluation) -> list[dict[str, Any]]:
    """ROC and calibration curves the evaluation computed from the models on the test split."""
    if evaluation.models is None:
        return []
    found: list[dict[str, Any]] = []
    for name, curve in evaluation.models.curves.items():
        bins = curve["calibration"]
        found.append(
            {
                "name": f"{name}, test split",
                "roc": (curve["roc"]["fpr"], curve["roc"]["tpr"]),
                "calibration": ([b["predicted"] for b in bins], [b["observed"] for b in bins]),
                "scalars": {
                    key: round(value, 4) if isinstance(value, float) else value
                    for key, value in curve.items()
                    if isinstance(value, int | float) and not isinstance(value, bool)
                },
            }
        )
    return found
