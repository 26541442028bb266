"""ProviderContract: what the provider actor promises for one work item, on both buses.

The router does not run here: each test writes the job's request and a dispatch itself, as
the router would, and reads back what the provider actor wrote.
"""

from __future__ import annotations

import time
import uuid

import anyio
import pytest

from aiimg.messages import AttemptDispatched, AttemptFailed, AttemptSucceeded, JobCancelled, JobEvent, JobRequested
from aiimg.services.actors.ports import JobBus
from aiimg.services.app.stack import Stack, running

from ..helpers import ScriptedProvider, failing, png, succeeding
from .conftest import BusFactory, Configure, events

pytestmark = pytest.mark.anyio


async def _dispatch(bus: JobBus, *, deadline_in: float = 30.0, not_before_in: float = 0.0, inputs: int = 0) -> str:
    job = f"p-{uuid.uuid4().hex[:12]}"
    bucket = bus.names.input_bucket("c1")
    await bus.ensure_object_bucket(bucket)  # type: ignore[attr-defined]  (clients create their own)
    refs = [await bus.blob_store(bucket).put(png(200, 150)) for _ in range(inputs)]
    await bus.publish(JobRequested(job_id=job, op="edit" if inputs else "draw", inputs=refs), client="c1")
    now = time.time()
    await bus.publish(
        AttemptDispatched(
            job_id=job,
            attempt=1,
            provider="local",
            op="edit" if inputs else "draw",
            inputs=refs,
            chain=["local"],
            deadline=now + deadline_in,
            not_before=now + not_before_in if not_before_in else 0.0,
        )
    )
    return job


async def _outcome(bus: JobBus, job: str, timeout: float = 20.0) -> AttemptSucceeded | AttemptFailed:
    with anyio.fail_after(timeout):
        while True:
            for event in await events(bus, job):
                if isinstance(event, (AttemptSucceeded, AttemptFailed)):
                    return event
            await anyio.sleep(0.02)


class TestProviderContract:
    async def test_a_result_is_stored_checked_and_reported(self, make_bus: BusFactory, configure: Configure) -> None:
        bus = await make_bus(configure())
        local = ScriptedProvider(bus.config, "local", succeeding())
        async with running(Stack(bus, router=False, providers=[local])):
            job = await _dispatch(bus, inputs=2)
            result = await _outcome(bus, job)
        assert isinstance(result, AttemptSucceeded) and result.provider == "local"
        data = await bus.blob_store().get(result.result)
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and (result.result.width, result.result.height) == (96, 64)
        assert [len(c.inputs) for c in local.calls] == [2]

    async def test_a_provider_failure_is_reported_with_its_reason(
        self, make_bus: BusFactory, configure: Configure
    ) -> None:
        bus = await make_bus(configure())
        local = ScriptedProvider(bus.config, "local", failing("content_policy", "refused", retry_after=3.0))
        async with running(Stack(bus, router=False, providers=[local])):
            result = await _outcome(bus, await _dispatch(bus))
        assert isinstance(result, AttemptFailed)
        assert (result.reason, result.message, result.retry_after) == ("content_policy", "refused", 3.0)

    async def test_a_result_that_is_not_an_image_is_invalid_response(
        self, make_bus: BusFactory, configure: Configure
    ) -> None:
        bus = await make_bus(configure())

        async def html(ctx: object) -> object:
            from aiimg.services.providers.base import Output

            return Output(data=b"<html>" + b"x" * 400)

        local = ScriptedProvider(bus.config, "local", html)  # type: ignore[arg-type]
        async with running(Stack(bus, router=False, providers=[local])):
            result = await _outcome(bus, await _dispatch(bus))
        assert isinstance(result, AttemptFailed) and result.reason == "invalid_response"

    async def test_a_dispatch_past_its_deadline_is_not_run(self, make_bus: BusFactory, configure: Configure) -> None:
        bus = await make_bus(configure())
        local = ScriptedProvider(bus.config, "local", succeeding())
        async with running(Stack(bus, router=False, providers=[local])):
            job = await _dispatch(bus, deadline_in=-1.0)
            fresh = await _dispatch(bus)
            await _outcome(bus, fresh)  # handled after the stale one: the stale one was seen and dropped
        assert len(local.calls) == 1 and local.calls[0].dispatch.job_id == fresh
        assert not any(isinstance(e, (AttemptSucceeded, AttemptFailed)) for e in await events(bus, job))

    async def test_not_before_delays_the_attempt(self, make_bus: BusFactory, configure: Configure) -> None:
        bus = await make_bus(configure())
        local = ScriptedProvider(bus.config, "local", succeeding())
        async with running(Stack(bus, router=False, providers=[local])):
            started = time.time()
            result = await _outcome(bus, await _dispatch(bus, not_before_in=1.0))
        assert isinstance(result, AttemptSucceeded) and result.at - started >= 0.95

    async def test_an_attempt_of_a_job_that_ends_meanwhile_is_abandoned(
        self, make_bus: BusFactory, configure: Configure
    ) -> None:
        bus = await make_bus(configure())
        local = ScriptedProvider(bus.config, "local", succeeding(delay=5.0))
        async with running(Stack(bus, router=False, providers=[local])):
            job = await _dispatch(bus)
            with anyio.fail_after(10):
                while not local.calls:
                    await anyio.sleep(0.02)
            await bus.publish(JobCancelled(job_id=job, reason="cancelled"))  # as the router would
            await anyio.sleep(1.0)
        history: list[JobEvent] = await events(bus, job)
        assert not any(isinstance(e, (AttemptSucceeded, AttemptFailed)) for e in history)
