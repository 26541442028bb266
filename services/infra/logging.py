"""structlog configuration: JSON when stdout is not a TTY, console on a TTY.

Every line of a job carries ``job_id`` (and ``attempt`` / ``provider``) because actors
handle each message inside ``structlog.contextvars.bound_contextvars(...)``.

Secrets never reach a line (issue 10). Known secret values — raw and in every encoding an
upstream echoes them in (:func:`services.redaction.secret_forms`) — and credentials in URLs
are replaced by ``***``. Twice: on the event's values before rendering (so structured
values stay clean), and on the **rendered line** as the last processor, so whatever a
renderer adds (a traceback, an exception message, a ``repr``) is covered too. Tracebacks are
rendered without frame locals in both formats, so a secret the redactor does not know is
not printed either. Records of stdlib loggers (nats, asyncio, httpx warnings) go through
the same pipeline instead of Python's bare last-resort handler.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

from .redaction import blob_contains, byte_forms, has_userinfo, mask_credentials, secret_forms

__all__ = ("REDACTOR", "LineSink", "Redactor", "configure_logging", "get_logger", "redact")

_MAX_VALUE_DEPTH = 32
"""Nested log values deeper than this are summarised, not walked (the rendered line is still
redacted as a whole): a 5,000-deep upstream body must not make logging raise RecursionError."""


class Redactor:
    """The registered secrets, and every way of finding them: in log event dicts (as a
    structlog processor), in rendered lines (:meth:`rendered`), in failure messages
    (:meth:`redact`), in URLs (:meth:`url_leak`) and in result bytes (:meth:`embedded_in`)."""

    __slots__ = ("_narrow", "_secrets", "_texts", "_wide")

    def __init__(self) -> None:
        self._secrets: frozenset[str] = frozenset()
        self._texts: tuple[str, ...] = ()
        self._narrow: tuple[bytes, ...] = ()
        self._wide: tuple[bytes, ...] = ()

    @classmethod
    def of(cls, secrets: Iterable[str]) -> Redactor:
        redactor = cls()
        redactor.register(secrets)
        return redactor

    def register(self, secrets: Iterable[str]) -> None:
        """Add secrets; each is masked raw and in every form of :func:`secret_forms`."""
        self._secrets = self._secrets | {s for s in secrets if s}
        forms: set[str] = set()
        for secret in self._secrets:
            forms |= secret_forms(secret)
        # Longest first so a key that contains another key is masked whole.
        self._texts = tuple(sorted(forms, key=lambda f: (-len(f), f)))
        narrow, wide = byte_forms(forms)
        self._narrow = tuple(sorted(narrow, key=len, reverse=True))
        self._wide = tuple(sorted(wide, key=len, reverse=True))

    @property
    def forms(self) -> tuple[str, ...]:
        """Every masked form of every registered secret, longest first."""
        return self._texts

    def mask_secrets(self, text: str) -> str:
        """``text`` with every form of every registered secret replaced by ``***``."""
        for form in self._texts:
            if form in text:
                text = text.replace(form, "***")
        return text

    def redact(self, text: str) -> str:
        """:meth:`mask_secrets`, then credentials in URLs and auth headers (for lines and messages)."""
        return mask_credentials(self.mask_secrets(text))

    def contains_secret(self, text: str) -> bool:
        return any(form in text for form in self._texts)

    def url_leak(self, url: str) -> str:
        """Why ``url`` must not be stored (``""`` when it may): it carries a registered secret
        in some form, or ``user:password@`` credentials. A signed CDN URL without our secrets
        is fine — its signature was made for whoever holds the URL."""
        if self.contains_secret(url):
            return "contains a configured secret"
        if has_userinfo(url):
            return "carries userinfo credentials"
        return ""

    def embedded_in(self, data: bytes) -> bool:
        """True when result bytes hold a registered secret in some form, where a file keeps
        text (PNG text chunks, EXIF / XMP / comments, MP4 metadata boxes, trailing bytes)."""
        return blob_contains(data, self._narrow, self._wide)

    def _value(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, BaseException):
            return self.redact(f"{type(value).__name__}: {value}")
        if isinstance(value, (dict, list, tuple)):
            if depth >= _MAX_VALUE_DEPTH:
                return f"<{type(value).__name__} nested deeper than {_MAX_VALUE_DEPTH} levels>"
            if isinstance(value, dict):
                return {k: self._value(v, depth + 1) for k, v in value.items()}
            return type(value)(self._value(v, depth + 1) for v in value)
        return value

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """structlog processor on the event dict, before rendering."""
        for key, value in list(event_dict.items()):
            event_dict[key] = self._value(value)
        return event_dict

    def rendered(self, logger: Any, method: str, line: Any) -> Any:
        """structlog processor after the renderer: the whole line, as printed."""
        if isinstance(line, str):
            return self.redact(line)
        if isinstance(line, bytes):
            return self.redact(line.decode("utf-8", "replace")).encode("utf-8")
        return line


REDACTOR = Redactor()
"""The process-wide redactor; ``services.config`` secrets are registered at start."""


def redact(text: str) -> str:
    """Mask every registered secret and URL credential in ``text`` (for error messages and events)."""
    return REDACTOR.redact(text)


class _Stderr:
    """``sys.stderr`` looked up at each write: a host (or a test runner) may swap it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _StdlibToStructlog(logging.Handler):
    """Sends stdlib records (nats, asyncio, httpx warnings) through the structlog pipeline, so
    they are rendered and redacted like our own lines instead of by Python's last resort."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            logger = structlog.get_logger(record.name)
            kwargs: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                kwargs["exc_info"] = record.exc_info
            logger.log(record.levelno, record.getMessage(), **kwargs)
        except Exception:
            self.handleError(record)


LineSink = Callable[[int, str], None]
"""Where a host takes finished lines: ``(stdlib level number, the rendered, redacted line)``."""

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "msg": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


class _HostLogger:
    """The structlog "logger" behind the bound loggers when a host (AstrBot) owns the output:
    each finished line goes to ``sink`` at the level it was logged at."""

    __slots__ = ("_sink",)

    def __init__(self, sink: LineSink) -> None:
        self._sink = sink

    def __getattr__(self, method: str) -> Callable[[str], None]:
        level = _LEVELS.get(method)
        if level is None:
            raise AttributeError(method)
        sink = self._sink
        return lambda line: sink(level, line)


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    *,
    redactor: Redactor | None = None,
    capture_stdlib: bool = True,
    sink: LineSink | None = None,
) -> None:
    """Configure structlog once for the process. ``fmt``: ``auto`` | ``json`` | ``console``.

    ``capture_stdlib``: route stdlib ``logging`` records at WARNING and above through the same
    pipeline (off when embedded in a host that owns stdlib logging, such as AstrBot).
    ``sink``: hand each line to the host's logger instead of writing it to ``stream``; the host
    adds time and level, so ``auto`` / ``console`` lines are ``event key=value …`` without them
    (``json`` keeps every field). Redaction is the same either way.
    """
    out: Any = stream or _Stderr()
    red = redactor or REDACTOR
    hosted = sink is not None
    use_console = fmt == "console" or (fmt == "auto" and (hosted or (stream or sys.stderr).isatty()))
    processors: list[Any] = [structlog.contextvars.merge_contextvars]
    if not (hosted and use_console):
        processors += [structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True)]
    processors.append(red)
    if use_console:
        # Not the default (rich) formatter: it prints every frame's locals — API keys included.
        processors.append(
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback, pad_event_to=0 if hosted else 30
            )
        )
    else:
        processors += [
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(),
        ]
    processors.append(red.rendered)  # last: whatever the renderer added is redacted too
    # httpx logs every request URL at INFO through stdlib logging, and some upstreams
    # (Jimeng) carry keys in the query string: keep those loggers quiet whatever the host does.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _StdlibToStructlog)]
    # Never with a sink: the host's logger is stdlib, and its records would come back round.
    if capture_stdlib and sink is None:
        root.addHandler(_StdlibToStructlog(logging.WARNING))
    factory: Callable[..., Any]
    if sink is not None:
        host = _HostLogger(sink)
        factory = lambda *_: host  # noqa: E731
    else:
        factory = structlog.PrintLoggerFactory(out)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def ensure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure logging unless the process already did (``aiimg`` CLI, a test). An embedding
    host (AstrBot) would otherwise get structlog's default: rich tracebacks *with locals*
    and no redaction. The host's stdlib logging is left alone."""
    if not structlog.is_configured():
        configure_logging(level, fmt, capture_stdlib=False)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
