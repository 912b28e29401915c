"""The baselines the purchase model must beat, each fitted on the same rows it is.

* **Global rate** — every row gets the training rows' purchase rate: perfectly
  calibrated on average, no ranking at all (ROC AUC 0.5).
* **Recency/frequency heuristic** — what a rules engine would do: a
  hand-weighted sum of how much and how recently the user bought, and how
  much and how recently they looked at this event, mapped to a probability by
  the same isotonic calibration as the model.
* **Logistic regression** — every feature, each transformed by
  ``sign(x) * log1p(|x|)`` (counts are heavy-tailed) and standardised, with an
  indicator for each column that can be missing (missing values become 0, the
  mean); fitted by Newton's method with a small L2 penalty. Plain numpy: a few
  Newton steps over tens of features need no library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from predictor.calibration import FloatArray, IsotonicCalibration, fit_isotonic
from predictor.errors import PredictorError

NEWTON_STEPS: Final = 30  # converges in ~10 on the default workload; a bound, not a tuning knob
L2_PENALTY: Final = 1.0  # per coefficient, in units of a row's log-likelihood: negligible beside 300,000 rows


def global_rate(train_label: Any) -> float:
    return float(np.mean(np.asarray(train_label, dtype=np.float64)))


def recency_frequency_score(features: Any) -> FloatArray:
    """log1p(purchases) + recency of the last purchase + log1p(views of this event) + recency of the last one."""
    days = features["days_since_purchase"].to_numpy(dtype=np.float64)
    minutes = features["minutes_since_event_view"].to_numpy(dtype=np.float64)
    score: FloatArray = (
        np.log1p(features["purchases"].to_numpy(dtype=np.float64))
        + np.nan_to_num(np.exp(-days / 60), nan=0.0)  # 60 days: a purchase this season still counts
        + np.log1p(features["user_event_views"].to_numpy(dtype=np.float64))
        + np.nan_to_num(np.exp(-minutes / 60), nan=0.0)  # looked at it within the hour
    )
    return score


@dataclass(frozen=True, slots=True)
class RecencyFrequency:
    calibration: IsotonicCalibration

    @classmethod
    def fit(cls, features: Any, label: Any) -> RecencyFrequency:
        return cls(fit_isotonic(recency_frequency_score(features), label))

    def predict(self, features: Any) -> FloatArray:
        return self.calibration(recency_frequency_score(features))


@dataclass(frozen=True, slots=True)
class LogisticRegression:
    columns: tuple[str, ...]
    missing: tuple[str, ...]  # columns that get a missing-value indicator
    mean: FloatArray
    scale: FloatArray
    weights: FloatArray  # intercept first

    @classmethod
    def fit(cls, features: Any, label: Any) -> LogisticRegression:
        """Raises PredictorError when the labels are all one class."""
        y = np.asarray(label, dtype=np.float64)
        if y.min() == y.max():
            raise PredictorError("logistic regression needs both purchases and non-purchases")
        columns = tuple(features.columns)
        missing = tuple(c for c in columns if features[c].isna().any())
        transformed = _transform(features, columns)
        mean = np.nanmean(transformed, axis=0)
        scale = np.nanstd(transformed, axis=0)
        scale[~(scale > 0)] = 1.0
        mean = np.nan_to_num(mean)
        model = cls(columns, missing, mean, scale, np.zeros(1))
        x = model._design(features)
        weights = np.zeros(x.shape[1])
        penalty = np.full(x.shape[1], L2_PENALTY)
        penalty[0] = 0.0
        for _ in range(NEWTON_STEPS):
            p = _sigmoid(x @ weights)
            gradient = x.T @ (p - y) + penalty * weights
            hessian = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty + 1e-9)
            step = np.linalg.solve(hessian, gradient)
            weights -= step
            if float(np.abs(step).max()) < 1e-6:
                break
        return cls(columns, missing, mean, scale, weights)

    def predict(self, features: Any) -> FloatArray:
        return _sigmoid(self._design(features) @ self.weights)

    def _design(self, features: Any) -> FloatArray:
        transformed = (_transform(features, self.columns) - self.mean) / self.scale
        indicators = [features[c].isna().to_numpy(dtype=np.float64)[:, None] for c in self.missing]
        design: FloatArray = np.hstack([np.ones((len(features), 1)), np.nan_to_num(transformed, nan=0.0), *indicators])
        return design


def _transform(features: Any, columns: tuple[str, ...]) -> FloatArray:
    values = features[list(columns)].to_numpy(dtype=np.float64)
    transformed: FloatArray = np.sign(values) * np.log1p(np.abs(values))
    return transformed


def _sigmoid(values: FloatArray) -> FloatArray:
    result: FloatArray = 0.5 * (1 + np.tanh(values / 2))
    return result
