"""What the actors need from the bus, as protocols: the NATS bus and the in-memory bus both fit.

The router and the provider actor are written against :class:`JobBus` only, so the same
actor code runs on JetStream (:class:`services.infra.bus.Bus`) and on the in-memory job log
(:class:`services.infra.memory.MemoryBus`), and the contract tests
(``tests/contracts/``) run every behaviour over both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from anyio.abc import TaskStatus

from ...messages import BlobRef, Event, Names, ProviderHealth
from ..domain.config import ConfigBase as Config
from ..infra.bus import JobLog
from ..infra.delivery import Delivery
from ..infra.media import MediaInfo

__all__ = ("BlobPort", "Closeable", "ConsumerRunner", "Handler", "HealthPort", "JobBus")

Handler = Callable[[Delivery], Awaitable[None]]


class Closeable(Protocol):
    async def close(self) -> None: ...


class ConsumerRunner(Protocol):
    """A running durable consumer: :meth:`run` until :meth:`stop` (graceful: running handlers finish)."""

    async def run(self, *, task_status: TaskStatus[None] = ...) -> None: ...

    async def stop(self) -> None: ...


class BlobPort(Protocol):
    """Image and video bytes by content: put once, get by reference (checked against it)."""

    max_bytes: int

    async def get(self, ref: BlobRef) -> bytes: ...

    async def put(self, data: bytes, info: MediaInfo | None = None) -> BlobRef: ...


class HealthPort(Protocol):
    """Circuit-breaker records by key (``health.<provider>.<op>``), written compare-and-set."""

    async def read(self, key: str) -> tuple[ProviderHealth | None, int]: ...

    async def write(self, key: str, health: ProviderHealth, revision: int) -> int | None: ...

    async def on_change(self, callback: Callable[[str], Awaitable[None]]) -> Closeable: ...


class JobBus(Protocol):
    """The job stream, its consumers, blobs and terminal-event notices."""

    @property
    def config(self) -> Config: ...

    @property
    def names(self) -> Names: ...

    async def publish(self, event: Event, *, client: str = "") -> int: ...

    async def publish_checked(
        self, event: Event, *, client: str = "", expect_last: int | None = None, msg_id: str = ""
    ) -> tuple[int, bool]: ...

    async def read_job(self, job_id: str, *, after: int = 0) -> JobLog: ...

    async def first_seq(self, job_id: str) -> int: ...

    async def check_consumers(self, *, repair: bool) -> dict[str, list[str]]: ...

    def consumer(self, durable: str, handler: Handler, *, concurrency: int, name: str = "") -> ConsumerRunner: ...

    async def on_done(self, callback: Callable[[str], Awaitable[None]]) -> Closeable: ...

    def blob_store(self, bucket: str | None = None, *, purge: bool = True) -> BlobPort: ...

    def health(self) -> HealthPort: ...
