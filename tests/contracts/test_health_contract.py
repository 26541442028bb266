"""Provider health on the bus: breakers counted by routers, kept in the KV, seen by every router.

Runs on the in-memory bus and on a real nats-server (``make_bus``), like the other contracts.
"""

from __future__ import annotations

import uuid

import anyio
import pytest

from aiimg.messages import AttemptDispatched, JobCompleted, JobRequested
from aiimg.services.actors.health import HealthBoard
from aiimg.services.actors.ports import JobBus
from aiimg.services.app.stack import Stack, running

from ..helpers import ScriptedProvider, failing, succeeding
from .conftest import BusFactory, Configure, events, terminal

pytestmark = pytest.mark.anyio

GROK = {"api_keys": ["k"], "max_retries": 0, "timeout": 5.0}


def _job() -> str:
    return f"h-{uuid.uuid4().hex[:12]}"


async def _run_job(bus: JobBus) -> tuple[JobCompleted, list[AttemptDispatched]]:
    job = _job()
    await bus.publish(JobRequested(job_id=job, op="draw", prompt="health", output="64x64"), client="c1")
    end = await terminal(bus, job)
    assert isinstance(end, JobCompleted), end
    return end, [e for e in await events(bus, job) if isinstance(e, AttemptDispatched)]


async def _second_bus(make_bus: BusFactory, bus: JobBus, bus_kind: str) -> JobBus:
    """Another router's view of the same deployment: a second connection on NATS."""
    return bus if bus_kind == "memory" else await make_bus(bus.config)


class TestHealthContract:
    async def test_a_tripped_breaker_is_skipped_by_the_next_router(
        self, make_bus: BusFactory, configure: Configure, bus_kind: str
    ) -> None:
        config = configure(
            draw={"provider": "grok", "fallback_1": "local", "grok": GROK},
            policy={"breaker_threshold": 2, "breaker_cooldown": 300.0},
        )
        bus = await make_bus(config)
        grok = ScriptedProvider(bus.config, "grok", failing("auth", "grok HTTP 401: key #1 rejected"))
        local = ScriptedProvider(bus.config, "local", succeeding())
        async with running(Stack(bus, providers=[grok, local])):
            for _ in range(2):
                end, dispatched = await _run_job(bus)
                assert end.provider == "local" and [d.provider for d in dispatched] == ["grok", "local"]
        assert len(grok.calls) == 2

        # A router that never saw those failures: it reads the breaker from the bus.
        other = await _second_bus(make_bus, bus, bus_kind)
        grok2 = ScriptedProvider(other.config, "grok", failing("auth", "never called"))
        local2 = ScriptedProvider(other.config, "local", succeeding())
        async with running(Stack(other, providers=[grok2, local2])):
            end, dispatched = await _run_job(other)
        assert end.provider == "local" and len(grok2.calls) == 0
        assert [d.provider for d in dispatched] == ["local"]
        why = dispatched[0].skipped["grok"]
        assert why.startswith("circuit open until") and "2 × auth" in why and "key #1 rejected" in why

    async def test_after_the_cooldown_one_probe_closes_it(self, make_bus: BusFactory, configure: Configure) -> None:
        config = configure(
            draw={"provider": "grok", "fallback_1": "local", "grok": GROK},
            policy={"breaker_threshold": 1, "breaker_cooldown": 1.0},
        )
        bus = await make_bus(config)
        broken = [True]

        async def grok_run(ctx: object) -> object:
            if broken[0]:
                return await failing("quota_exhausted", "grok HTTP 429: insufficient_quota")(ctx)  # type: ignore[arg-type]
            return await succeeding()(ctx)  # type: ignore[arg-type]

        grok = ScriptedProvider(bus.config, "grok", grok_run)  # type: ignore[arg-type]
        local = ScriptedProvider(bus.config, "local", succeeding())
        async with running(Stack(bus, providers=[grok, local])):
            await _run_job(bus)  # opens it (threshold 1)
            _, dispatched = await _run_job(bus)
            assert [d.provider for d in dispatched] == ["local"]  # skipped while cooling down
            broken[0] = False
            await anyio.sleep(1.2)
            end, dispatched = await _run_job(bus)  # the probe
            assert end.provider == "grok" and [d.provider for d in dispatched] == ["grok"]
            _, dispatched = await _run_job(bus)
            assert [d.provider for d in dispatched] == ["grok"]
        record, _ = await bus.health().read(bus.names.health_key("grok", "draw"))
        assert record is not None and record.state == "closed" and record.failures == 0

    async def test_every_router_sees_a_breaker_change_without_polling(
        self, make_bus: BusFactory, configure: Configure, bus_kind: str
    ) -> None:
        config = configure(policy={"breaker_threshold": 2})
        bus = await make_bus(config)
        other = await _second_bus(make_bus, bus, bus_kind)
        writer = HealthBoard(bus.health(), config, refresh=3600.0)
        reader = HealthBoard(other.health(), config, refresh=3600.0)
        async with anyio.create_task_group() as tg:
            await tg.start(writer.run)
            await tg.start(reader.run)
            assert reader.record("grok", "draw") is None
            now = 1_000.0
            # Two routers counting the same outage: their counts add up (compare-and-set).
            await writer.failed("grok", "draw", "auth", "bad key", 0.0, now)
            await reader.failed("grok", "draw", "auth", "bad key", 0.0, now)
            with anyio.fail_after(10):
                while (seen := writer.record("grok", "draw")) is None or seen.state != "open":
                    await anyio.sleep(0.02)
            assert seen.failures == 2
            await writer.succeeded("grok", "draw", now + 1)
            with anyio.fail_after(10):
                while (seen := reader.record("grok", "draw")) is None or seen.state != "closed":
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
