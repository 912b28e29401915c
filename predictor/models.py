"""The xgboost models and their versioned files.

Two models, each a gradient-boosted tree ensemble (xgboost's ``hist`` method,
small enough to train in seconds on two cores):

* **purchase** — binary: will this user buy this event in the session that is
  starting? Trained on the earlier sessions, early-stopped on the latest part
  of those, then calibrated (:mod:`predictor.calibration`) on a later slice.
* **demand** — regression with a Poisson objective (the target is a count of
  requests): how many requests a region sends for an event over the next
  horizon (:mod:`predictor.forecast`).

Files, in one directory (``models_dir``): ``<kind>-v<N>.json`` is xgboost's own
JSON model, ``<kind>-v<N>.meta.json`` what it needs around it (feature list,
calibration, metrics, how it was trained). The metadata is written last, each
file under a temporary name then renamed, so a model whose metadata exists is
complete; the latest version is the largest ``N`` with metadata.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import xgboost as xgb

from predictor.atomicfile import write_text_atomically
from predictor.calibration import FloatArray, IsotonicCalibration
from predictor.errors import PredictorError
from predictor.features import FEATURES
from predictor.forecast import DEMAND_FEATURES
from predictor.settings import BoostParams

PURCHASE: Final = "purchase"
DEMAND: Final = "demand"
KINDS: Final = (PURCHASE, DEMAND)
FORMAT: Final = 1  # bump when the metadata's meaning changes
_VERSIONED: Final = re.compile(r"^(?P<kind>[a-z]+)-v(?P<version>[0-9]+)\.meta\.json$")
EARLY_STOPPING_ROUNDS: Final = 30  # rounds without improvement on the held-out rows before stopping


@dataclass(slots=True)
class Model:
    """A trained booster with what it needs to be used: its feature columns, and for the purchase model
    its calibration. ``metadata`` holds the rest (metrics, split, version) and is what the meta file stores."""

    kind: str
    booster: Any
    features: tuple[str, ...]
    calibration: IsotonicCalibration | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def raw(self, frame: Any) -> FloatArray:
        """The booster's output: purchase probability before calibration, or the expected count."""
        missing = [name for name in self.features if name not in frame.columns]
        if missing:
            raise PredictorError(f"{self.kind} model needs feature {missing[0]!r}")
        matrix = xgb.DMatrix(
            frame[list(self.features)].to_numpy(dtype=np.float32), feature_names=list(self.features), missing=np.nan
        )
        result: FloatArray = np.asarray(self.booster.predict(matrix), dtype=np.float64)
        return result

    def predict(self, frame: Any) -> FloatArray:
        """Calibrated purchase probabilities, or expected counts for the demand model."""
        raw = self.raw(frame)
        return self.calibration(raw) if self.calibration is not None else raw

    @property
    def version(self) -> int:
        return int(self.metadata.get("version", 0))


def fit_booster(
    objective: str,
    train: Any,
    label: Any,
    stop: Any,
    stop_label: Any,
    features: tuple[str, ...],
    params: BoostParams,
) -> tuple[Any, int]:
    """Train with early stopping on (`stop`, `stop_label`); returns the booster cut at its best round, and it."""
    matrix = xgb.DMatrix(
        train[list(features)].to_numpy(dtype=np.float32), label=label, feature_names=list(features), missing=np.nan
    )
    held_out = xgb.DMatrix(
        stop[list(features)].to_numpy(dtype=np.float32), label=stop_label, feature_names=list(features), missing=np.nan
    )
    booster = xgb.train(
        params.for_objective(objective),
        matrix,
        num_boost_round=params.rounds,
        evals=[(held_out, "held_out")],
        early_stopping_rounds=EARLY_STOPPING_ROUNDS,
        verbose_eval=False,
    )
    best = int(booster.best_iteration) + 1
    return booster[:best], best


