"""The offline evaluation's headline: the figures `predictor report` prints as JSON and shows first.

:func:`headline` turns a :class:`predictor.evaluation.Evaluation` into plain
JSON-ready data: per policy the hit ratios and the gap closure G against LRU
and Belady (:func:`policy_headline`), the heuristic hints' precision and
coverage, and, with trained models, their versions, test-slice quality and the
hint operating point (:func:`model_headline`). :mod:`predictor.reporthtml`
renders the same figures in the page.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from predictor.cachemetrics import gap_closure
from predictor.evaluation import HINT_AIM_COVERAGE, HINT_AIM_PRECISION, Evaluation, PolicyFigures
from predictor.hinteval import HintFigures


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
        "hints_from": iso_utc(evaluation.hints_from_ms),
        **model_headline(evaluation),
    }


def iso_utc(ms: int | None) -> str | None:
    """An epoch time in ms as ISO 8601 UTC with a ``Z`` (``2026-01-02T03:04:05Z``); None stays None."""
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def _hint_figures(figures: HintFigures) -> dict[str, Any]:
    return {
        "precision": _rounded(figures.precision),
        "coverage": _rounded(figures.coverage),
        "hints": figures.hints,
    }


def model_headline(evaluation: Evaluation) -> dict[str, Any]:
    """The models' part of the headline: versions, test-slice quality, and the hint operating point."""
    models = evaluation.models
    if models is None:
        return {}
    block: dict[str, Any] = {
        "models_dir": str(models.models_dir),
        "purchase_version": models.purchase_version,
        "demand_version": models.demand_version,
        "notes": list(models.notes),
        "test_quality": {
            name: {key: _rounded(curve.get(key)) for key in ("roc_auc", "pr_auc", "log_loss", "ece")}
            for name, curve in models.curves.items()
        },
    }
    if models.periods is not None:
        block["hint_periods"] = {"validation_from": iso_utc(models.periods[0]), "test_from": iso_utc(models.periods[1])}
    point = evaluation.hint_point
    if point is not None:
        block["model_hints"] = {
            "threshold": point.threshold,
            "k": point.top_k,
            "rule": point.rule,
            "validation": _hint_figures(point.validation),
            "test": _hint_figures(point.test),
            "aim": f"precision >= {HINT_AIM_PRECISION:g} at coverage >= {HINT_AIM_COVERAGE:g}",
            "aim_met_on_test": bool(
                (point.test.precision or 0.0) >= HINT_AIM_PRECISION
                and (point.test.coverage or 0.0) >= HINT_AIM_COVERAGE
            ),
        }
    return {"models": block}
