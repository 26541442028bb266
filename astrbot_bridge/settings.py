"""The plugin's settings dict → the core's :class:`~services.config.Config`, nothing more.

The settings page has exactly the Config key tree (``schema.py`` generates it), so the
dict loads with ``config_from_dict`` unchanged. The only thing filled in here is where
data lives: an empty ``data_dir`` means the plugin's own ``data/plugin_data/<name>``,
where AstrBot also keeps the files uploaded on the settings page.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..services.config import Config, config_from_dict

__all__ = ("PLUGIN_NAME", "load_settings")

PLUGIN_NAME = "astrbot_plugin_aiimg"
"""``name`` in metadata.yaml: the plugin's folder, config file and data folder are named after it."""


def load_settings(settings: Mapping[str, Any], data_dir: Path) -> Config:
    """Raises :class:`~services.domain.errors.ConfigError` naming the key when a value is invalid."""
    data = dict(settings)
    if not str(data.get("data_dir") or "").strip():
        data["data_dir"] = str(data_dir)
    return config_from_dict(data, source="astrbot plugin settings")
