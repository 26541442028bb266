"""Provider registry: alias → the module and class that speak that upstream.

Modules are imported lazily so a deployment only loads what it runs.
"""

from __future__ import annotations

import importlib
import logging

from ..config import Config
from ..errors import ConfigError
from ..provider import Provider

__all__ = ("REGISTRY", "load_provider")

REGISTRY: dict[str, str] = {
    "local": "services.providers.local:LocalProvider",
    "grok": "services.providers.grok:GrokProvider",
    "openai_compat": "services.providers.openai_compat:OpenAICompatProvider",
    "gemini_openai": "services.providers.openai_compat:GeminiOpenAIProvider",
    "gemini_native": "services.providers.gemini_native:GeminiNativeProvider",
    "gitee": "services.providers.gitee:GiteeProvider",
    "gitee_async": "services.providers.gitee_async:GiteeAsyncProvider",
    "jimeng": "services.providers.jimeng:JimengProvider",
    "ark": "services.providers.ark:ArkProvider",
    "grok_video": "services.providers.grok_video:GrokVideoProvider",
}
"""alias → ``module:Class``. Every alias in ``services.config.CAPABILITIES`` gets an entry."""


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
    cls = getattr(importlib.import_module(module_name), cls_name)
    provider = cls(config)
    if not isinstance(provider, Provider):
        raise ConfigError(f"{target} is not a Provider")
    return provider
