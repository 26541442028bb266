"""``aiimg status``: each provider's breakers and backlog, read from the bus (no actor is asked).

Everything comes from state the service keeps anyway: the breaker records in the KV bucket
(``health.<provider>.<op>``) and the durable consumers' counters on the server, so the
answer is the same whichever replica of anything is running, and costs a few reads.
"""

from __future__ import annotations

import datetime as dt
import time

import msgspec

from ...messages import Operation, ProviderHealth
from ..domain.config import ConfigBase
from ..domain.health import describe
from ..infra.bus import Bus, ConsumerLoad

__all__ = ("ConsumerStatus", "ProviderStatus", "ServiceStatus", "collect_status", "format_status")

RECENT_WINDOW = 3600.0
"""Failures counted as recent: the last hour."""


class ConsumerStatus(msgspec.Struct, frozen=True, kw_only=True):
    exists: bool
    pending: int = 0
    in_flight: int = 0
    redelivered: int = 0
    pulls_waiting: int = 0


class ProviderStatus(msgspec.Struct, frozen=True, kw_only=True):
    provider: str
    operations: list[Operation]
    """The operations the configuration uses it for."""
    consumer: ConsumerStatus
    breakers: list[ProviderHealth]
    """Its breakers that ever counted a failure (one per operation)."""
    recent_failures: int
    """Counted failures in the last hour, over all its operations."""


class ServiceStatus(msgspec.Struct, frozen=True, kw_only=True):
    at: float
    router: ConsumerStatus
    providers: list[ProviderStatus]


def _consumer(load: ConsumerLoad | None) -> ConsumerStatus:
    if load is None:
        return ConsumerStatus(exists=False)
    return ConsumerStatus(exists=True, **load._asdict())


async def collect_status(bus: Bus, config: ConfigBase) -> ServiceStatus:
    now = time.time()
    health = bus.health()
    providers = []
    for alias, ops in config.capabilities.items():
        used: list[Operation] = [
            op for op in ("draw", "edit", "selfie", "video") if op in ops and config.can_serve(op, alias)
        ]
        breakers = []
        for op in sorted(ops):
            record, _ = await health.read(bus.names.health_key(alias, op))
            if record is not None:
                breakers.append(record)
        if not used and not breakers:
            continue
        recent = sum(1 for b in breakers for t in b.recent if t >= now - RECENT_WINDOW)
        load = await bus.consumer_load(bus.names.provider_consumer(alias))
        providers.append(
            ProviderStatus(
                provider=alias, operations=used, consumer=_consumer(load), breakers=breakers, recent_failures=recent
            )
        )
    router = _consumer(await bus.consumer_load(bus.names.router_consumer))
    return ServiceStatus(at=now, router=router, providers=providers)


def format_status(status: ServiceStatus) -> list[str]:
    """A table for people: one line per provider, then one per breaker that is not closed."""
    lines = [f"router: {_load(status.router)}", ""]
    lines.append(f"{'provider':<16}{'used for':<22}{'breakers':<26}{'failures/1h':>12}  backlog")
    notes: list[str] = []
    for p in status.providers:
        states = [f"{b.op}={b.state}" for b in p.breakers if b.state != "closed"]
        lines.append(
            f"{p.provider:<16}{','.join(p.operations) or '-':<22}{' '.join(states) or 'closed':<26}"
            f"{p.recent_failures:>12}  {_load(p.consumer)}"
        )
        for b in p.breakers:
            if b.state != "closed":
                notes.append(f"  {p.provider} {b.op}: {describe(b)}")
            elif b.failures:
                last = dt.datetime.fromtimestamp(b.at, dt.UTC).strftime("%H:%M:%S UTC")
                notes.append(f"  {p.provider} {b.op}: closed, {b.failures} × {b.reason} in a row (last {last})")
    if notes:
        lines += ["", "breakers:", *notes]
    return lines


def _load(c: ConsumerStatus) -> str:
    if not c.exists:
        return "no consumer (never started)"
    idle = f", {c.pulls_waiting} idle pulls" if c.pulls_waiting else ", no actor pulling"
    return f"{c.in_flight} in flight, {c.pending} queued{idle}"
