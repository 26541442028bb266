"""The plugin's connection to aiimg: an embedded stack, or a bridge to an external deployment.

``nats.url`` empty: a private nats-server, the router and the enabled provider actors run
inside AstrBot's process (``services.stack``), configured from the plugin's settings.
``nats.url`` set: only a client connection; an ``aiimg serve`` elsewhere does the work.
Either way the rest of the plugin sees the same :class:`~services.app.client.Client`.

The bus lives in one background asyncio task for the plugin's lifetime, because
``open_bus`` and ``running`` are context managers that must be entered and left in the
same task. That task also runs the client's results consumer (``deliver-<client>``), whose
messages go to ``on_result`` (the bridge's deliverer) until the runtime stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import anyio
import structlog

from ..messages import JobRequested, Operation
from ..services.app.client import Client
from ..services.app.selfie import ReferenceStore
from ..services.app.stack import Stack, open_bus, running
from ..services.config import Config
from ..services.domain.errors import AiimgError, EmbeddedServerError
from ..services.domain.routing import plan_chain
from ..services.infra.bus import Bus
from ..services.infra.embedded import find_nats_server
from ..services.infra.http import DownloadClient, download_client
from ..services.infra.pull import Handler

__all__ = ("DELIVER_CONCURRENCY", "DELIVER_DRAIN", "BusRuntime", "wait_budget")

log = structlog.get_logger("aiimg.bridge.runtime")

DELIVER_CONCURRENCY = 8
"""Results delivered to chats at once."""

DELIVER_DRAIN = 10.0
"""Seconds a stopping plugin lets deliveries in progress finish; the rest come back next start."""


def wait_budget(config: Config, op: Operation, backend: str = "") -> float:
    """Seconds a job may reasonably take: every planned attempt at its full timeout, plus slack.

    Derived from the same chain the router plans, so the bridge gives up only after the
    router would have (then it cancels the job and says so).
    """
    plan = plan_chain(config, JobRequested(job_id="budget", op=op, backend=backend))
    pol = config.policy
    total = 0.0
    for alias in plan.chain or ["?"]:
        block = config.block(op, alias)
        timeout = block.timeout if block is not None else 120.0
        if op in ("edit", "selfie"):
            retries = max(0, config.edit.fallback.max_retries)
        else:
            retries = max(0, block.max_retries) if block is not None else 0
        total += (timeout + pol.timeout_grace) * (retries + 1) + pol.max_backoff * retries
    return total + 30.0


def _point_at_bundled_nats_server(site_packages: Path | None) -> None:
    """AstrBot's desktop build pip-installs into ``data/site-packages``: find the binary there."""
    if os.environ.get("AIIMG_NATS_SERVER"):
        return
    with contextlib.suppress(EmbeddedServerError):
        find_nats_server()
        return
    if site_packages is not None:
        candidate = site_packages / "bin" / "nats-server"
        if candidate.is_file():
            os.environ["AIIMG_NATS_SERVER"] = str(candidate)


class BusRuntime:
    """Owns the bus for the plugin: start once, use ``client`` / ``refs``, stop on unload."""

    def __init__(self, config: Config, *, site_packages: Path | None = None, on_result: Handler | None = None) -> None:
        self.config = config
        self.on_result = on_result
        """Gets every message of this client's results consumer; without one, none is read."""
        self.embedded = not config.nats.url.strip()
        self.site_packages = site_packages
        self.bus: Bus | None = None
        self.client: Client | None = None
        self.refs: ReferenceStore | None = None
        self.http: DownloadClient | None = None
        self.error = ""
        """Why the last start failed (short, for the chat)."""
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._task is not None and not self._task.done()

    async def start(self, timeout: float = 60.0) -> bool:
        """Connect (and, embedded, start the stack); True when usable. Safe to call again after a failure."""
        async with self._lock:
            if self.ready:
                return True
            self._ready = asyncio.Event()
            self._stop = asyncio.Event()
            self.error = ""
            if self.embedded:
                _point_at_bundled_nats_server(self.site_packages)
            self._task = asyncio.create_task(self._serve(), name="aiimg-bus")
            ready = asyncio.create_task(self._ready.wait())
            try:
                await asyncio.wait({ready, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ready.cancel()
            if self._ready.is_set():
                return True
            if not self._task.done():
                self.error = f"starting took longer than {timeout:.0f}s"
                self._task.cancel()
            return False

    async def _serve(self) -> None:
        try:
            async with open_bus(self.config) as bus:
                self.bus = bus
                self.client = Client(bus)
                self.refs = ReferenceStore(bus)
                # Chat images and avatars: URLs from chat messages, so only public addresses.
                async with download_client(self.config, 8) as http:
                    self.http = http
                    if self.embedded:
                        async with running(Stack(bus)):
                            await self._deliver_until_stopped(bus)
                    else:
                        await self._deliver_until_stopped(bus)
        except AiimgError as exc:
            self.error = str(exc)
        except Exception as exc:  # nats-py and the OS raise many unrelated types here
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.bus = self.client = self.refs = None
            self.http = None
            self._ready.clear()

    async def _deliver_until_stopped(self, bus: Bus) -> None:
        """Ready: read this client's results (if anyone takes them) until :meth:`stop`."""
        if self.on_result is None:
            self._ready.set()
            await self._stop.wait()
            return
        durable = await bus.ensure_results_consumer(self.config.nats.client())
        consumer = bus.consumer(durable, self.on_result, concurrency=DELIVER_CONCURRENCY, name="deliver")
        consumer.drain_timeout = DELIVER_DRAIN
        async with anyio.create_task_group() as tg:
            await tg.start(consumer.run)
            self._ready.set()
            await self._stop.wait()
            await consumer.stop()

    async def stop(self, timeout: float = 30.0) -> None:
        task = self._task
        if task is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
            # It ends cancelled (what we asked for); _serve keeps any other failure in self.error.
            (outcome,) = await asyncio.gather(task, return_exceptions=True)
            if isinstance(outcome, Exception):
                log.warning("bus_task_failed", error=f"{type(outcome).__name__}: {outcome}")
        self._task = None
