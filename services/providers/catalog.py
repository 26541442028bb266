"""The provider catalog: alias → the module and class that speak that upstream.

Modules are imported lazily so a deployment only loads what it runs.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence

from ..domain.config import Config
from ..domain.errors import ConfigError
from .base import Provider

__all__ = ("REGISTRY", "load_provider", "providers_for")

REGISTRY: dict[str, str] = {
    "local": "local:LocalProvider",
    "grok": "grok:GrokProvider",
    "openai_compat": "openai_compat:OpenAICompatProvider",
    "gemini_openai": "openai_compat:GeminiOpenAIProvider",
    "gemini_native": "gemini_native:GeminiNativeProvider",
    "gitee": "gitee:GiteeProvider",
    "gitee_async": "gitee_async:GiteeAsyncProvider",
    "jimeng": "jimeng:JimengProvider",
    "ark": "ark:ArkProvider",
    "grok_video": "grok_video:GrokVideoProvider",
}
"""alias → ``module:Class`` (a module of this package). Every alias in ``services.config.CAPABILITIES`` gets an entry."""


# Imported by every provider process: silence the request-URL loggers even when the
# host (AstrBot, a test runner) configured stdlib logging at INFO.
for _noisy in ("httpx", "httpcore"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


def load_provider(alias: str, config: Config) -> Provider:
    target = REGISTRY.get(alias)
    if target is None:
        known = ", ".join(sorted(REGISTRY))
        raise ConfigError(f"no provider implementation for {alias!r} (known: {known})")
    module_name, _, cls_name = target.partition(":")
    # Relative to this package, whatever its parent is named (``aiimg``, or the AstrBot plugin's).
    cls = getattr(importlib.import_module(f".{module_name}", __package__), cls_name)
    provider = cls(config)
    if not isinstance(provider, Provider):
        raise ConfigError(f"{target} is not a Provider")
    return provider


def providers_for(config: Config, only: Sequence[str] | None = None) -> list[Provider]:
    """Instantiate the provider classes for ``only`` (default: every enabled alias)."""
    aliases = list(only) if only else config.enabled_providers()
    return [load_provider(alias, config) for alias in aliases]
