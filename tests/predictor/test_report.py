"""`python -m predictor report` on a tiny generated workload: a well-formed HTML page with the printed figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from predictor.evaluation import HINT_THRESHOLDS
from predictor.report import curves_in
from predictor.svgplot import Marker, line_chart, nice_ticks

# One day over a small catalog: a couple of seconds; it holds one on-sale.
SMALL = (
    "--workload-days", "1", "--workload-users", "3000", "--sessions-per-day", "4000",
    "--catalog-venues", "30", "--catalog-events", "300",
)  # fmt: skip
VOID = {"meta", "br", "hr", "img", "input", "link", "area", "base", "col", "embed", "source", "track", "wbr"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("BOXOFFICE_")}
    return subprocess.run(
        [sys.executable, "-m", "predictor", *args], capture_output=True, text=True, timeout=180, env=environment
    )


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "workload"
    done = run("generate", "--seed", "1", "--out", str(out), *SMALL)
    assert done.returncode == 0, done.stderr
    return out


class TagBalance(HTMLParser):
    """Records every element and fails on a closing tag that does not close the innermost open element."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.seen: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append(tag)
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.open[-1:] or 'nothing'}")
        else:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> TagBalance:
    parser = TagBalance()
    parser.feed(page)
    parser.close()
    return parser


