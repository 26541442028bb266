"""The loadable configuration: ``Config``, built from the provider catalog, and how to load it.

One typed model in the old plugin's v3 key tree (``draw.*``, ``edit.*``, ``selfie.*``,
``video.*``, ``nats.*`` …). Its provider-independent part and every lookup are
:class:`~.domain.config.ConfigBase`; ``Config`` adds one typed block per provider under
``draw.<alias>`` / ``edit.<alias>`` and the ``video`` block, as the provider modules declare
them (``providers/catalog.py``). Loads from TOML (``--config``, ``AIIMG_CONFIG``,
``./aiimg.toml``) or from a plain dict (the AstrBot plugin's settings). Any string value
written ``env:NAME`` is read from the environment, so secrets need not live in files. An
unknown key or a wrong type fails at start with a :class:`~.domain.errors.ConfigError` that
names the key.

This module is at the application level (it needs the providers); code in the domain, infra
and actors layers takes a ``ConfigBase`` and reads ``config.capabilities``.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import unquote

import msgspec

from ..messages import Operation
from .domain.config import ConfigBase
from .domain.errors import ConfigError
from .providers.catalog import CATALOG

__all__ = (
    "CAPABILITIES",
    "Config",
    "config_from_dict",
    "load_config",
    "secret_values",
)

if TYPE_CHECKING:
    # The type checker knows the provider-independent part and the lookups; typed code reaches a
    # provider's block through ``config.block(op, alias)``.
    Config: TypeAlias = ConfigBase
else:
    Config = CATALOG.config_type

CAPABILITIES: Mapping[str, frozenset[Operation]] = CATALOG.capabilities
"""Which operations each provider alias can serve at all (config may narrow it further)."""


_ENV = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")


def _resolve_env(value: Any, path: str) -> Any:
    if isinstance(value, str):
        m = _ENV.match(value.strip())
        if m:
            name = m.group(1)
            if name not in os.environ:
                raise ConfigError(f"{path}: environment variable {name} is not set")
            return os.environ[name]
        return value
    if isinstance(value, Mapping):
        return {k: _resolve_env(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


_PATH = re.compile(r"`\$((?:\.[A-Za-z0-9_]+|\[\d+\])*)`")


def _explain(err: msgspec.ValidationError, source: str) -> ConfigError:
    text = str(err)
    m = re.match(r"Object contains unknown field `([^`]+)` - at `\$((?:\.[A-Za-z0-9_]+|\[\d+\])*)`", text)
    if m:
        key = (m.group(2).lstrip(".") + "." + m.group(1)).lstrip(".")
        return ConfigError(f"{source}: unknown key {key}")
    m2 = re.search(r" - at `\$((?:\.[A-Za-z0-9_]+|\[\d+\])*)`", text)
    if m2:
        key = m2.group(1).lstrip(".")
        head = text[: m2.start()]
        return ConfigError(f"{source}: {key}: {head}")
    return ConfigError(f"{source}: {text}")


def config_from_dict(data: Mapping[str, Any], *, source: str = "config") -> Config:
    """Build a :class:`Config` from a plain dict (e.g. AstrBot plugin settings)."""
    resolved = _resolve_env(dict(data), "")
    try:
        config = msgspec.convert(resolved, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise _explain(exc, source) from None
    _check_finite(config, "", source)
    return config


def _check_finite(value: Any, path: str, source: str) -> None:
    """TOML allows ``inf`` and ``nan``; no duration, size or limit here means anything with them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {path}: must be a finite number, not {value}")
    if isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            _check_finite(getattr(value, name), f"{path}.{name}".lstrip("."), source)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{path}.{key}", source)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite(item, f"{path}[{i}]", source)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load config from ``path``, else ``$AIIMG_CONFIG``, else ``./aiimg.toml``, else defaults."""
    chosen: Path | None = None
    if path:
        chosen = Path(path)
        if not chosen.is_file():
            raise ConfigError(f"config file not found: {chosen}")
    elif os.environ.get("AIIMG_CONFIG"):
        chosen = Path(os.environ["AIIMG_CONFIG"])
        if not chosen.is_file():
            raise ConfigError(f"AIIMG_CONFIG points to a missing file: {chosen}")
    elif Path("aiimg.toml").is_file():
        chosen = Path("aiimg.toml")
    if chosen is None:
        return Config()
    try:
        data = tomllib.loads(chosen.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{chosen}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{chosen}: invalid TOML: {exc}") from None
    return config_from_dict(data, source=str(chosen))


_SECRET_KEYS = frozenset({"api_keys", "api_key", "apikey", "cookie_list", "password", "token"})
_USERINFO = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://([^\s/?#@,]+)@")


def _cookie_values(cookie: str) -> Iterator[str]:
    """``a=1; b=2`` → ``1``, ``2`` (upstreams echo a cookie's value without its name)."""
    for part in cookie.split(";"):
        _, eq, value = part.partition("=")
        if eq and len(value.strip()) >= 8:
            yield value.strip()


def _walk(value: Any, key: str = "") -> Iterator[str]:
    if isinstance(value, msgspec.Struct):
        for f in value.__struct_fields__:
            yield from _walk(getattr(value, f), f)
    elif isinstance(value, dict):  # extra_body and other free-form tables
        for k, v in value.items():
            yield from _walk(v, str(k))
    elif key in _SECRET_KEYS:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, str) and item:
                yield item
                if key == "cookie_list" and ":" in item:
                    cookie = item.split(":", 1)[1]
                    yield cookie
                    yield from _cookie_values(cookie)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item, key)
    elif isinstance(value, str) and "@" in value:
        # Credentials in a URL (``nats.url``, ``network.proxy``, a gateway ``base_url``):
        # ``user:password`` and the password alone.
        for userinfo in _USERINFO.findall(value):
            _, colon, password = userinfo.partition(":")
            if colon:
                yield unquote(userinfo)
                yield unquote(password)
            elif len(userinfo) >= 16:  # ``https://<token>@host``; a plain user name is no secret
                yield unquote(userinfo)


def secret_values(config: ConfigBase) -> set[str]:
    """Every secret string in ``config`` (keys, cookies and their values, passwords, URL
    credentials), for log redaction."""
    return {s for s in _walk(config) if len(s) >= 4}
