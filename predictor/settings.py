"""Settings of the predictor: the `[predictor]` table (see ops.settings for the layers).

The model settings (``models_dir``, the split shares, the forecast horizon,
the ``boost_*`` knobs) are read by ``train`` and ``evaluate``.

The workload generator's knobs are here under the names of the
:class:`~predictor.workload_config.WorkloadConfig` fields they set (the few
that would be ambiguous in a service-wide table carry a ``workload_`` or
``catalog_`` prefix). Every other rate of the generator keeps its documented
default; change it in code through ``WorkloadConfig``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from ops.settings import MINUTE, Seconds, SettingsError, setting
from predictor.errors import WorkloadConfigError
from predictor.workload_config import WorkloadConfig


@dataclass(frozen=True, slots=True)
class BoostParams:
    """xgboost's knobs that matter here (:mod:`predictor.models` uses them)."""

    rounds: int = 400
    learning_rate: float = 0.1  # on the default workload: eta 0.05's AUC in half the rounds
    max_depth: int = 6
    min_child_weight: float = 5.0
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    threads: int = 2

    def for_objective(self, objective: str) -> dict[str, Any]:
        return {
            "objective": objective,
            "tree_method": "hist",
            "eta": self.learning_rate,
            "max_depth": self.max_depth,
            "min_child_weight": self.min_child_weight,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "nthread": self.threads,
            "seed": 0,
            "eval_metric": "logloss" if objective == "binary:logistic" else "poisson-nloglik",
        }


_DEFAULTS: Final = WorkloadConfig()
_BOOST: Final = BoostParams()
# settings field -> WorkloadConfig field, where the names differ
_RENAMED: Final = {
    "workload_seed": "seed",
    "workload_days": "days",
    "workload_users": "users",
    "workload_start": "start",
}
# WorkloadConfig fields set by a setting of the same name
_SAME_NAME: Final = (
    "sessions_per_day", "zipf_exponent", "home_region_share", "diurnal_amplitude", "session_purchase_rate",
    "cart_purchase_rate", "presale_purchase_rate", "bot_request_share", "hot_onsale_bot_share", "onsale_spike_min",
    "onsale_spike_max", "onsale_spike_decay", "waiting_room_release_multiple",
)  # fmt: skip


def setting_for(field: str) -> str:
    """The setting that sets WorkloadConfig `field` (its own name unless renamed here)."""
    return {config_field: name for name, config_field in _RENAMED.items()}.get(field, field)


