"""Settings of the predictor: the `[predictor]` table (see ops.settings for the layers).

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
from typing import Final

from ops.settings import Seconds, SettingsError, setting
from predictor.errors import WorkloadConfigError
from predictor.workload_config import WorkloadConfig

_DEFAULTS: Final = WorkloadConfig()
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
    log_level: str = setting("info", "debug, info, warning or error")

    def validate(self) -> None:
        """Raise SettingsError naming the first setting the generator cannot honour."""
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise SettingsError(f"predictor.log_level: {self.log_level!r} is not debug, info, warning or error")
        for name in ("catalog_venues", "catalog_events"):
            if getattr(self, name) < 1:
                raise SettingsError(f"predictor.{name}: must be at least 1")
        try:
            self.workload_config().validate()
        except WorkloadConfigError as exc:
            raise SettingsError(f"predictor.{setting_for(exc.key)}: {exc.reason}") from None

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
