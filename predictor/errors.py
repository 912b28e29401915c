"""The predictor's exception family.

Every error the predictor raises on purpose is a :class:`PredictorError`:

* :class:`WorkloadConfigError` — a workload setting is out of range or
  inconsistent with another; it names the setting in ``key`` so the CLI can
  report ``predictor.<key>`` like every other settings error.
* :class:`WorkloadError` — the catalog cannot carry a workload (no events, or
  none visible during the window).
"""

from __future__ import annotations


class PredictorError(Exception):
    """Base of every error the predictor raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class WorkloadError(PredictorError, ValueError):
    """The catalog cannot carry the requested workload."""


class WorkloadConfigError(PredictorError, ValueError):
    """A :class:`predictor.workload.WorkloadConfig` field has a value the generator cannot honour."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.reason = message
