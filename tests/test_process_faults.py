"""Real processes, real kills: actors run as `aiimg serve --only …` and are SIGKILLed mid-job."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from aiimg.messages import AttemptDispatched, AttemptSucceeded, JobCompleted
from aiimg.services.app.client import Client
from aiimg.services.app.stack import Stack, running
from aiimg.services.config import load_config
from aiimg.services.infra.bus import Bus, connect
from aiimg.services.providers.local import LocalProvider

from .reliability.procs import ServeProcess

pytestmark = pytest.mark.anyio


@pytest.fixture(name="config_file")
def _config_file(nats_url: str, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "aiimg.toml"
    path.write_text(
        f"""
data_dir = "{tmp_path / "data"}"
[nats]
url = "{nats_url}"
prefix = "p{uuid.uuid4().hex[:10]}"
[actors]
ack_wait = 2.0
[draw.local]
delay = 3.0
[log]
format = "json"
"""
    )
    yield path


async def _events(bus: Bus, job: str) -> list[object]:
    return [e for _, e in await bus.history(job)]


async def test_provider_killed_mid_job_is_redelivered_and_completes_once(config_file: Path) -> None:
    config = load_config(config_file)
    bus = await connect(config)
    await bus.ensure_layout()
    first = ServeProcess(config_file, "local")
    second: ServeProcess | None = None
    try:
        async with running(Stack(bus, providers=[])):  # the router, in this process
            await first.wait_for("provider_started")
            client = Client(bus)
            job = await client.submit("draw", "survive a crash")
            await first.wait_for("attempt_started")
            first.kill()  # mid-call: the work item is neither acked nor nak'd
            second = ServeProcess(config_file, "local")
            end = await client.wait(job, timeout=60)
        assert isinstance(end, JobCompleted)
        events = await _events(bus, job)
        assert sum(isinstance(e, AttemptDispatched) for e in events) == 1
        assert sum(isinstance(e, AttemptSucceeded) for e in events) == 1
        assert sum(isinstance(e, JobCompleted) for e in events) == 1
        assert second.saw("attempt_succeeded") and not first.saw("attempt_succeeded")
    finally:
        first.stop()
        if second:
            second.stop()
        await bus.close()


async def test_router_killed_mid_job_new_router_completes_it(config_file: Path) -> None:
    config = load_config(config_file)
    bus = await connect(config)
    await bus.ensure_layout()
    router = ServeProcess(config_file, "router")
    router2: ServeProcess | None = None
    try:
        await router.wait_for("router_started")
        async with running(Stack(bus, router=False, providers=[LocalProvider(config)])):
            client = Client(bus)
            job = await client.submit("draw", "router crash")
            with anyio.fail_after(30):
                while not any(isinstance(e, AttemptDispatched) for e in await _events(bus, job)):
                    await anyio.sleep(0.05)
            router.kill()
            # The provider finishes (3 s) while no router runs; then a new router takes over.
            with anyio.fail_after(30):
                while not any(isinstance(e, AttemptSucceeded) for e in await _events(bus, job)):
                    await anyio.sleep(0.05)
            router2 = ServeProcess(config_file, "router")
            end = await client.wait(job, timeout=60)
        assert isinstance(end, JobCompleted)
        assert sum(isinstance(e, JobCompleted) for e in await _events(bus, job)) == 1
    finally:
        router.stop()
        if router2:
            router2.stop()
        await bus.close()
