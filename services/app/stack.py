"""Running aiimg: a NATS connection (embedded or external) plus the router and provider actors.

``Stack`` is used by ``aiimg serve``, by client commands that run an embedded stack
for their own duration, by the AstrBot bridge, and by tests.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio
import structlog
from nats.micro.service import Service

from ..actors.ports import JobBus
from ..actors.provider import ProviderActor
from ..actors.router import Router
from ..config import Config, secret_values
from ..infra.bus import Bus, connect
from ..infra.embedded import Credentials, EmbeddedServer, write_private
from ..infra.logging import REDACTOR, ensure_logging
from ..providers.base import Provider
from ..providers.catalog import providers_for
from .micro import register_services, stop_service

__all__ = ("Endpoint", "Stack", "open_bus", "running", "running_embedded", "running_embedded_url")

log = structlog.get_logger("aiimg.stack")


class _Actor(Protocol):
    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = ...) -> None: ...
    async def stop(self) -> None: ...


def _serve_file(config: Config) -> Path:
    return config.data_path() / "nats" / "serve.json"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where an embedded server of this data dir listens, and the credentials it takes."""

    url: str
    credentials: Credentials | None = None


def running_embedded(config: Config) -> Endpoint | None:
    """The embedded server that ``aiimg serve`` runs for this data dir, if any.

    ``serve.json`` (mode 0600) holds its URL and credentials: whoever may read the data
    dir may use the service, nobody else.
    """
    path = _serve_file(config)
    try:
        info = json.loads(path.read_text())
        pid = int(info["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    url = info.get("url")
    if not isinstance(url, str):
        return None
    user, password = info.get("user"), info.get("password")
    creds = Credentials(user, password) if isinstance(user, str) and isinstance(password, str) else None
    return Endpoint(url, creds)


def running_embedded_url(config: Config) -> str | None:
    """The URL of an embedded server that ``aiimg serve`` is running for this data dir, if any."""
    found = running_embedded(config)
    return found.url if found else None


@contextlib.asynccontextmanager
async def open_bus(config: Config, *, announce: bool = False) -> AsyncIterator[Bus]:
    """Connect to ``nats.url``; if empty, to a running embedded ``serve``; else start one here."""
    REDACTOR.register(secret_values(config))
    ensure_logging(config.log.level, config.log.format)  # an embedding host (AstrBot) configured none
    server: EmbeddedServer | None = None
    endpoint = Endpoint(config.nats.url) if config.nats.url else running_embedded(config)
    if endpoint is None:
        server = EmbeddedServer(config.data_path() / "nats", auth=True)
        url = await anyio.to_thread.run_sync(server.start)
        endpoint = Endpoint(url, server.credentials)
        log.info("embedded_nats_started", url=url, store=str(server.store_dir))
        if announce:
            info = {"url": url, "pid": os.getpid()}
            if server.credentials is not None:
                info |= {"user": server.credentials.user, "password": server.credentials.password}
            write_private(_serve_file(config), json.dumps(info))
    if endpoint.credentials is not None:
        REDACTOR.register([endpoint.credentials.password])
    try:
        bus = await connect(config, endpoint.url, credentials=endpoint.credentials)
        bus.embedded_here = server is not None
        try:
            await bus.ensure_layout()
            yield bus
        finally:
            await bus.close()
    finally:
        if server is not None:
            if announce:
                _serve_file(config).unlink(missing_ok=True)
            server.stop()


class Stack:
    """Router and/or provider actors on one bus, in one task group."""

    def __init__(self, bus: JobBus, *, router: bool = True, providers: Sequence[Provider] | None = None) -> None:
        self.bus = bus
        self.actors: list[_Actor] = []
        if router:
            self.router: Router | None = Router(bus)
            self.actors.append(self.router)
        else:
            self.router = None
        provs = list(providers) if providers is not None else providers_for(bus.config)
        self.providers = [ProviderActor(bus, p) for p in provs]
        self.actors.extend(self.providers)

    @classmethod
    def from_only(cls, bus: JobBus, only: Sequence[str] | None) -> Stack:
        """``--only router,local``: the router if named (or nothing named), and the named providers."""
        if not only:
            return cls(bus)
        names = [n.strip() for n in only if n.strip()]
        provs = (
            providers_for(bus.config, [n for n in names if n != "router"]) if any(n != "router" for n in names) else []
        )
        return cls(bus, router="router" in names, providers=provs)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        services: list[Service] = []
        try:
            async with anyio.create_task_group() as tg:
                for actor in self.actors:
                    await tg.start(actor.run)
                if isinstance(self.bus, Bus):  # discoverable the NATS way (nats micro ls)
                    services = await register_services(self.bus, self.router, self.providers)
                log.info(
                    "stack_ready",
                    router=self.router is not None,
                    providers=[p.alias for p in self.providers],
                )
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                for service in services:
                    await stop_service(service)

    async def stop(self) -> None:
        async with anyio.create_task_group() as tg:
            for actor in self.actors:
                tg.start_soon(actor.stop)


@contextlib.asynccontextmanager
async def running(stack: Stack) -> AsyncIterator[Stack]:
    """Run ``stack`` in the background for the duration of the block, then stop it gracefully."""
    async with anyio.create_task_group() as tg:
        await tg.start(stack.run)
        try:
            yield stack
        finally:
            with anyio.CancelScope(shield=True):
                await stack.stop()
