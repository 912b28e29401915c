"""`boxoffice predictor report`: the offline evaluation as one self-contained HTML file.

The figures come from :func:`predictor.evaluation.evaluate`; this module only
presents them: a JSON headline on stdout, and an HTML page with the tables,
inline SVG plots (:mod:`predictor.svgplot`) of the hit ratio and the origin
request rate around the hottest on-sale and of the hit ratio by cache size,
and, when model metrics JSON files are found, ROC and calibration curves.

Model metrics are looked for in ``--models DIR`` (default: ``models/`` in the
workload directory): every ``*.meta.json`` (what ``predictor.models.save``
writes beside a model) or ``*metrics*.json`` file there that holds, at any
depth, a ROC curve or a calibration curve (see :func:`curves_in`). Scalar
numbers beside them (``roc_auc``, ``log_loss`` …) are listed in a table.

The page is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any, Final

from predictor.cachemetrics import gap_closure
from predictor.errors import PredictorError
from predictor.evaluation import (
    DEFAULT_CAPACITY_SHARE,
    DEFAULT_HINT_K,
    Evaluation,
    Options,
    PolicyFigures,
    Series,
    evaluate,
    load_workload,
)
from predictor.replay import ENTRY_OVERHEAD_BYTES, RESPONSE_HEAD_BYTES
from predictor.svgplot import Marker, Point, line_chart
from predictor.warming import DEFAULT_BUDGET_SHARE, DEFAULT_LEAD_SECONDS, DEFAULT_WINDOW_SECONDS

log = logging.getLogger("predictor.report")

MAX_MODEL_FILES: Final = 20  # metrics files read from the models directory; more are ignored (and logged)
MAX_MODEL_FILE_BYTES: Final = 16 * 1024 * 1024  # a metrics file larger than this is not a metrics file

POLICY_NAMES: Final = {
    "lru": "LRU (baseline)",
    "s3fifo": "S3-FIFO (the POP's policy)",
    "s3fifo+oracle": "S3-FIFO + warming, oracle list",
    "s3fifo+forecast": "S3-FIFO + warming, forecast list",
    "s3fifo+model": "S3-FIFO + warming, model forecast",
    "belady": "Belady (offline MIN)",
}


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
                        help="where model metrics JSON files are (default: DIR/models of the workload)")  # fmt: skip


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
        evaluation = evaluate(workload, options, progress=log.info)
        models = find_model_metrics(args.models or args.workload / "models")
        command = " ".join([prog, *(sys.argv[1:] if argv is None else argv)])
        page = render_html(evaluation, models, args.workload, command)
        _write_text(args.out, page)
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


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def policy_headline(figures: PolicyFigures, lru: PolicyFigures, belady: PolicyFigures) -> dict[str, Any]:
    """The headline figures of one policy, beside LRU and Belady for G."""
    overall, windows, onsale = figures.overall.value, figures.windows.value, figures.onsale_objects.value
    return {
        "hit_ratio": _rounded(overall),
        "hit_ratio_onsale_windows": _rounded(windows),
        "hit_ratio_onsale_objects": _rounded(onsale),
        "gap_closure": _rounded(gap_closure(overall, lru.overall.value, belady.overall.value), 3),
        "gap_closure_onsale_windows": _rounded(gap_closure(windows, lru.windows.value, belady.windows.value), 3),
        "gap_closure_onsale_objects": _rounded(
            gap_closure(onsale, lru.onsale_objects.value, belady.onsale_objects.value), 3
        ),
        "first_minute_origin_fetches_per_object": _rounded(figures.first_minute.value, 3),
        "warmed_first_request_miss_rate": _rounded(figures.warmed_first_miss.value),
        "warmed_objects_requested": figures.warmed_first_miss.total,
        "warm_listed": figures.warm_listed,
        "warm_admitted": figures.warm_admitted,
        "warm_already_cached": figures.warm_already_cached,
    }


def headline(evaluation: Evaluation) -> dict[str, Any]:
    """The figures printed on stdout and shown first in the report."""
    lru, belady = evaluation.totals["lru"], evaluation.totals["belady"]
    return {
        "pops": [pop.pop_id for pop in evaluation.pops],
        "requests": sum(pop.requests for pop in evaluation.pops),
        "onsales": evaluation.onsales,
        "capacity": (
            f"{evaluation.options.capacity_bytes} bytes"
            if evaluation.options.capacity_bytes is not None
            else f"{evaluation.options.capacity_share:g} of each POP's footprint"
        ),
        "policies": {policy: policy_headline(figures, lru, belady) for policy, figures in evaluation.totals.items()},
        "hints": {
            str(k): {
                "precision": _rounded(figures.precision),
                "coverage": _rounded(figures.coverage),
                "hints": figures.hints,
            }
            for k, figures in evaluation.hints.items()
        },
    }


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


# --------------------------------------------------------------------------- HTML

_STYLE: Final = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0 1.6em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f2f2f2; }
figure { margin: 1em 0 2em; }
figcaption { font-size: 0.85em; color: #555; max-width: 720px; }
.note { font-size: 0.9em; color: #444; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


def _cell(value: Any) -> str:
    if value is None:
        return "<td>n/a</td>"
    if isinstance(value, float):
        return f"<td>{value:.4g}</td>"
    return f"<td>{escape(str(value))}</td>"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(name)}</th>" for name in header)
    body = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _series_points(series: Series, values: dict[str, list[Any]]) -> dict[str, list[Point]]:
    minutes = [(series.start_ms + index * series.bin_ms) / 60_000 for index in range(len(series.requests))]
    return {
        POLICY_NAMES.get(policy, policy): list(zip(minutes, points, strict=True)) for policy, points in values.items()
    }


def render_html(evaluation: Evaluation, models: list[dict[str, Any]], workload: Path, command: str) -> str:
    """The report page."""
    options = evaluation.options
    summary = headline(evaluation)
    policies = summary["policies"]
    sections: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>boxoffice predictor: offline evaluation</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Offline evaluation: cache replay with and without warming</h1>",
        f'<p class="note">Workload <code>{escape(str(workload))}</code>; command <code>{escape(command)}</code>; '
        f"written {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.</p>",
        "<h2>Setup</h2>",
        _table(
            ["what", "value"],
            [
                ["POPs replayed", ", ".join(summary["pops"])],
                ["cacheable (GET) requests replayed", summary["requests"]],
                ["POST requests (holds, orders; never cached)", sum(pop.uncacheable for pop in evaluation.pops)],
                ["on-sales in the window (distinct times)", f"{evaluation.onsales} ({evaluation.onsale_times})"],
                ["cache size", summary["capacity"]],
                ["warm lists loaded before each on-sale", f"{options.lead_seconds:g} s"],
                ["on-sale window", f"{options.window_seconds:g} s"],
                ["warm list budget", f"{options.warm_budget_share:g} of the cache's bytes, at most 1000 URLs"],
            ],
        ),
        '<p class="note">Capacity is in bytes. Object sizes are the origin\'s compact JSON for the document '
        f"(rebuilt from the workload's catalog) plus {RESPONSE_HEAD_BYTES} bytes of head and the edge's "
        f"{ENTRY_OVERHEAD_BYTES}-byte entry charge. LRU and S3-FIFO are the edge's own classes "
        "(<code>edge.lru.LruCache</code>, <code>edge.s3fifo.S3FifoCache</code>); warming goes through "
        "<code>S3FifoCache.admit_if_room</code> in priority order, as <code>/_edge/warm</code> does. "
        "Belady is MIN with bypass, furthest-next-use eviction: optimal for equal sizes, the standard "
        "approximation for variable sizes. Warming fetches ahead of demand, so its G can exceed 1. "
        "Freshness lifetimes and invalidations are not replayed.</p>",
        "<h2>Headline</h2>",
        _table(
            [
                "policy",
                "hit ratio",
                "G",
                "HR on-sale windows",
                "G on-sale windows",
                "HR on-sale objects",
                "G on-sale objects",
                "origin fetches / object, 1st minute",
                "warmed: 1st-request miss rate",
                "warm listed / admitted / cached",
            ],
            [
                [
                    POLICY_NAMES.get(policy, policy),
                    figures["hit_ratio"],
                    figures["gap_closure"],
                    figures["hit_ratio_onsale_windows"],
                    figures["gap_closure_onsale_windows"],
                    figures["hit_ratio_onsale_objects"],
                    figures["gap_closure_onsale_objects"],
                    figures["first_minute_origin_fetches_per_object"],
                    figures["warmed_first_request_miss_rate"],
                    f"{figures['warm_listed']} / {figures['warm_admitted']} / {figures['warm_already_cached']}"
                    if "+" in policy
                    else "",
                ]
                for policy, figures in policies.items()
            ],
        ),
        '<p class="note">G = (HR − HR<sub>LRU</sub>) / (HR<sub>Belady</sub> − HR<sub>LRU</sub>). '
        "On-sale windows: every request within the window after any on-sale; on-sale objects: requests for "
        "the event page and items of the event going on sale, in its window. The first-request miss rate "
        "counts warmed (admitted) objects requested before the window ends.</p>",
    ]
    sections.append(_plots(evaluation))
    sections.append("<h2>Per POP</h2>")
    pop_policies = list(evaluation.totals)
    sections.append(
        _table(
            ["POP", "GET requests", "footprint bytes", "capacity bytes", *[f"HR {p}" for p in pop_policies]],
            [
                [pop.pop_id, pop.requests, pop.footprint_bytes, pop.capacity_bytes]
                + [pop.policies[p].overall.value for p in pop_policies]
                for pop in evaluation.pops
            ],
        )
    )
    sections.append("<h2>Per-user prefetch hints</h2>")
    sections.append(
        _table(
            ["k (hints per trigger)", "hints", "prefetched bytes", "used bytes", "precision", "coverage"],
            [
                [k, h.hints, h.prefetched_bytes, h.used_bytes, h.precision, h.coverage]
                for k, h in evaluation.hints.items()
            ],
        )
    )
    sections.append(
        '<p class="note">No per-user purchase scores were available to the replay, so the hints come from a '
        "transparent heuristic (<code>predictor/hinteval.py</code>): when a consenting human opens an item of an "
        "event, or an event page matching their favourite genre or artist, the k most-viewed items of that "
        "event at the POP so far are prefetched. Precision = prefetched bytes later opened in the session / "
        "prefetched bytes; coverage = first item views of consenting users served from a prefetch.</p>"
    )
    sections.append(_model_section(models))
    sections.append("<h2>Raw figures</h2><pre>" + escape(json.dumps(summary, indent=2)) + "</pre>")
    sections.append(
        "<details><summary>Options</summary><pre>" + escape(json.dumps(asdict(options), indent=2)) + "</pre></details>"
    )
    sections.append("</body></html>")
    return "\n".join(sections)


def _figure(chart: str, caption: str = "") -> str:
    return f"<figure>{chart}<figcaption>{caption}</figcaption></figure>" if caption else f"<figure>{chart}</figure>"


def _plots(evaluation: Evaluation) -> str:
    parts: list[str] = ["<h2>Around the busiest on-sale</h2>"]
    hit = evaluation.hit_ratio_series
    rate = evaluation.origin_rate_series
    around = "minutes from the on-sale"
    onsale_marker = [Marker(0.0, "on-sale")]
    if hit is None or rate is None:
        parts.append('<p class="note">No on-sale in the window at the POPs replayed.</p>')
    else:
        onsale = datetime.fromtimestamp(hit.onsale_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
        chart = line_chart(
            _series_points(hit, hit.hit_ratio),
            title=f"Hit ratio per minute, {hit.event_id} at {hit.pop_id}",
            x_label=around,
            y_label="hit ratio",
            y_range=(0.0, 1.0),
            markers=onsale_marker,
        )
        caption = (
            f"{escape(hit.event_id)} goes on sale at {onsale}: the largest expected opening traffic (announced "
            f"spike x baseline) of the window. All cacheable requests at {escape(hit.pop_id)}; they peak at "
            f"{max(hit.requests, default=0)} per minute."
        )
        parts.append(_figure(chart, caption))
        chart = line_chart(
            _series_points(rate, rate.origin_per_second),
            title=f"Origin requests per second at {rate.pop_id}",
            x_label=around,
            y_label="origin fetches / s",
            markers=onsale_marker,
        )
        parts.append(_figure(chart, f"Cache misses (one origin fetch each) per second, {rate.bin_ms // 1000} s bins."))
    if evaluation.sweep:
        title = f"Hit ratio by cache size at {evaluation.sweep_pop}"
        size = "cache size, % of the footprint"
        for column, suffix, caption in (
            (1, "", ""),
            (2, ", on-sale objects", "Requests for on-sale events' objects in their on-sale windows."),
        ):
            series: dict[str, list[Point]] = {
                POLICY_NAMES.get(policy, policy): [(point[0] * 100, point[column]) for point in points]
                for policy, points in evaluation.sweep.items()
            }
            chart = line_chart(
                series, title=title + suffix, x_label=size, y_label="hit ratio", y_range=(0.0, 1.0), dots=True
            )
            parts.append(_figure(chart, caption))
    return "\n".join(parts)


def _curve(xs: list[float], ys: list[float]) -> list[Point]:
    return [(x, y) for x, y in zip(xs, ys, strict=False)]


def _model_section(models: list[dict[str, Any]]) -> str:
    if not models:
        return (
            '<h2>Models</h2><p class="note">No model metrics found (a JSON file with <code>roc</code> '
            "{fpr, tpr} or <code>calibration</code> {predicted, observed} in the models directory), so no ROC or "
            "calibration plot.</p>"
        )
    parts = ["<h2>Models</h2>"]
    roc = {entry["name"]: _curve(*entry["roc"]) for entry in models if "roc" in entry}
    if roc:
        chart = line_chart(
            roc, title="ROC", x_label="false positive rate", y_label="true positive rate",
            x_range=(0.0, 1.0), y_range=(0.0, 1.0), diagonal=True,
        )  # fmt: skip
        parts.append(f"<figure>{chart}</figure>")
    calibration = {entry["name"]: _curve(*entry["calibration"]) for entry in models if "calibration" in entry}
    if calibration:
        chart = line_chart(
            calibration, title="Calibration", x_label="predicted probability", y_label="observed frequency",
            x_range=(0.0, 1.0), y_range=(0.0, 1.0), diagonal=True, dots=True,
        )  # fmt: skip
        parts.append(f"<figure>{chart}</figure>")
    rows = [[entry["name"], json.dumps(entry.get("scalars", {}))] for entry in models]
    parts.append(_table(["model", "metrics"], rows))
    return "\n".join(parts)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
