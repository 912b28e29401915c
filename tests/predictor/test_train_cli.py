"""`boxoffice predictor train` and `evaluate` end to end on a tiny workload, as users run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Two small days: ~16,000 sessions and ~400 purchases, enough for every slice of the split.
TINY = (
    "--workload-days", "2", "--workload-users", "6000", "--sessions-per-day", "8000",
    "--catalog-venues", "30", "--catalog-events", "300",
)  # fmt: skip
QUICK = ("--boost-rounds", "60", "--boost-max-depth", "4")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("BOXOFFICE_")}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, env=environment)


def test_generate_train_evaluate(tmp_path: Path) -> None:
    workload, models = tmp_path / "workload", tmp_path / "models"
    done = run("-m", "predictor", "generate", "--seed", "5", "--out", str(workload), *TINY)
    assert done.returncode == 0, done.stderr

    done = run("-m", "ops", "predictor", "train", "--workload-dir", str(workload), "--models-dir", str(models), *QUICK)
    assert done.returncode == 0, done.stderr
    trained = json.loads(done.stdout)
    assert trained["purchase"]["version"] == 1
    assert trained["demand"]["version"] == 1
    assert 0.5 < trained["purchase"]["test"]["roc_auc"] <= 1
    for name in ("purchase-v1.json", "purchase-v1.meta.json", "demand-v1.json", "demand-v1.meta.json"):
        assert (models / name).is_file(), name
    meta = json.loads((models / "purchase-v1.meta.json").read_text())
    assert meta["workload"]["seed"] == 5
    assert meta["metrics"]["test"]["roc_auc"] == trained["purchase"]["test"]["roc_auc"]
    assert meta["calibration"]["kind"] == "isotonic"

    metrics_file = tmp_path / "metrics.json"
    done = run(
        "-m", "predictor", "evaluate", "--workload-dir", str(workload), "--models-dir", str(models),
        "--metrics-out", str(metrics_file),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in ("xgboost", "global_rate", "recency_frequency", "logistic_regression", "best_possible", "WAPE"):
        assert name in done.stdout
    result = json.loads(metrics_file.read_text())
    purchase = result["purchase"]["metrics"]
    assert purchase["xgboost"]["roc_auc"] > purchase["global_rate"]["roc_auc"]
    assert purchase["xgboost"]["roc_auc"] == trained["purchase"]["test"]["roc_auc"]
    assert 0 < result["purchase"]["share_of_best_auc"] <= 1.05
    assert result["demand"]["rows"] > 0

    # training again writes the next version beside the first
    done = run("-m", "predictor", "train", "--workload-dir", str(workload), "--models-dir", str(models), *QUICK)
    assert done.returncode == 0, done.stderr
    assert (models / "purchase-v2.meta.json").is_file()


def test_missing_inputs_fail_with_a_message(tmp_path: Path) -> None:
    done = run("-m", "predictor", "train", "--workload-dir", str(tmp_path / "none"), "--models-dir", str(tmp_path))
    assert done.returncode == 1
    assert "no complete workload" in done.stderr
    done = run("-m", "predictor", "train", "--train-share", "0.99")
    assert done.returncode == 2
    assert "predictor.train_share" in done.stderr
    assert not list(tmp_path.iterdir())
