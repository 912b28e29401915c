"""Shared fixtures of the predictor tests: one tiny workload and real models trained on it (per session).

`trained_workload` is a tests.support.trained.TrainedWorkload, built (and cached) by that module so
that other test folders can use the same workload without importing this conftest.
"""

from __future__ import annotations

import pytest

from tests.support.trained import TrainedWorkload
from tests.support.trained import trained_workload as build_trained_workload


@pytest.fixture(scope="session")
def trained_workload(tmp_path_factory: pytest.TempPathFactory) -> TrainedWorkload:
    """A 2-day, 3,000-user workload over a 300-event catalog, written out, with both models trained on it."""
    return build_trained_workload(tmp_path_factory.getbasetemp())
