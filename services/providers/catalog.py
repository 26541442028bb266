"""The provider catalog: every provider class of this package, and what is built from them.

A provider lives in one module of this package: a :class:`~.base.Provider` subclass that sets
``alias`` in its own body, with its ``operations``, its ``settings_type`` (declared next to
it) and optionally ``short_names`` and its place in lists (``menu_order``, ``block_order``).
:meth:`Catalog.discover` imports every public module of the package (relative to the package,
whatever its parent is called: ``aiimg``, or the AstrBot plugin's package) and collects those
classes. From them come

* the capabilities table and the short names (``Config.capabilities``, ``Config.short_names``,
  read by the router, the bus layout, the settings page and ``deploy/permissions.py``);
* the registry behind :func:`load_provider` / :func:`providers_for`;
* the typed, strict ``Config`` (:attr:`Catalog.config_type`): :class:`ConfigBase` with a
  ``draw.<alias>`` block for each provider that draws, an ``edit.<alias>`` block for each that
  edits, and the ``video`` block typed by the video provider's settings.

So adding a provider is adding a module here (and its test); nothing else names it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import pkgutil
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import Any, TypeVar, get_args

import msgspec

from ...messages import Operation
from ..domain.config import ConfigBase, DrawSection, EditSection, Section
from ..domain.errors import ConfigError
from ..domain.settings import ProviderSettings, VideoSection
from .base import Provider

__all__ = ("CATALOG", "Catalog", "Entry", "load_provider", "providers_for")

_S = TypeVar("_S", bound=msgspec.Struct)
_OPERATIONS: frozenset[str] = frozenset(get_args(Operation))
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
"""An alias or short name: a config key, a subject token and part of a NATS user name."""

# Imported by every provider process: silence the request-URL loggers even when the
# host (AstrBot, a test runner) configured stdlib logging at INFO.
for _noisy in ("httpx", "httpcore"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


@dataclass(frozen=True, slots=True)
class Entry:
    """One provider alias and the class that serves it."""

    alias: str
    provider: type[Provider]
    operations: frozenset[Operation]
    settings: type[ProviderSettings]

    @property
    def where(self) -> str:
        return f"{self.provider.__module__}.{self.provider.__qualname__}"


class Catalog:
    """The providers, checked against each other, in their menu order."""

    def __init__(self, providers: Iterable[type[Provider]]) -> None:
        entries = [_entry(cls) for cls in providers]
        by_alias: dict[str, Entry] = {}
        for entry in entries:
            other = by_alias.get(entry.alias)
            if other is not None:
                raise ConfigError(f"provider alias {entry.alias!r} is declared by {other.where} and {entry.where}")
            by_alias[entry.alias] = entry
        ordered = sorted(entries, key=lambda e: (e.provider.menu_order, e.alias))
        self.entries: tuple[Entry, ...] = tuple(ordered)
        self._by_alias: Mapping[str, Entry] = MappingProxyType({e.alias: e for e in ordered})
        self.capabilities: Mapping[str, frozenset[Operation]] = MappingProxyType(
            {e.alias: e.operations for e in ordered}
        )
        """Alias → the operations it can serve, in menu order."""
        self.short_names: Mapping[str, Mapping[str, str]] = MappingProxyType(
            {"draw": _short_names(ordered, "draw"), "edit": _short_names(ordered, "edit")}
        )
        """``draw`` / ``edit`` table → short name → alias (``edit`` serves every operation but ``draw``)."""
        self._video_settings = _video_settings(ordered)

    @classmethod
    def discover(cls, package: ModuleType | None = None) -> Catalog:
        """Every provider class defined in a public module of ``package`` (default: this package)."""
        package = package if package is not None else importlib.import_module(__package__ or "")
        found: list[type[Provider]] = []
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if info.name.startswith("_") or f"{package.__name__}.{info.name}" == __name__:
                continue
            module = importlib.import_module(f".{info.name}", package.__name__)
            found.extend(
                obj
                for obj in vars(module).values()
                if inspect.isclass(obj)
                and issubclass(obj, Provider)
                and obj.__module__ == module.__name__
                and "alias" in vars(obj)
            )
        return cls(found)

    # ---- the registry ------------------------------------------------------------------

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(self._by_alias)

    def provider_class(self, alias: str) -> type[Provider]:
        entry = self._by_alias.get(alias)
        if entry is None:
            known = ", ".join(sorted(self._by_alias))
            raise ConfigError(f"no provider implementation for {alias!r} (known: {known})")
        return entry.provider

    def load_provider(self, alias: str, config: ConfigBase) -> Provider:
        return self.provider_class(alias)(config)

    def providers_for(self, config: ConfigBase, only: Sequence[str] | None = None) -> list[Provider]:
        """Instantiate the provider classes for ``only`` (default: every enabled alias)."""
        aliases = list(only) if only else config.enabled_providers()
        return [self.load_provider(alias, config) for alias in aliases]

    # ---- the typed config --------------------------------------------------------------

    @functools.cached_property
    def config_type(self) -> type[ConfigBase]:
        """:class:`ConfigBase` with every provider's blocks, typed by its settings, and this catalog's tables."""
        draw = self._section("DrawConfig", DrawSection, ("draw",))
        edit = self._section("EditConfig", EditSection, ("edit", "selfie"))
        video = self._video_settings
        fields = [
            ("draw", draw, msgspec.field(default_factory=draw)),
            ("edit", edit, msgspec.field(default_factory=edit)),
            ("video", video, msgspec.field(default_factory=video)),
        ]
        namespace = {"capabilities": self.capabilities, "short_names": self.short_names}
        return _defstruct("Config", fields, ConfigBase, namespace)

    def _section(self, name: str, base: type[Section], ops: tuple[Operation, ...]) -> type[Section]:
        """``base`` plus a block for each provider that serves one of ``ops``, in block order."""
        served = [e for e in self.entries if any(op in e.operations for op in ops)]
        served.sort(key=lambda e: (e.provider.block_order, e.alias))
        fields = [(e.alias, e.settings, msgspec.field(default_factory=e.settings)) for e in served]
        return _defstruct(name, fields, base, {})


def _defstruct(name: str, fields: list[tuple[str, Any, Any]], base: type[_S], namespace: dict[str, Any]) -> type[_S]:
    """A strict, keyword-only subclass of ``base`` with ``fields`` (a redefined field keeps its place)."""
    made = msgspec.defstruct(
        name,
        fields,
        bases=(base,),
        namespace=namespace,
        module=__name__,
        kw_only=True,
        forbid_unknown_fields=True,
    )
    assert issubclass(made, base)
    return made


def _entry(cls: type[Provider]) -> Entry:
    """Check one provider class's declarations; the error names the class and what is wrong."""
    where = f"{cls.__module__}.{cls.__qualname__}"
    alias = vars(cls).get("alias")
    if not isinstance(alias, str) or not _NAME.match(alias):
        raise ConfigError(f"{where}: alias must be a lower-case name ([a-z][a-z0-9_]*, ≤ 32), not {alias!r}")
    if inspect.isabstract(cls):
        raise ConfigError(f"{where}: provider {alias!r} does not implement run()")
    ops = getattr(cls, "operations", None)
    if not isinstance(ops, frozenset) or not ops or not ops <= _OPERATIONS:
        raise ConfigError(f"{where}: operations must be a non-empty frozenset of {sorted(_OPERATIONS)}, not {ops!r}")
    settings = getattr(cls, "settings_type", None)
    if not (inspect.isclass(settings) and issubclass(settings, ProviderSettings)):
        raise ConfigError(f"{where}: settings_type must be a ProviderSettings subclass, not {settings!r}")
    if "video" in ops and ops != {"video"}:
        raise ConfigError(f"{where}: a video provider serves only 'video' (its settings are the video block)")
    if "video" in ops and not issubclass(settings, VideoSection):
        raise ConfigError(f"{where}: a video provider's settings_type must be a VideoSection subclass")
    if "video" not in ops and issubclass(settings, VideoSection):
        raise ConfigError(f"{where}: settings_type is a VideoSection, the video block, but {alias!r} makes no video")
    section_keys = set(DrawSection.__struct_fields__) | set(EditSection.__struct_fields__)
    if alias in section_keys:
        raise ConfigError(f"{where}: alias {alias!r} is a key of draw/edit itself")
    for short in cls.short_names:
        if not isinstance(short, str) or not _NAME.match(short):
            raise ConfigError(f"{where}: short name {short!r} is not a lower-case name")
    return Entry(alias=alias, provider=cls, operations=ops, settings=settings)


