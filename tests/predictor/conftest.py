"""Shared fixtures of the predictor tests: one tiny workload and real models trained on it (per session).

`trained_workload` is a TrainedWorkload; test modules annotate it as Any (importing from a conftest
loads it twice, under two module names).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest

from origin.catalog import build_catalog
from predictor.modelcli import train
from predictor.settings import PredictorSettings
from predictor.traces import write_workload
from predictor.workload import Workload, WorkloadConfig, generate

SERVE_WORKLOAD = WorkloadConfig(seed=3, days=2, users=3000, sessions_per_day=4000)
SERVE_CATALOG = {"seed": 2026, "venues": 30, "events": 300}


@dataclass(frozen=True)
class TrainedWorkload:
    workload: Workload
    workload_dir: Path
    models_dir: Path


@pytest.fixture(scope="session")
def trained_workload(tmp_path_factory: pytest.TempPathFactory) -> TrainedWorkload:
    """A 2-day, 3,000-user workload over a 300-event catalog, written out, with both models trained on it."""
    root = tmp_path_factory.mktemp("trained")
    catalog = build_catalog(
        SERVE_CATALOG["seed"],
        venues=SERVE_CATALOG["venues"],
        events=SERVE_CATALOG["events"],
        start=SERVE_WORKLOAD.start,
    )
    workload = generate(SERVE_WORKLOAD, catalog)
    write_workload(workload, root / "workload", SERVE_CATALOG)
    settings = dataclasses.replace(
        PredictorSettings(), workload_dir=root / "workload", models_dir=root / "models", boost_rounds=60
    )
    train(settings)
    return TrainedWorkload(workload, root / "workload", root / "models")
