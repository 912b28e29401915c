"""The config files shipped in ops/config/ load without errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from geodns.config import load_zone_config
from geodns.settings import GeoDNSSettings
from ops.settings import load

CONFIG_DIR = Path(__file__).resolve().parents[2] / "ops" / "config"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("geodns*.toml")), ids=lambda path: path.name)
def test_geodns_configs_load(path: Path) -> None:
    config = load_zone_config(path)
    assert config.zones
    assert config.pops
    settings = load(GeoDNSSettings, "geodns", environ={"BOXOFFICE_CONFIG": str(path)})
    assert settings.port > 0
