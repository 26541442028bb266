"""The contract tests run every behaviour twice: on the in-memory bus and on a real nats-server.

``job_bus`` is parametrized (``memory`` / ``nats``): the same router and provider actor code
(``services.actors``) must behave alike on both, so a change that only works on one of
them fails here — and the in-memory bus stays a faithful stand-in for quick tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiimg.messages import JobEvent, TerminalEvent
from aiimg.services.actors.ports import JobBus
from aiimg.services.config import Config
from aiimg.services.infra.bus import connect
from aiimg.services.infra.memory import MemoryBus

from ..conftest import make_config

TERMINAL = ("job.completed.v1", "job.failed.v1", "job.cancelled.v1", "job.rejected.v1")

Configure = Callable[..., Config]


@pytest.fixture(name="configure")
def _configure(nats_url: str, tmp_path: Path) -> Configure:
    """A config on a fresh prefix, with quick timers; keyword arguments merge in as nested dicts."""

    def build(**overrides: Any) -> Config:
        base: dict[str, Any] = {
            "actors": {"ack_wait": 2.0},
            "policy": {"timeout_grace": 0.5, "backoff": 0.2, "max_backoff": 1.0},
        }
        for key, value in overrides.items():
            base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
        return make_config(nats_url, tmp_path, **base)

    return build


@pytest.fixture(params=["memory", "nats"])
def bus_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class BusFactory:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._open: list[Any] = []

    async def __call__(self, config: Config) -> JobBus:
        if self.kind == "memory":
            bus: Any = MemoryBus(config)
        else:
            bus = await connect(config)
            await bus.ensure_layout()
        self._open.append(bus)
        return bus  # type: ignore[no-any-return]

    async def close(self) -> None:
        for bus in self._open:
            await bus.close()


@pytest.fixture(name="make_bus")
async def _make_bus(bus_kind: str) -> AsyncIterator[BusFactory]:
    factory = BusFactory(bus_kind)
    yield factory
    await factory.close()


async def events(bus: JobBus, job_id: str) -> list[JobEvent]:
    return [e.event for e in (await bus.read_job(job_id)).entries]


async def terminal(bus: JobBus, job_id: str, timeout: float = 30.0) -> TerminalEvent:
    """The job's first terminal event, read back from the job log (works on both buses)."""
    with anyio.fail_after(timeout):
        while True:
            for event in await events(bus, job_id):
                if event.__struct_config__.tag in TERMINAL:
                    return event  # type: ignore[return-value]
            await anyio.sleep(0.02)
