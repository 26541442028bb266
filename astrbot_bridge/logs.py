"""The core's log lines inside AstrBot: through AstrBot's logger, redacted, as ``log.*`` says.

The router, provider actors and bus log with structlog. Run inside AstrBot (embedded mode, or
the client side of bridge mode) those lines go to AstrBot's logger — its console, its WebUI log
and its per-plugin level — instead of a bare stream: each line is the event and its fields
(``job_id``, ``attempt``, ``provider`` bound by the actors), with ``log.level`` as the floor and
``log.format = "json"`` for JSON lines. Every configured secret is registered with the redactor
first, so no line carries one.
"""

from __future__ import annotations

from astrbot.api import logger

from ..services.config import Config, secret_values
from ..services.infra.logging import REDACTOR, configure_logging

__all__ = ("route_core_logs", "warn_missing_keys")


def _to_astrbot(level: int, line: str) -> None:
    # Called from this module, so ``astrbot.api.logger`` resolves to this plugin's logger.
    logger.log(level, line)


def route_core_logs(config: Config) -> None:
    """Send the core's structlog output to AstrBot's logger (process-wide: structlog has one config)."""
    REDACTOR.register(secret_values(config))
    configure_logging(config.log.level, config.log.format, redactor=REDACTOR, capture_stdlib=False, sink=_to_astrbot)


def warn_missing_keys(config: Config) -> list[str]:
    """One warning per selected provider (primary, fallback, selfie, video) that has no API key."""
    lines = []
    for alias, (wheres, keys) in config.missing_credentials().items():
        line = (
            f"aiimg: provider {alias} is selected ({', '.join(wheres)}) but has no API key "
            f"({', '.join(keys)} empty); it is skipped until one is set"
        )
        logger.warning(line)
        lines.append(line)
    return lines
