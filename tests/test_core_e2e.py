"""End-to-end tests of the core bus against a real nats-server: router + provider actors + client."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio
import pytest
import structlog
from PIL import Image

from aiimg.messages import AttemptDispatched, AttemptFailed, AttemptSucceeded, JobCompleted, JobFailed
from aiimg.services.app.cli import format_trace
from aiimg.services.app.client import Client
from aiimg.services.app.stack import Stack, running
from aiimg.services.domain.state import fold
from aiimg.services.infra.blobs import BlobStore
from aiimg.services.infra.bus import Bus, connect
from aiimg.services.providers.base import AttemptContext, Output, Provider
from aiimg.services.providers.local import LocalProvider

from .conftest import make_config
from .helpers import ScriptedProvider, failing, png, succeeding

pytestmark = pytest.mark.anyio

KEYS = {"api_keys": ["test-key-123456"]}


@contextlib.asynccontextmanager
async def stack(bus: Bus, providers: Sequence[Provider], router: bool = True) -> AsyncIterator[Stack]:
    async with running(Stack(bus, router=router, providers=providers)) as s:
        yield s


async def events_of(bus: Bus, job_id: str) -> list[object]:
    return [e for _, e in await bus.history(job_id)]


async def test_draw_with_local_provider(bus: Bus) -> None:
    async with stack(bus, [LocalProvider(bus.config)]):
        client = Client(bus)
        job_id = await client.submit("draw", "a lighthouse at dusk", output="640x480")
        end, data = await client.result(job_id, timeout=30)
    assert end.provider == "local"
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (640, 480)
    assert end.result.width == 640 and end.result.height == 480 and end.result.mime == "image/png"
    kinds = [type(e).__name__ for e in await events_of(bus, job_id)]
    assert kinds == ["JobRequested", "AttemptDispatched", "AttemptSucceeded", "JobCompleted"]


async def test_edit_with_local_provider_keeps_input_size(bus: Bus) -> None:
    async with stack(bus, [LocalProvider(bus.config)]):
        client = Client(bus)
        job_id = await client.submit("edit", "make it blue", images=[png(300, 200)])
        end, data = await client.result(job_id, timeout=30)
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (300, 200)


async def test_primary_fails_fallback_serves_and_trace_shows_both(nats_url: str, tmp_path: Path) -> None:
    config = make_config(
        nats_url, tmp_path, draw={"provider": "grok", "fallback_1": "local", "grok": {**KEYS, "max_retries": 0}}
    )
    bus = await connect(config)
    await bus.ensure_layout()
    try:
        grok = ScriptedProvider(config, "grok", failing("content_policy", "blocked by moderation"))
        async with stack(bus, [grok, LocalProvider(config)]):
            client = Client(bus)
            job_id = await client.submit("draw", "something")
            end = await client.wait(job_id, timeout=30)
        assert isinstance(end, JobCompleted) and end.provider == "local" and end.attempt == 2
        events = await events_of(bus, job_id)
        failed = [e for e in events if isinstance(e, AttemptFailed)]
        assert [(f.provider, f.reason) for f in failed] == [("grok", "content_policy")]
        trace = "\n".join(format_trace(events))  # type: ignore[arg-type]
        assert "grok" in trace and "reason=content_policy" in trace and "local" in trace
        assert trace.count("attempt.dispatched.v1") == 2
    finally:
        await bus.close()


async def test_every_provider_fails_lists_each_reason(nats_url: str, tmp_path: Path) -> None:
    config = make_config(
        nats_url,
        tmp_path,
        draw={
            "provider": "grok",
            "fallback_1": "openai_compat",
            "grok": {**KEYS, "max_retries": 0},
            "openai_compat": {**KEYS, "base_url": "http://127.0.0.1:9", "max_retries": 0},
        },
    )
    bus = await connect(config)
    await bus.ensure_layout()
    try:
        provs = [
            ScriptedProvider(config, "grok", failing("auth", "key 1 rejected")),
            ScriptedProvider(config, "openai_compat", failing("no_image", "200 without an image")),
        ]
        async with stack(bus, provs):
            client = Client(bus)
            end = await client.wait(await client.submit("draw", "x"), timeout=30)
        assert isinstance(end, JobFailed)
        assert [(f.provider, f.reason) for f in end.failures] == [("grok", "auth"), ("openai_compat", "no_image")]
    finally:
        await bus.close()


async def test_backend_overrides_primary_and_duplicates_are_tried_once(nats_url: str, tmp_path: Path) -> None:
    config = make_config(
        nats_url,
        tmp_path,
        draw={
            "provider": "grok",
            "fallback_1": "grok",
            "fallback_2": "local",
            "fallback_3": "grok",
            "grok": {**KEYS, "max_retries": 0},
        },
    )
    bus = await connect(config)
    await bus.ensure_layout()
    try:
        grok = ScriptedProvider(config, "grok", failing("upstream_error", "500"))
        async with stack(bus, [grok, LocalProvider(config)]):
            client = Client(bus)
            # Default chain: grok (primary, listed three times) then local.
            end = await client.wait(await client.submit("draw", "a"), timeout=30)
            assert isinstance(end, JobCompleted) and end.provider == "local"
            assert len(grok.calls) == 1
            # --backend local: local first, grok never called.
            job = await client.submit("draw", "b", backend="local")
            end = await client.wait(job, timeout=30)
            assert isinstance(end, JobCompleted) and end.attempt == 1 and end.provider == "local"
            assert len(grok.calls) == 1
            dispatch = next(e for e in await events_of(bus, job) if isinstance(e, AttemptDispatched))
            assert dispatch.chain == ["local", "grok"]
    finally:
        await bus.close()


async def test_retryable_reason_is_retried_on_same_provider_after_hint(nats_url: str, tmp_path: Path) -> None:
    config = make_config(
        nats_url,
        tmp_path,
        draw={"provider": "grok", "grok": {**KEYS, "max_retries": 1}},
        policy={"backoff": 0.05},
    )
    bus = await connect(config)
    await bus.ensure_layout()
    try:
        calls = 0

        async def flaky(ctx: AttemptContext) -> Output:
            nonlocal calls
            calls += 1
            if calls == 1:
                from aiimg.services.domain.errors import ProviderFailure

                raise ProviderFailure("rate_limited", "429", retry_after=0.4)
            return await succeeding()(ctx)

        async with stack(bus, [ScriptedProvider(config, "grok", flaky)]):
            client = Client(bus)
            job = await client.submit("draw", "x")
            end = await client.wait(job, timeout=30)
        assert isinstance(end, JobCompleted) and end.attempt == 2
        dispatches = [e for e in await events_of(bus, job) if isinstance(e, AttemptDispatched)]
        assert [d.provider for d in dispatches] == ["grok", "grok"]
        # The retry honoured the 0.4 s hint (longer than the 0.05 s backoff).
        assert dispatches[1].not_before - dispatches[1].at == pytest.approx(0.4, abs=0.01)
    finally:
        await bus.close()


async def test_silent_provider_times_out_and_job_escalates(nats_url: str, tmp_path: Path) -> None:
    config = make_config(
        nats_url,
        tmp_path,
        draw={"provider": "grok", "fallback_1": "local", "grok": {**KEYS, "timeout": 0.5, "max_retries": 0}},
        policy={"timeout_grace": 0.5},
    )
    bus = await connect(config)
    await bus.ensure_layout()
    try:
        # No grok actor runs at all: the work item sits unanswered until the deadline.
        async with stack(bus, [LocalProvider(config)]):
            client = Client(bus)
            job = await client.submit("draw", "x")
            end = await client.wait(job, timeout=30)
        assert isinstance(end, JobCompleted) and end.provider == "local"
        failed = [e for e in await events_of(bus, job) if isinstance(e, AttemptFailed)]
        assert [(f.provider, f.reason) for f in failed] == [("grok", "timeout")]
    finally:
        await bus.close()


async def test_two_slow_jobs_run_concurrently_on_one_actor(bus: Bus) -> None:
    active = 0
    peak = 0
    both_started = anyio.Event()

    async def slow(ctx: AttemptContext) -> Output:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        if active >= 2:
            both_started.set()
        with anyio.move_on_after(10):
            await both_started.wait()  # only returns early if the other job runs at the same time
        active -= 1
        return await succeeding()(ctx)

    async with stack(bus, [ScriptedProvider(bus.config, "local", slow)]):
        client = Client(bus)
        jobs = [await client.submit("draw", f"job {i}") for i in range(2)]
        ends = [await client.wait(j, timeout=30) for j in jobs]
    assert all(isinstance(e, JobCompleted) for e in ends)
    assert peak == 2 and both_started.is_set()


async def test_five_megabyte_blob_is_byte_identical(bus: Bus) -> None:
    data = os.urandom(5 * 1024 * 1024)
    store = BlobStore(bus)
    ref = await store.put(data)
    assert ref.size == len(data)
    assert await store.get(ref) == data
    # Content addressed: storing it again gives the same ref without a second copy.
    assert await store.put(data) == ref


async def test_bad_messages_are_rejected_and_service_keeps_serving(bus: Bus) -> None:
    n = bus.names
    with structlog.testing.capture_logs() as logs:
        async with stack(bus, [LocalProvider(bus.config)]):
            for subj in (
                n.subject("requested", "badjob1", "local"),
                n.subject("attempt", "badjob2", "local"),
                n.subject("cancel", "badjob3", "local"),
                n.subject("dispatch", "badjob4", "local"),
            ):
                await bus.js.publish(subj, b"{not json")
            await bus.js.publish(
                n.subject("requested", "badjob5", "local"), b'{"type":"job.unknown.v9","job_id":"badjob5"}'
            )
            await bus.js.publish(
                n.subject("requested", "badjob6", "local"), b'{"type":"job.requested.v1","job_id":"other","op":"draw"}'
            )
            client = Client(bus)
            end = await client.wait(await client.submit("draw", "still alive"), timeout=30)
            assert isinstance(end, JobCompleted)
            with anyio.fail_after(10):
                while sum(1 for e in logs if e["event"] == "rejected_message") < 6:
                    await anyio.sleep(0.05)
    rejected = [e for e in logs if e["event"] == "rejected_message"]
    assert len(rejected) == 6  # each bad message logged once: terminated, not redelivered
    assert any("unknown" in str(e.get("reason", "")) or "job.unknown.v9" in str(e.get("reason", "")) for e in rejected)


async def test_router_restart_mid_job_completes(bus: Bus) -> None:
    release = anyio.Event()

    async def gated(ctx: AttemptContext) -> Output:
        await release.wait()
        return await succeeding()(ctx)

    provider = ScriptedProvider(bus.config, "local", gated)
    async with stack(bus, [provider], router=False):
        client = Client(bus)
        async with stack(bus, [], router=True):
            job = await client.submit("draw", "x")
            with anyio.fail_after(10):
                while not provider.calls:
                    await anyio.sleep(0.02)
        # The router is gone; the provider finishes while nobody routes.
        release.set()
        with anyio.fail_after(10):
            while not any(isinstance(e, AttemptSucceeded) for e in await events_of(bus, job)):
                await anyio.sleep(0.02)
        assert not any(isinstance(e, JobCompleted) for e in await events_of(bus, job))
        async with stack(bus, [], router=True):  # a new router continues the job
            end = await client.wait(job, timeout=30)
    assert isinstance(end, JobCompleted)
    state = fold(job, await events_of(bus, job))  # type: ignore[arg-type]
    assert state.status == "completed" and len(state.attempts) == 1


async def test_cancel_running_job(bus: Bus) -> None:
    async def forever(ctx: AttemptContext) -> Output:
        await anyio.sleep(60)
        raise AssertionError("unreachable")

    async with stack(bus, [ScriptedProvider(bus.config, "local", forever)]):
        client = Client(bus)
        job = await client.submit("draw", "x")
        await client.cancel(job, "changed my mind")
        end = await client.wait(job, timeout=30)
    assert type(end).__name__ == "JobCancelled"


async def test_router_never_dispatches_a_job_cancelled_before_it_ran(bus: Bus) -> None:
    """Request and cancel are both stored before any router runs. Whichever the router sees
    first, its first write is checked against the job's real history (optimistic
    concurrency), so no attempt is dispatched for a job that is already cancelled."""
    client = Client(bus)
    job = await client.submit("draw", "never")
    await client.cancel(job, "too late")
    async with stack(bus, [LocalProvider(bus.config)]):
        end = await client.wait(job, timeout=30)
    assert type(end).__name__ == "JobCancelled"
    assert not any(isinstance(e, AttemptDispatched) for e in await events_of(bus, job))


async def test_optimistic_write_refuses_a_stale_view(bus: Bus) -> None:
    from aiimg.messages import JobRequested
    from aiimg.services.domain.errors import StaleView

    job = "occ-" + os.urandom(4).hex()
    seq = await bus.publish(JobRequested(job_id=job, op="draw", prompt="x"))
    await Client(bus).cancel(job)
    with pytest.raises(StaleView):
        await bus.publish_checked(JobFailed(job_id=job, message="stale"), expect_last=seq)
    _, last = await bus.history_and_last(job)
    seq2, duplicate = await bus.publish_checked(JobFailed(job_id=job, message="fresh"), expect_last=last)
    assert seq2 > last and not duplicate
