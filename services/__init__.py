"""aiimg services: the router and provider actors, their runtime, config and clients.

The names below are the public API; everything else is reached through its module
(``aiimg.services.infra.bus`` …) and may change. They are imported on first use, so
``import aiimg.services.domain.config`` (the AstrBot settings page, the CLI's ``--help``)
does not load NATS, HTTP clients and Pillow.

* configuration: :class:`Config`, :func:`load_config`, :func:`config_from_dict`;
* connecting and running: :func:`open_bus` (the configured NATS, or an embedded server),
  :func:`connect`, :class:`Bus`, :class:`MemoryBus` (in memory, for tests),
  :class:`Stack` and :func:`running` (router and provider actors);
* submitting: :class:`Client`, :func:`new_job_id`; selfies: :class:`ReferenceStore`,
  :class:`ReferenceSet`, :func:`submit_selfie`;
* writing a provider: :class:`Provider`, :class:`AttemptContext`, :class:`Output`,
  :class:`InputImage`, :class:`ProviderFailure`;
* the error tree, rooted at :class:`AiimgError`.

The wire contract (events, subjects, blob references) is ``aiimg.messages``.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

if _typing.TYPE_CHECKING:
    from .app.client import Client as Client
    from .app.client import new_job_id as new_job_id
    from .app.selfie import ReferenceSet as ReferenceSet
    from .app.selfie import ReferenceStore as ReferenceStore
    from .app.selfie import submit_selfie as submit_selfie
    from .app.stack import Stack as Stack
    from .app.stack import open_bus as open_bus
    from .app.stack import running as running
    from .config import Config as Config
    from .config import config_from_dict as config_from_dict
    from .config import load_config as load_config
    from .domain.errors import AddressRefused as AddressRefused
    from .domain.errors import AiimgError as AiimgError
    from .domain.errors import BadEncoding as BadEncoding
    from .domain.errors import BlobError as BlobError
    from .domain.errors import BusError as BusError
    from .domain.errors import ConfigError as ConfigError
    from .domain.errors import EmbeddedServerError as EmbeddedServerError
    from .domain.errors import HostUnresolved as HostUnresolved
    from .domain.errors import JobError as JobError
    from .domain.errors import MediaError as MediaError
    from .domain.errors import ProviderFailure as ProviderFailure
    from .domain.errors import ResponseTooLarge as ResponseTooLarge
    from .domain.errors import SelfieError as SelfieError
    from .domain.errors import StaleView as StaleView
    from .domain.errors import UpstreamResponseError as UpstreamResponseError
    from .infra.bus import Bus as Bus
    from .infra.bus import connect as connect
    from .infra.memory import MemoryBus as MemoryBus
    from .providers.base import AttemptContext as AttemptContext
    from .providers.base import InputImage as InputImage
    from .providers.base import Output as Output
    from .providers.base import Provider as Provider

from .domain import errors as _errors  # the error tree is plain classes: cheap to import now

_ERRORS = tuple(
    name
    for name in _errors.__all__
    if isinstance(getattr(_errors, name), type) and issubclass(getattr(_errors, name), BaseException)
)
"""Every exception of the error tree (``services.domain.errors.__all__``; type aliases left out)."""

_WHERE: dict[str, str] = {
    "Client": ".app.client",
    "new_job_id": ".app.client",
    "ReferenceSet": ".app.selfie",
    "ReferenceStore": ".app.selfie",
    "submit_selfie": ".app.selfie",
    "Stack": ".app.stack",
    "open_bus": ".app.stack",
    "running": ".app.stack",
    "Config": ".config",
    "config_from_dict": ".config",
    "load_config": ".config",
    "Bus": ".infra.bus",
    "connect": ".infra.bus",
    "MemoryBus": ".infra.memory",
    "AttemptContext": ".providers.base",
    "InputImage": ".providers.base",
    "Output": ".providers.base",
    "Provider": ".providers.base",
    **dict.fromkeys(_ERRORS, ".domain.errors"),
}
"""Where each public name lives (imported on first use)."""

__all__ = (
    "AddressRefused",
    "AiimgError",
    "AttemptContext",
    "BadEncoding",
    "BlobError",
    "Bus",
    "BusError",
    "Client",
    "Config",
    "ConfigError",
    "EmbeddedServerError",
    "HostUnresolved",
    "InputImage",
    "JobError",
    "MediaError",
    "MemoryBus",
    "Output",
    "Provider",
    "ProviderFailure",
    "ReferenceSet",
    "ReferenceStore",
    "ResponseTooLarge",
    "SelfieError",
    "Stack",
    "StaleView",
    "UpstreamResponseError",
    "__version__",
    "config_from_dict",
    "connect",
    "load_config",
    "new_job_id",
    "open_bus",
    "running",
    "submit_selfie",
)


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
