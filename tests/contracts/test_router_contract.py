"""RouterContract: what the router promises, on the in-memory bus and on JetStream alike.

Providers here are scripted through the real provider actor (``tests/helpers.ScriptedProvider``),
so every test exercises the router, the provider actor, the runtime's decoding and the bus.
"""

from __future__ import annotations

import uuid

import anyio
import msgspec
import pytest

from aiimg.messages import (
    AttemptDispatched,
    AttemptFailed,
    AttemptSucceeded,
    BlobRef,
    CancelRequested,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRejected,
    JobRequested,
    encode,
)
from aiimg.services.app.stack import Stack, running
from aiimg.services.domain.errors import BusError

from ..helpers import ScriptedProvider, failing, succeeding
from .conftest import BusFactory, Configure, events, terminal

pytestmark = pytest.mark.anyio

GROK = {"api_keys": ["k"], "max_retries": 0, "timeout": 1.0}


def _job() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


def _request(job: str, prompt: str = "contract") -> JobRequested:
    return JobRequested(job_id=job, op="draw", prompt=prompt, output="64x64")


class TestRouterContract:
    async def test_a_job_completes_on_the_primary(self, make_bus: BusFactory, configure: Configure) -> None:
        bus = await make_bus(configure())
        local = ScriptedProvider(bus.config, "local", succeeding())
        async with running(Stack(bus, providers=[local])):
            job = _job()
            await bus.publish(_request(job), client="c1")
            end = await terminal(bus, job)
        assert isinstance(end, JobCompleted) and end.provider == "local"
        history = await events(bus, job)
        assert [type(e).__name__ for e in history] == [
            "JobRequested",
            "AttemptDispatched",
            "AttemptSucceeded",
            "JobCompleted",
        ]

    async def test_a_typed_failure_escalates_to_the_fallback(self, make_bus: BusFactory, configure: Configure) -> None:
        bus = await make_bus(configure(draw={"provider": "grok", "fallback_1": "local", "grok": GROK}))
        grok = ScriptedProvider(bus.config, "grok", failing("content_policy", "blocked"))
        local = ScriptedProvider(bus.config, "local", succeeding())
        async with running(Stack(bus, providers=[grok, local])):
            job = _job()
            await bus.publish(_request(job), client="c1")
            end = await terminal(bus, job)
        assert isinstance(end, JobCompleted) and end.provider == "local"
        failed = [e for e in await events(bus, job) if isinstance(e, AttemptFailed)]
        assert [(f.provider, f.reason) for f in failed] == [("grok", "content_policy")]

    async def test_a_retryable_failure_is_retried_after_its_hint(
        self, make_bus: BusFactory, configure: Configure
    ) -> None:
        bus = await make_bus(configure(draw={"provider": "grok", "grok": {**GROK, "max_retries": 1}}))
        calls: list[float] = []

        async def flaky(ctx: object) -> object:
            calls.append(anyio.current_time())
            if len(calls) == 1:
                return await failing("rate_limited", "slow down", retry_after=0.5)(ctx)  # type: ignore[arg-type]
            return await succeeding()(ctx)  # type: ignore[arg-type]

        grok = ScriptedProvider(bus.config, "grok", flaky)  # type: ignore[arg-type]
        async with running(Stack(bus, providers=[grok])):
            job = _job()
            await bus.publish(_request(job), client="c1")
            end = await terminal(bus, job)
        assert isinstance(end, JobCompleted)
        dispatches = [e for e in await events(bus, job) if isinstance(e, AttemptDispatched)]
        assert [d.provider for d in dispatches] == ["grok", "grok"]
        assert dispatches[1].not_before - dispatches[1].at >= 0.5  # the hint, not the 0.2 s backoff

    async def test_a_silent_provider_times_out_at_its_deadline(
        self, make_bus: BusFactory, configure: Configure
    ) -> None:
        bus = await make_bus(configure(draw={"provider": "grok", "fallback_1": "local", "grok": GROK}))
        local = ScriptedProvider(bus.config, "local", succeeding())
        # No grok actor runs: its work item is never answered.
        async with running(Stack(bus, providers=[local])):
            job = _job()
            await bus.publish(_request(job), client="c1")
            end = await terminal(bus, job, timeout=30)
        assert isinstance(end, JobCompleted) and end.provider == "local"
        failed = [e for e in await events(bus, job) if isinstance(e, AttemptFailed)]
        assert [(f.provider, f.reason) for f in failed] == [("grok", "timeout")]

    async def test_only_the_requesting_client_cancels(self, make_bus: BusFactory, configure: Configure) -> None:
        bus = await make_bus(configure())
        local = ScriptedProvider(bus.config, "local", succeeding(delay=1.0))
        async with running(Stack(bus, providers=[local])):
            kept, cancelled = _job(), _job()
            await bus.publish(_request(kept), client="c1")
            await bus.publish(_request(cancelled), client="c1")
            await bus.publish(CancelRequested(job_id=kept, reason="not mine"), client="c2")
            await bus.publish(CancelRequested(job_id=cancelled, reason="mine"), client="c1")
            assert isinstance(await terminal(bus, kept), JobCompleted)
            assert isinstance(await terminal(bus, cancelled), JobCancelled)

    async def test_a_job_id_runs_once(self, make_bus: BusFactory, configure: Configure) -> None:
        bus = await make_bus(configure())
        local = ScriptedProvider(bus.config, "local", succeeding())
        names = bus.names
        async with running(Stack(bus, providers=[local])):
            job = _job()
            await bus.publish(_request(job), client="c1")
            await terminal(bus, job)
            # A second request for the id, published raw (no expected-sequence header), from another client.
            raw = encode(_request(job, prompt="again"))
            if hasattr(bus, "publish_raw"):
                await bus.publish_raw(names.subject("requested", job, "c2"), raw)
            else:
                await bus.js.publish(names.subject("requested", job, "c2"), raw, stream=names.jobs_stream)  # type: ignore[attr-defined]
            await anyio.sleep(1.0)
        history = await events(bus, job)
        assert sum(isinstance(e, AttemptDispatched) for e in history) == 1
        assert sum(isinstance(e, JobCompleted) for e in history) == 1
        assert len(local.calls) == 1

    async def test_a_result_claiming_another_providers_attempt_is_ignored(
        self, make_bus: BusFactory, configure: Configure
    ) -> None:
        bus = await make_bus(configure())
        names = bus.names
        local = ScriptedProvider(bus.config, "local", succeeding(delay=1.0))
        forged = BlobRef(name="sha256-" + "2" * 64, size=1, sha256="2" * 64, mime="image/png")
        async with running(Stack(bus, providers=[local])):
            job = _job()
            await bus.publish(_request(job), client="c1")
            with anyio.fail_after(10):
                while not local.calls:
                    await anyio.sleep(0.02)
            fake = encode(AttemptSucceeded(job_id=job, attempt=1, provider="local", result=forged))
            if hasattr(bus, "publish_raw"):
                await bus.publish_raw(names.subject("attempt", job, "grok"), fake)
            else:
                await bus.js.publish(names.subject("attempt", job, "grok"), fake, stream=names.jobs_stream)  # type: ignore[attr-defined]
            end = await terminal(bus, job)
        assert isinstance(end, JobCompleted) and end.result != forged

    async def test_requests_over_the_limits_are_rejected_before_any_provider(
        self, make_bus: BusFactory, configure: Configure
    ) -> None:
        bus = await make_bus(configure(limits={"max_jobs_per_client": 1}))
        local = ScriptedProvider(bus.config, "local", succeeding(delay=1.0))
        async with running(Stack(bus, providers=[local])):
            no_input, first, second = _job(), _job(), _job()
            await bus.publish(JobRequested(job_id=no_input, op="edit", prompt="x"), client="c1")
            await bus.publish(_request(first), client="c1")
            await bus.publish(_request(second), client="c1")
            ends = [await terminal(bus, j) for j in (no_input, first, second)]
        assert isinstance(ends[0], JobRejected) and ends[0].reason == "bad_request"
        assert isinstance(ends[1], JobCompleted)
        assert isinstance(ends[2], JobRejected) and ends[2].reason == "too_many_jobs"
        assert len(local.calls) == 1

    async def test_every_provider_failing_fails_the_job_listing_each_reason(
        self, make_bus: BusFactory, configure: Configure
    ) -> None:
        bus = await make_bus(configure(draw={"provider": "grok", "fallback_1": "local", "grok": GROK}))
        grok = ScriptedProvider(bus.config, "grok", failing("auth", "key #1 rejected"))
        local = ScriptedProvider(bus.config, "local", failing("no_image", "empty"))
        async with running(Stack(bus, providers=[grok, local])):
            job = _job()
            await bus.publish(_request(job), client="c1")
            end = await terminal(bus, job)
        assert isinstance(end, JobFailed)
        assert [(f.provider, f.reason) for f in end.failures] == [("grok", "auth"), ("local", "no_image")]


async def test_a_retried_submit_of_the_same_request_is_its_own_write(
    make_bus: BusFactory, configure: Configure
) -> None:
    """A submit retried after a lost ack (a leader election) finds its own request, not a used id."""
    bus = await make_bus(configure())
    request = _request(_job())
    first = await bus.publish_checked(request, client="c1")
    again = await bus.publish_checked(request, client="c1")
    assert again == (first[0], True)
    other = msgspec.structs.replace(request, prompt="someone else's")
    with pytest.raises(BusError, match="already used"):
        await bus.publish(other, client="c1")
