"""The provider seam: what one upstream module implements, and what it gets for an attempt.

A provider turns one attempt into bytes or raises :class:`~services.domain.errors.ProviderFailure`
with a typed reason. Everything else — pulling work, heartbeats, deadlines, loading input
blobs, validating and storing the result, writing the attempt event, redelivery checks —
is done once, by :class:`services.actors.provider.ProviderActor`.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import ClassVar

import httpx

from ...messages import AttemptDispatched, Operation
from ..domain.config import ConfigBase
from ..domain.settings import ProviderSettings
from ..infra.http import DownloadClient
from ..infra.media import MediaInfo

__all__ = ("AttemptContext", "InputImage", "Output", "Provider")


@dataclass(frozen=True, slots=True)
class InputImage:
    data: bytes
    mime: str


@dataclass(slots=True)
class AttemptContext:
    """What a provider gets for one attempt."""

    dispatch: AttemptDispatched
    settings: ProviderSettings
    """The ``draw.<alias>`` / ``edit.<alias>`` / ``video`` block for this operation."""
    config: ConfigBase
    inputs: list[InputImage]
    http: httpx.AsyncClient
    """For the upstream's API (its configured base URL, which may be a LAN gateway)."""
    downloads: DownloadClient
    """For URLs the upstream's replies name (``_common.download``): public addresses only,
    unless ``network.allow_private_downloads``."""
    deadline: float
    """Monotonic-clock deadline for the whole attempt."""

    @property
    def op(self) -> Operation:
        return self.dispatch.op

    @property
    def prompt(self) -> str:
        return self.dispatch.prompt

    @property
    def output(self) -> str:
        return self.dispatch.output

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


@dataclass(slots=True)
class Output:
    """A provider's result: the bytes, and the URL the upstream served them from (if any)."""

    data: bytes
    source_url: str = ""
    info: MediaInfo | None = field(default=None)
    """What the provider believes it made. A hint only: the actor checks every result itself."""


class Provider(abc.ABC):
    """One upstream API. Subclasses implement :meth:`run` and declare their catalog entry.

    A class defined in a module of this package that sets ``alias`` in its own body is a
    provider: the catalog (``catalog.py``) finds it there, and from these declarations builds
    the capabilities table, the registry and the typed ``draw.<alias>`` / ``edit.<alias>`` /
    ``video`` blocks of the config. Nothing else needs to name it.
    """

    alias: ClassVar[str]
    """The provider's name: its config block (``draw.<alias>``), subject token, consumer and NATS user."""
    operations: ClassVar[frozenset[Operation]]
    """What it can serve at all: ``draw`` gives it a ``draw.<alias>`` block, ``edit`` / ``selfie`` an
    ``edit.<alias>`` block (selfies use the edit block); ``video`` (alone) makes its settings the ``video`` block."""
    settings_type: ClassVar[type[ProviderSettings]]
    """Its settings block: a :class:`ProviderSettings` (a ``VideoSection`` for ``video``), declared in its module."""
    short_names: ClassVar[tuple[str, ...]] = ()
    """Names users may type for it (``gemini`` for ``gemini_native``), for each operation it serves."""
    menu_order: ClassVar[int] = 1000
    """Where the alias sits in provider lists (capabilities, the settings page's menus); ties go by alias."""
    block_order: ClassVar[int] = 1000
    """Where its block sits in ``draw`` / ``edit`` on the settings page; ties go by alias."""
    produces_video: ClassVar[bool] = False

    def __init__(self, config: ConfigBase) -> None:
        self.config = config

    @abc.abstractmethod
    async def run(self, ctx: AttemptContext) -> Output:
        """Produce the result for ``ctx`` or raise ``ProviderFailure``."""

    async def aclose(self) -> None:
        """Release resources (keys state, pools). Called once at shutdown."""