def test_report_writes_a_well_formed_page_with_the_figures(workload: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    done = run("report", "--workload", str(workload), "--out", str(out), "--hint-k", "1,2")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["report"] == str(out)
    assert printed["onsales"] >= 1
    assert set(printed["policies"]) == {
        "lru", "s3fifo", "s3fifo+oracle", "s3fifo+forecast", "s3fifo+oracle-wide", "belady",
    }  # fmt: skip
    assert "models" not in printed  # no models directory: no model figures, and the report still works
    assert set(printed["hints"]) == {"1", "2"}
    belady = printed["policies"]["belady"]
    assert belady["gap_closure"] == 1.0
    for policy in ("lru", "s3fifo"):
        assert 0.0 <= printed["policies"][policy]["hit_ratio"] <= belady["hit_ratio"] + 0.02

    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    parsed = parse(page)
    assert parsed.errors == []
    assert parsed.open == []
    assert parsed.seen.count("svg") >= 2  # hit ratio and origin rate around the on-sale, at least
    assert "table" in parsed.seen
    text = " ".join(parsed.text)
    for policy, figures in printed["policies"].items():
        assert f"{figures['hit_ratio']:.4g}" in text, policy
    assert "No model metrics found" in text
    assert not (tmp_path / "report.html.tmp").exists()


def test_report_draws_roc_and_calibration_from_model_metrics(workload: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    metrics = {
        "purchase": {
            "auc": 0.87,
            "roc": {"fpr": [0.0, 0.1, 0.4, 1.0], "tpr": [0.0, 0.6, 0.9, 1.0]},
            "calibration": {"predicted": [0.05, 0.2, 0.6], "observed": [0.04, 0.22, 0.55]},
        }
    }
    (models / "purchase-v1.meta.json").write_text(json.dumps(metrics), encoding="utf-8")
    (models / "broken-metrics.json").write_text("{not json", encoding="utf-8")
    (models / "purchase-v1.json").write_text(json.dumps({"roc": {"fpr": [0, 1], "tpr": [0, 1]}}), encoding="utf-8")
    out = tmp_path / "report.html"
    done = run(
        "report", "--workload", str(workload), "--out", str(out), "--models", str(models), "--no-sweep",
        "--pops", "eu-central,na-east",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pops"] == ["eu-central", "na-east"]
    page = out.read_text(encoding="utf-8")
    assert parse(page).errors == []
    assert 'aria-label="ROC"' in page
    assert 'aria-label="Calibration"' in page
    assert "0.87" in page
    assert "No model metrics found" not in page
    assert "purchase-v1.json:" not in page  # the xgboost model file itself is not read as metrics
    # The metadata names a purchase model whose file is no xgboost model: said so, not a crash.
    assert any("purchase model not loaded" in note for note in json.loads(done.stdout)["models"]["notes"])
    assert "purchase model not loaded" in page


def test_report_uses_the_trained_models(trained_workload: Any, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    done = run(
        "report", "--workload", str(trained_workload.workload_dir), "--out", str(out),
        "--models", str(trained_workload.models_dir), "--no-sweep", "--hint-k", "1,2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert {"s3fifo+model", "s3fifo+model-wide", "s3fifo+oracle-wide"} <= set(printed["policies"])
    models = printed["models"]
    assert models["purchase_version"] == 1 and models["demand_version"] == 1
    assert not [note for note in models["notes"] if "not loaded" in note or "another workload" in note]
    assert any("warm times fall before its test period" in note for note in models["notes"])
    quality = models["test_quality"]
    assert len(quality) == 2
    assert all(0.5 <= figures["roc_auc"] <= 1.0 for figures in quality.values())
    assert printed["hints_from"] == models["hint_periods"]["test_from"]  # the heuristic on the same sessions
    point = models["model_hints"]
    assert point["k"] in (1, 2)
    assert point["threshold"] in HINT_THRESHOLDS
    assert isinstance(point["aim_met_on_test"], bool)
    for figures in printed["policies"].values():
        assert figures["warm_admitted"] <= figures["warm_listed"]
    page = out.read_text(encoding="utf-8")
    parsed = parse(page)
    assert parsed.errors == []
    assert 'aria-label="ROC"' in page and 'aria-label="Calibration"' in page
    assert "test split" in page  # the curves were computed from the models on the test sessions
    text = " ".join(parsed.text)
    assert "validation precision" in text
    assert "G, all traffic in the windows" in text


def test_report_names_bad_input(tmp_path: Path, workload: Path) -> None:
    missing = run("report", "--workload", str(tmp_path / "nothing"), "--out", str(tmp_path / "r.html"))
    assert missing.returncode == 1
    assert "holds no workload" in missing.stderr
    unknown_pop = run("report", "--workload", str(workload), "--out", str(tmp_path / "r.html"), "--pops", "mars")
    assert unknown_pop.returncode == 1
    assert "no trace for POP mars" in unknown_pop.stderr
    bad_share = run("report", "--workload", str(workload), "--out", str(tmp_path / "r.html"), "--capacity-share", "2")
    assert bad_share.returncode == 1
    assert "capacity share" in bad_share.stderr
    assert not (tmp_path / "r.html").exists()


def test_curves_are_found_at_any_depth_with_their_scalars() -> None:
    found = curves_in({"models": [{"name": "x", "log_loss": 0.2, "roc": {"fpr": [0, 1], "tpr": [0, 1]}}]})
    assert len(found) == 1
    assert found[0]["roc"] == ([0.0, 1.0], [0.0, 1.0])
    assert found[0]["scalars"] == {"log_loss": 0.2}
    assert curves_in({"roc": {"fpr": "not a list"}}) == []
    bins = [{"predicted": 0.1, "observed": 0.12, "rows": 10}, {"predicted": 0.5, "observed": 0.45, "rows": 10}]
    assert curves_in({"test": {"calibration": bins}})[0]["calibration"] == ([0.1, 0.5], [0.12, 0.45])


def test_line_chart_escapes_labels_and_breaks_lines_at_gaps() -> None:
    svg = line_chart(
        {"<policy>": [(0.0, 0.5), (1.0, None), (2.0, 0.7), (3.0, 0.8)]},
        title="a & b",
        x_label="x",
        y_label="y",
        markers=[Marker(1.0, "on-sale")],
    )
    assert "&lt;policy&gt;" in svg
    assert "a &amp; b" in svg
    assert svg.count("<polyline") == 1  # the lone first point is a dot; the last two a line
    assert svg.count("<circle") == 1
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
