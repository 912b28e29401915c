"""The scoring API the serving sidecar calls: load the latest models, score rows, pick hints, forecast.

Everything here is synchronous and CPU-bound (xgboost, pandas): the server
calls it in an executor, never on the event loop. A :class:`Scorer` is
immutable once loaded; to pick up a newly trained version, load another and
swap the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from predictor.errors import PredictorError
from predictor.forecast import DemandState, forecast_document
from predictor.models import DEMAND, PURCHASE, Model, load, versions
from predictor.online import MAX_ROWS_PER_CALL, OnlineFeatures

MAX_HINTS: Final = 5  # "at most a handful" of hint URLs per user (issue 6); each one costs a prefetch


@dataclass(frozen=True, slots=True)
class Scorer:
    purchase: Model
    demand: Model | None

    @classmethod
    def load(cls, models_dir: Path) -> Scorer:
        """The latest purchase model, and the latest demand model if there is one.

        Raises:
            PredictorError: no purchase model, or a model file is unreadable.
        """
        demand = load(models_dir, DEMAND) if versions(models_dir, DEMAND) else None
        return cls(load(models_dir, PURCHASE), demand)

    def score(self, features: Any) -> Any:
        """Calibrated purchase probabilities for feature rows (a frame with the model's columns)."""
        return self.purchase.predict(features)

    def top_events(
        self,
        online: OnlineFeatures,
        user_id: str,
        events: Sequence[str],
        now_ms: int,
        threshold: float,
        limit: int = MAX_HINTS,
    ) -> list[tuple[str, float]]:
        """The user's most likely purchases among `events`: at most `limit`, each at or above `threshold`,
        most likely first.

        Raises:
            PredictorError: more candidate events than one scoring batch, or an event not in the catalog.
        """
        if not 0 <= threshold <= 1:
            raise PredictorError(f"threshold must be a probability, got {threshold}")
        if len(events) > MAX_ROWS_PER_CALL:
            raise PredictorError(f"at most {MAX_ROWS_PER_CALL} candidate events, got {len(events)}")
        if not events or limit <= 0:
            return []
        probability = self.score(online.rows([(user_id, event) for event in events], now_ms))
        order = np.argsort(-probability, kind="stable")[:limit]
        return [(events[i], float(probability[i])) for i in order.tolist() if probability[i] >= threshold]

    @property
    def horizon_ms(self) -> int:
        """The demand model's horizon.

        Raises:
            PredictorError: no demand model is loaded.
        """
        if self.demand is None:
            raise PredictorError("no demand model (run `boxoffice predictor train`)")
        return round(float(self.demand.metadata["horizon_s"]) * 1000)

    def forecast(self, state: DemandState, now_ms: int) -> dict[str, Any]:
        """The ``GET /v1/forecast`` body at `now_ms` from the online request counters.

        Raises:
            PredictorError: no demand model, or `state` counts over another horizon than the model's.
        """
        if self.demand is None:
            raise PredictorError("no demand model (run `boxoffice predictor train`)")
        if state.horizon_ms != self.horizon_ms:
            raise PredictorError(f"the demand state counts {state.horizon_ms} ms horizons, the model {self.horizon_ms}")
        queries, features = state.rows(now_ms)
        expected = self.demand.predict(features) if len(features) else np.zeros(0)
        return forecast_document(queries, expected, now_ms, self.horizon_ms)