def save(model: Model, directory: Path) -> Path:
    """Write the model as the next version of its kind; return the metadata file's path.

    Raises:
        OSError: the directory or a file cannot be written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    version = 1 + max(versions(directory, model.kind), default=0)
    model_name = f"{model.kind}-v{version}.json"
    temporary = directory / f".{model_name}.tmp.json"  # xgboost picks the format from the suffix
    model.booster.save_model(str(temporary))
    os.replace(temporary, directory / model_name)
    model.metadata.update(
        {
            "format": FORMAT,
            "kind": model.kind,
            "version": version,
            "model_file": model_name,
            "features": list(model.features),
            "calibration": model.calibration.to_json() if model.calibration is not None else None,
        }
    )
    meta = directory / f"{model.kind}-v{version}.meta.json"
    document = json.dumps(jsonable(model.metadata), indent=2, allow_nan=False, default=_plain)
    write_text_atomically(meta, document + "\n")
    return meta


def versions(directory: Path, kind: str) -> list[int]:
    """The complete versions of `kind` in `directory`, ascending."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _VERSIONED.match(path.name)
        if match and match["kind"] == kind:
            found.append(int(match["version"]))
    return sorted(found)


def load(directory: Path, kind: str, version: int | None = None) -> Model:
    """The given version of `kind` (default: the latest).

    Raises:
        PredictorError: no such model, or its files are unreadable or inconsistent.
    """
    if kind not in KINDS:
        raise PredictorError(f"unknown model kind {kind!r}")
    available = versions(directory, kind)
    if not available:
        raise PredictorError(f"no {kind} model in {directory} (run `boxoffice predictor train`)")
    chosen = available[-1] if version is None else version
    if chosen not in available:
        raise PredictorError(f"no {kind} model version {chosen} in {directory}")
    meta_path = directory / f"{kind}-v{chosen}.meta.json"
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
        _check_metadata(metadata, kind, chosen)
        booster = xgb.Booster()
        booster.load_model(str(directory / metadata["model_file"]))
        features = tuple(str(name) for name in metadata["features"])
        _check_features(kind, features, booster.feature_names)
        calibration = metadata.get("calibration")
        if kind == PURCHASE and not calibration:
            raise PredictorError("a purchase model needs its calibration (hint thresholds are probabilities)")
        return Model(
            kind,
            booster,
            features,
            IsotonicCalibration.from_json(calibration) if calibration else None,
            metadata,
        )
    except (OSError, ValueError, KeyError, TypeError, xgb.core.XGBoostError, PredictorError) as exc:
        raise PredictorError(f"cannot load {meta_path}: {exc}") from None


def _check_metadata(metadata: Any, kind: str, version: int) -> None:
    """What `save` wrote: a document of this kind, format and version, naming a model file beside it.

    The server's reloader swaps in whatever :func:`load` returns, so a file it could not use must fail here.
    """
    if not isinstance(metadata, dict):
        raise PredictorError("the metadata is not a JSON object")
    if metadata.get("format") != FORMAT:
        raise PredictorError(f"metadata format {metadata.get('format')!r}, this version reads {FORMAT}")
    if metadata.get("kind") != kind:
        raise PredictorError(f"the metadata describes a {metadata.get('kind')!r} model, not a {kind} model")
    if metadata.get("version") != version:  # the reloader compares it with the file names: it would reload forever
        raise PredictorError(f"the metadata says version {metadata.get('version')!r}, its file name {version}")
    name = metadata.get("model_file")
    if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
        raise PredictorError(f"model_file {name!r} is not a file name in the models directory")
    horizon = metadata.get("horizon_s")
    if kind == DEMAND and not (
        isinstance(horizon, int | float) and not isinstance(horizon, bool) and 0.001 <= horizon < 366 * 86_400
    ):  # a whole millisecond up to a year: what DemandState and the forecast document can count in
        raise PredictorError(f"horizon_s {horizon!r} is not a number of seconds")


def _check_features(kind: str, features: tuple[str, ...], booster_features: Any) -> None:
    """The metadata's columns are the booster's, in its order, and ones serving computes."""
    if booster_features is not None and list(booster_features) != list(features):
        raise PredictorError("the metadata's feature list is not the booster's (names or order differ)")
    known = FEATURES if kind == PURCHASE else DEMAND_FEATURES
    unknown = [name for name in features if name not in known]
    if unknown:
        raise PredictorError(f"feature {unknown[0]!r} is not one this version computes")


def jsonable(value: Any) -> Any:
    """JSON has no NaN: an undefined metric (an AUC over one class) is written as null."""
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"not JSON: {type(value).__name__}")
