"""structlog configuration: JSON when stdout is not a TTY, console on a TTY.

Every line of a job carries ``job_id`` (and ``attempt`` / ``provider``) because actors
handle each message inside ``structlog.contextvars.bound_contextvars(...)``.
Known secret values are replaced by ``***`` in every line (:class:`Redactor`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ("REDACTOR", "Redactor", "configure_logging", "get_logger", "redact")


class Redactor:
    """A structlog processor that masks registered secret strings anywhere in an event dict."""

    __slots__ = ("_secrets",)

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()

    def register(self, secrets: Iterable[str]) -> None:
        merged = set(self._secrets) | {s for s in secrets if s and len(s) >= 4}
        # Longest first so a key that contains another key is masked whole.
        self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, "***")
        return text

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self._value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._value(v) for v in value)
        if isinstance(value, BaseException):
            return self.redact(f"{type(value).__name__}: {value}")
        return value

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if not self._secrets:
            return event_dict
        for key, value in list(event_dict.items()):
            event_dict[key] = self._value(value)
        return event_dict


REDACTOR = Redactor()
"""The process-wide redactor; ``services.config`` secrets are registered at start."""


def redact(text: str) -> str:
    """Mask every registered secret in ``text`` (for error messages and events)."""
    return REDACTOR.redact(text)


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog once for the process. ``fmt``: ``auto`` | ``json`` | ``console``."""
    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        REDACTOR,
    ]
    if use_console:
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    else:
        processors += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    # httpx logs every request URL at INFO through stdlib logging, and some upstreams
    # (Jimeng) carry keys in the query string: keep those loggers quiet whatever the host does.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
