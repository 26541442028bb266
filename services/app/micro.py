"""The actors as NATS micro services: ``nats micro ls / info / stats`` show aiimg.

Each actor of a :class:`~services.app.stack.Stack` on NATS registers one service (nats-py
``nats.micro``): ``aiimg-router`` and ``aiimg-<provider>`` (the prefix, dashed), version
:data:`services.__version__`, answering ``$SRV.PING|INFO|STATS[.<name>[.<id>]]``. Their work
arrives through JetStream consumers, not requests, so each has one request endpoint,
``status`` (``<prefix>.svc.<actor>.status``), answering what ``nats micro stats`` also carries
in its ``data``: jobs or attempts running, and counts since the process started.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog
from nats.errors import Error as NatsError
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service, ServiceConfig

from .. import __version__
from ..actors.provider import ProviderActor
from ..actors.router import Router
from ..infra.bus import Bus

__all__ = ("provider_stats", "register_services", "router_stats", "stop_service")

log = structlog.get_logger("aiimg.micro")


def router_stats(router: Router) -> dict[str, Any]:
    now = time.time()
    open_ = sorted(
        f"{provider}.{op}"
        for provider, ops in router.config.capabilities.items()
        for op in ops
        if (h := router.health.record(provider, op)) is not None and h.state != "closed" and h.until > now
    )
    return {"jobs_running": len(router.admission), "handled": dict(router.counts), "breakers_open": open_}


def provider_stats(actor: ProviderActor) -> dict[str, Any]:
    return {
        "provider": actor.alias,
        "attempts_running": len(actor.heartbeats),
        "concurrency": actor.concurrency,
        "finished": dict(actor.counts),
    }


async def _service(bus: Bus, actor: str, description: str, stats: Callable[[], dict[str, Any]]) -> Service:
    names = bus.names
    service = await add_service(
        bus.nc,
        ServiceConfig(
            name=names.service_name(actor),
            version=__version__,
            description=description,
            metadata={"prefix": names.prefix, "actor": actor},
            stats_handler=lambda _endpoint: stats(),  # one endpoint: the actor's stats are its data
        ),
    )

    async def status(request: Request) -> None:
        await request.respond(msgspec.json.encode(stats()))

    await service.add_endpoint(name="status", subject=names.service_subject(actor), handler=status)
    return service


async def register_services(bus: Bus, router: Router | None, providers: list[ProviderActor]) -> list[Service]:
    """One micro service per actor on ``bus``; stop them with :func:`Service.stop` on the way out."""
    services = []
    if router is not None:
        services.append(
            await _service(
                bus, "router", "aiimg router: plans jobs, escalates on failures", lambda: router_stats(router)
            )
        )
    for actor in providers:
        services.append(
            await _service(
                bus, actor.alias, f"aiimg provider actor for {actor.alias}", functools.partial(provider_stats, actor)
            )
        )
    log.info("micro_services_registered", services=[s.info().name for s in services])
    return services


async def stop_service(service: Service) -> None:
    """Unregister ``service``; a connection already closed took its subscriptions along (logged)."""
    try:
        await service.stop()
    except NatsError as exc:
        log.debug("micro_service_stop_skipped", error=type(exc).__name__)