def _short_names(entries: Sequence[Entry], table: str) -> Mapping[str, str]:
    """The ``draw`` table (providers that draw) or the ``edit`` table (providers that edit)."""
    serving = {e.alias for e in entries if table in e.operations}
    out: dict[str, str] = {}
    for entry in entries:
        if table not in entry.operations:
            continue
        for short in entry.provider.short_names:
            if short in serving:
                raise ConfigError(f"{entry.where}: short name {short!r} would hide the provider {short!r}")
            if short in out and out[short] != entry.alias:
                raise ConfigError(f"{entry.where}: short name {short!r} is already {out[short]!r}'s for {table}")
            out[short] = entry.alias
    return MappingProxyType(out)


def _video_settings(entries: Sequence[Entry]) -> type[VideoSection]:
    """The ``video`` block's type: the video providers' settings (they share the one block)."""
    kinds = {e.settings for e in entries if "video" in e.operations}
    if len(kinds) > 1:
        names = ", ".join(sorted(e.where for e in entries if "video" in e.operations))
        raise ConfigError(f"the video providers share the one video block, but declare different settings: {names}")
    settings = next(iter(kinds), VideoSection)
    assert issubclass(settings, VideoSection)
    return settings


CATALOG = Catalog.discover()
"""The providers of this package."""


def load_provider(alias: str, config: ConfigBase) -> Provider:
    return CATALOG.load_provider(alias, config)


def providers_for(config: ConfigBase, only: Sequence[str] | None = None) -> list[Provider]:
    """Instantiate the provider classes for ``only`` (default: every enabled alias)."""
    return CATALOG.providers_for(config, only)