@dataclass(frozen=True, slots=True)
class PredictorSettings:
    workload_seed: int = setting(_DEFAULTS.seed, "random seed of the generated workload (same seed, same files)")
    workload_dir: Path = setting(Path("var/workload"), "directory the workload is written to (`generate --out`)")
    workload_start: str = setting(
        _DEFAULTS.start.isoformat().replace("+00:00", "Z"), "start of the simulated window (RFC 3339, UTC)"
    )
    workload_days: int = setting(_DEFAULTS.days, "days simulated")
    workload_users: int = setting(_DEFAULTS.users, "human user accounts (bots come on top)")
    sessions_per_day: int = setting(_DEFAULTS.sessions_per_day, "human browsing sessions per day, before on-sales")
    catalog_seed: int = setting(2026, "seed of the demo catalog the workload runs over (origin's demo_seed)")
    catalog_venues: int = setting(300, "venues of that demo catalog (origin's demo_venues)")
    catalog_events: int = setting(3000, "events of that demo catalog (origin's demo_events)")
    zipf_exponent: float = setting(_DEFAULTS.zipf_exponent, "Zipf exponent of event popularity")
    home_region_share: float = setting(_DEFAULTS.home_region_share, "share of an event's demand from its region")
    diurnal_amplitude: float = setting(_DEFAULTS.diurnal_amplitude, "relative amplitude of the daily cycle")
    session_purchase_rate: float = setting(_DEFAULTS.session_purchase_rate, "human sessions ending in a purchase")
    cart_purchase_rate: float = setting(_DEFAULTS.cart_purchase_rate, "holds that become orders")
    presale_purchase_rate: float = setting(_DEFAULTS.presale_purchase_rate, "presale invitees who buy")
    bot_request_share: float = setting(_DEFAULTS.bot_request_share, "bots' share of requests outside on-sales")
    hot_onsale_bot_share: float = setting(_DEFAULTS.hot_onsale_bot_share, "bots' share of hot on-sales' requests")
    onsale_spike_min: float = setting(_DEFAULTS.onsale_spike_min, "opening traffic of the least popular on-sale (x)")
    onsale_spike_max: float = setting(_DEFAULTS.onsale_spike_max, "opening traffic of the most popular on-sale (x)")
    onsale_spike_decay: Seconds = setting(
        Seconds(_DEFAULTS.onsale_spike_decay), "time for an on-sale's extra traffic to fall to 5 %"
    )
    waiting_room_release_multiple: float = setting(
        _DEFAULTS.waiting_room_release_multiple, "hot on-sales' waiting rooms release this many baselines"
    )
    models_dir: Path = setting(Path("var/models"), "directory of the versioned model files (`train` writes here)")
    train_share: float = setting(0.6, "earliest share of sessions that trains the models (time-based split)")
    calibration_share: float = setting(0.15, "next share that calibrates the purchase model; the rest tests")
    forecast_horizon: Seconds = setting(Seconds(15 * MINUTE), "how far ahead the demand forecast looks")
    forecast_train_step: Seconds = setting(Seconds(30 * MINUTE), "spacing of the demand model's training cut-offs")
    boost_rounds: int = setting(_BOOST.rounds, "most boosting rounds (early stopping usually ends sooner)")
    boost_learning_rate: float = setting(_BOOST.learning_rate, "xgboost learning rate (eta)")
    boost_max_depth: int = setting(_BOOST.max_depth, "depth of each tree")
    boost_threads: int = setting(_BOOST.threads, "xgboost threads")
    log_level: str = setting("info", "debug, info, warning or error")

    def validate(self) -> None:
        """Raise SettingsError naming the first setting the generator cannot honour."""
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise SettingsError(f"predictor.log_level: {self.log_level!r} is not debug, info, warning or error")
        for name in ("catalog_venues", "catalog_events", "boost_rounds", "boost_max_depth", "boost_threads"):
            if getattr(self, name) < 1:
                raise SettingsError(f"predictor.{name}: must be at least 1")
        for name in ("train_share", "calibration_share"):
            if not 0.05 <= getattr(self, name) <= 0.9:
                raise SettingsError(f"predictor.{name}: must be between 0.05 and 0.9")
        if self.train_share + self.calibration_share > 0.95:
            raise SettingsError("predictor.calibration_share: train_share + calibration_share must leave 5 % to test")
        if not 0 < self.boost_learning_rate <= 1:
            raise SettingsError("predictor.boost_learning_rate: must be above 0 and at most 1")
        for name in ("forecast_horizon", "forecast_train_step"):
            if getattr(self, name) < 1:
                raise SettingsError(f"predictor.{name}: must be at least 1 s")
        try:
            self.workload_config().validate()
        except WorkloadConfigError as exc:
            raise SettingsError(f"predictor.{setting_for(exc.key)}: {exc.reason}") from None

    def boost_params(self) -> BoostParams:
        return BoostParams(
            rounds=self.boost_rounds,
            learning_rate=self.boost_learning_rate,
            max_depth=self.boost_max_depth,
            threads=self.boost_threads,
        )

    def workload_config(self) -> WorkloadConfig:
        """The generator's config: these settings over the documented defaults.

        Raises:
            SettingsError: ``workload_start`` is not an RFC 3339 time with a timezone.
        """
        try:
            start = datetime.fromisoformat(self.workload_start.replace("Z", "+00:00"))
        except ValueError:
            raise SettingsError(
                f"predictor.workload_start: expected an RFC 3339 time like 2026-01-05T00:00:00Z, "
                f"got {self.workload_start!r}"
            ) from None
        if start.tzinfo is None:
            raise SettingsError("predictor.workload_start: needs a timezone (end it with Z for UTC)")
        values = {field: getattr(self, name) for name, field in _RENAMED.items() if field != "start"}
        values.update({name: getattr(self, name) for name in _SAME_NAME})
        values["onsale_spike_decay"] = float(self.onsale_spike_decay)
        return dataclasses.replace(_DEFAULTS, start=start, **values)
