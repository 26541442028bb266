"""Hatchling build hook: the repository's folders go into the wheel as ``aiimg.*``.

A wheel maps ``messages/``, ``services/`` and ``astrbot_bridge/`` under the one top-level
package ``aiimg``. This is done here, for standard builds only, and not with a static
``force-include`` table: hatchling copies force-included files into editable wheels too, which
left a stale copy of the code in ``site-packages/aiimg/`` beside the checkout that
``pip install -e .`` is meant to expose (``aiimg/__init__.py`` points a checkout's ``aiimg``
at the repository root instead).
"""

from __future__ import annotations

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

FOLDERS = ("messages", "services", "astrbot_bridge")


class AiimgLayout(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name == "wheel" and version == "standard":
            build_data["force_include"].update({folder: f"aiimg/{folder}" for folder in FOLDERS})
