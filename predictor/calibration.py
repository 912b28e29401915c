"""Calibration of a score into a probability, and the metrics that judge a probability.

Hints are thresholded on calibrated probabilities ("show a prefetch hint above
0.3"), so the purchase model's raw output is mapped through an **isotonic
regression** fitted on a held-out calibration slice (later in time than the
training rows, earlier than the test rows). Isotonic fitting is pool adjacent
violators over the scores sorted ascending: neighbouring blocks whose rates
decrease are merged until the rates rise; prediction interpolates linearly
between the blocks' score ranges, flat inside a block and beyond the ends.
It needs no parametric shape (Platt's sigmoid assumes one) and with tens of
thousands of calibration rows it does not overfit visibly.

The metrics are numpy implementations of the usual definitions: ROC AUC (the
Mann-Whitney statistic with ties counted half), PR AUC as average precision,
log-loss, and the expected calibration error over equal-mass bins (equal-width
bins put nearly every row of a 2.5 % base rate in the first bin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from predictor.errors import PredictorError

FloatArray = npt.NDArray[np.float64]

PROBABILITY_FLOOR: Final = 1e-5  # a calibrated 0 or 1 would make one surprising row's log-loss infinite
ECE_BINS: Final = 20  # equal-mass bins of the expected calibration error: ~5 % of the rows each


@dataclass(frozen=True, slots=True)
class IsotonicCalibration:
    """A non-decreasing map from score to probability: block ``i`` covers scores ``low[i]..high[i]``."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    value: tuple[float, ...]

    def __call__(self, score: Any) -> FloatArray:
        x = np.asarray(score, dtype=np.float64)
        points = np.column_stack((self.low, self.high)).ravel()
        values = np.repeat(np.asarray(self.value), 2)
        result: FloatArray = np.clip(np.interp(x, points, values), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
        return result

    def to_json(self) -> dict[str, Any]:
        return {"kind": "isotonic", "low": list(self.low), "high": list(self.high), "value": list(self.value)}

    @classmethod
    def from_json(cls, document: Any) -> IsotonicCalibration:
        """Raises PredictorError when the document is not an isotonic calibration."""
        try:
            if document["kind"] != "isotonic":
                raise PredictorError(f"unknown calibration kind {document['kind']!r}")
            low, high, value = (tuple(float(v) for v in document[name]) for name in ("low", "high", "value"))
        except (KeyError, TypeError, ValueError) as exc:
            raise PredictorError(f"malformed calibration: {exc}") from None
        if not low or not len(low) == len(high) == len(value):
            raise PredictorError("malformed calibration: empty, or its arrays differ in length")
        # what fit_isotonic writes: finite blocks in score order, probabilities rising from block to block
        # (np.interp silently answers garbage over unsorted points, and a NaN would reach every hint)
        points, rates = np.column_stack((low, high)).ravel(), np.asarray(value)
        if not (np.isfinite(points).all() and np.isfinite(rates).all()):
            raise PredictorError("malformed calibration: a bound or a value is not a finite number")
        if (np.diff(points) < 0).any() or (np.diff(rates) < 0).any() or rates[0] < 0 or rates[-1] > 1:
            raise PredictorError("malformed calibration: blocks out of order, or a value is not a probability")
        return cls(low, high, value)


def fit_isotonic(score: Any, label: Any) -> IsotonicCalibration:
    """Pool adjacent violators over the rows sorted by score.

    Raises:
        PredictorError: no rows, or lengths differ.
    """
    x = np.asarray(score, dtype=np.float64)
    y = np.asarray(label, dtype=np.float64)
    if len(x) == 0 or len(x) != len(y):
        raise PredictorError("calibration needs rows, with one label per score")
    unique, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=y)
    counts = np.bincount(inverse).astype(np.float64)
    # stacks of blocks: total, count, first and last unique score
    total: list[float] = []
    count: list[float] = []
    first: list[float] = []
    last: list[float] = []
    for s, n, u in zip(sums.tolist(), counts.tolist(), unique.tolist(), strict=True):
        total.append(s)
        count.append(n)
        first.append(u)
        last.append(u)
        while len(total) > 1 and total[-2] / count[-2] >= total[-1] / count[-1]:
            s_top, n_top, u_top = total.pop(), count.pop(), last.pop()
            first.pop()
            total[-1] += s_top
            count[-1] += n_top
            last[-1] = u_top
    return IsotonicCalibration(tuple(first), tuple(last), tuple(t / n for t, n in zip(total, count, strict=True)))


def roc_auc(label: Any, score: Any) -> float:
    """Probability that a random positive outscores a random negative (ties count half); NaN with one class."""
    y = np.asarray(label, dtype=bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(score, dtype=np.float64))
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def average_precision(label: Any, score: Any) -> float:
    """PR AUC as average precision: the mean over positives of the precision at their score (ties grouped)."""
    y = np.asarray(label, dtype=bool)
    positives = int(y.sum())
    if positives == 0:
        return float("nan")
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_tie = np.append(s[1:] != s[:-1], True)
    true_positives = np.cumsum(y)[last_of_tie]
    predicted = (np.arange(len(s)) + 1)[last_of_tie]
    recall_step = np.diff(np.concatenate(([0], true_positives))) / positives
    return float((recall_step * true_positives / predicted).sum())


def log_loss(label: Any, probability: Any) -> float:
    y = np.asarray(label, dtype=np.float64)
    p = np.clip(np.asarray(probability, dtype=np.float64), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


def expected_calibration_error(label: Any, probability: Any, bins: int = ECE_BINS) -> float:
    """Sum over equal-mass bins of (bin share) x |mean predicted - observed rate|."""
    y = np.asarray(label, dtype=np.float64)
    p = np.asarray(probability, dtype=np.float64)
    if len(p) == 0:
        return float("nan")
    order = np.argsort(p, kind="stable")
    error = 0.0
    for chunk in np.array_split(order, min(bins, len(p))):
        error += len(chunk) / len(p) * abs(float(p[chunk].mean()) - float(y[chunk].mean()))
    return error


def calibration_curve(label: Any, probability: Any, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per equal-mass bin: mean predicted probability, observed rate, rows (for a reliability plot)."""
    y = np.asarray(label, dtype=np.float64)
    p = np.asarray(probability, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    return [
        {"predicted": float(p[c].mean()), "observed": float(y[c].mean()), "rows": len(c)}
        for c in np.array_split(order, min(bins, max(len(p), 1)))
        if len(c)
    ]


def binary_metrics(label: Any, probability: Any) -> dict[str, float]:
    return {
        "roc_auc": roc_auc(label, probability),
        "pr_auc": average_precision(label, probability),
        "log_loss": log_loss(label, probability),
        "ece": expected_calibration_error(label, probability),
        "mean_predicted": float(np.mean(probability)),
        "positive_rate": float(np.mean(label)),
    }


def _average_ranks(values: FloatArray) -> FloatArray:
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    ends = np.append(starts[1:], len(ordered))
    average = (starts + ends + 1) / 2  # 1-based mean rank of each tie group
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(average, ends - starts)
    return ranks
