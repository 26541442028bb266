"""Issue 10's attacks on the bus, each run against a real nats-server and real actors.

Every test plays a hostile or careless client (or provider) with raw publishes — the
things any NATS client with a role's rights can send — and asserts the safe outcome:
the service keeps working, no job is lost or run twice, the router does not spin.
(What a role may publish at all is ``test_role_matrix.py``; upstream attacks are in
``test_upstream_faults.py``/``test_downloads.py``, secrets in ``test_secret_scan.py``.)
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import structlog

from aiimg.messages import (
    AttemptDispatched,
    AttemptFailed,
    AttemptSucceeded,
    BlobRef,
    JobCompleted,
    JobEvent,
    JobRejected,
    JobRequested,
    encode,
)
from aiimg.services.actors.router import Router
from aiimg.services.app.client import Client
from aiimg.services.app.stack import Stack, running
from aiimg.services.config import Config
from aiimg.services.infra.bus import Bus, connect, consumer_configs
from aiimg.services.providers.base import AttemptContext, Output
from aiimg.services.providers.local import LocalProvider
from aiimg.services.providers.openai_compat import OpenAICompatProvider

from ..conftest import make_config
from ..fakes.server import FakeUpstream, Request, json_reply
from ..helpers import ScriptedProvider, png, succeeding

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == name]


async def _history(bus: Bus, job_id: str) -> list[JobEvent]:
    return [e for _, e in await bus.history(job_id)]


def _count(events: list[JobEvent], kind: type) -> int:
    return sum(isinstance(e, kind) for e in events)


# ---- 1: consumers re-filtered or throttled ------------------------------------------------------


async def test_a_refiltered_router_and_throttled_providers_are_repaired_and_work_resumes(
    nats_url: str, tmp_path: Path
) -> None:
    """What the bridge's old permission allowed: re-filter the router to a subject nobody
    writes, set a provider's max_ack_pending to 1, pause another. A restarted router used
    to keep the bad filter (it only checked the consumer existed)."""
    config = make_config(nats_url, tmp_path)
    bus = await connect(config)
    try:
        await bus.ensure_layout()
        n = bus.names
        wanted = {c.name: c for c in consumer_configs(n, config)}
        attacker = await connect(config)  # any identity with the old bridge rights
        try:
            router_cfg = wanted["router"]
            router_cfg.filter_subjects = [f"{n.prefix}.job.nothing.requested"]
            await attacker.js.add_consumer(n.jobs_stream, router_cfg)
            local_cfg = wanted["provider-local"]
            local_cfg.max_ack_pending = 1
            await attacker.js.add_consumer(n.jobs_stream, local_cfg)
        finally:
            await attacker.close()
        drift = await bus.check_consumers(repair=False)
        assert set(drift) == {"router", "provider-local"}, drift
        with structlog.testing.capture_logs() as logs:
            async with running(Stack(bus, providers=[LocalProvider(config)])):
                client = Client(bus)
                jobs = [await client.submit("draw", f"after repair {i}", output="64x64") for i in range(3)]
                ends = [await client.wait(j, timeout=30) for j in jobs]
        assert all(isinstance(e, JobCompleted) for e in ends)
        assert await bus.check_consumers(repair=False) == {}
        repaired = {e["consumer"] for e in _events(logs, "consumer_config_repaired")}
        assert repaired == {"router", "provider-local"}
        assert all(e["log_level"] == "error" for e in _events(logs, "consumer_config_repaired"))
    finally:
        await bus.close()


async def test_a_running_router_repairs_a_consumer_changed_under_it(nats_url: str, tmp_path: Path) -> None:
    config = make_config(nats_url, tmp_path)
    bus = await connect(config)
    try:
        await bus.ensure_layout()
        n = bus.names
        router = Router(bus, consumer_check_interval=0.2)
        stack = Stack(bus, router=False, providers=[LocalProvider(config)])
        stack.router = router
        stack.actors.insert(0, router)
        with structlog.testing.capture_logs() as logs:
            async with running(stack):
                bad = {c.name: c for c in consumer_configs(n, config)}["provider-local"]
                bad.filter_subject = f"{n.prefix}.job.*.dispatch.nobody"
                await bus.js.add_consumer(n.jobs_stream, bad)
                with anyio.fail_after(10):
                    while not _events(logs, "consumer_config_repaired"):
                        await anyio.sleep(0.05)
                client = Client(bus)
                end = await client.wait(await client.submit("draw", "after live repair", output="64x64"), timeout=30)
        assert isinstance(end, JobCompleted)
    finally:
        await bus.close()


# ---- 2: message-id poisoning and non-finite numbers -----------------------------------------------


async def test_a_client_cannot_poison_the_routers_or_a_providers_message_ids(bus: Bus) -> None:
    """A permitted publish of ``{}`` on a running job's cancel subject with the message id the
    router (``<victim>:done``) or the provider (``<victim>:1:result``) used to write with: the
    real writes used to be dropped as duplicates (a two-minute hot loop, or a lost result)."""
    provider = ScriptedProvider(bus.config, "local", succeeding(delay=0.5))
    victims = [f"victim-{i}-{uuid.uuid4().hex[:8]}" for i in range(3)]
    with structlog.testing.capture_logs() as logs:
        async with running(Stack(bus, providers=[provider])):
            client = Client(bus)
            started = time.monotonic()
            for v in victims:
                await client.submit("draw", "victim", output="64x64", job_id=v)
            for v in victims:  # ids seen on aiimg.job.*.>, poisoned while the jobs run
                for msg_id in (f"{v}:done", f"{v}:1:result", f"{v}:2:dispatch", f"{v}:cancel"):
                    await bus.js.publish(
                        bus.names.subject("cancel", v, "mallory"),
                        b"{}",
                        headers={"Nats-Msg-Id": msg_id},
                        stream=bus.names.jobs_stream,
                    )
            ends = [await client.wait(v, timeout=30) for v in victims]
            took = time.monotonic() - started
            histories = [await _history(bus, v) for v in victims]
            # An id claimed before its owner submits is refused loudly, never silently dropped.
            claimed = f"claimed-{uuid.uuid4().hex[:8]}"
            await bus.js.publish(
                bus.names.subject("cancel", claimed, "mallory"),
                b"{}",
                headers={"Nats-Msg-Id": f"{claimed}:requested"},
                stream=bus.names.jobs_stream,
            )
            with pytest.raises(Exception, match="already used"):
                await client.submit("draw", "mine", job_id=claimed)
    print(f"\nmsg-id poisoning: {len(victims)} victims done in {took:.2f}s, log lines={len(logs)}")
    assert all(isinstance(e, JobCompleted) for e in ends)
    for events in histories:
        assert _count(events, JobCompleted) == 1 and _count(events, AttemptSucceeded) == 1
    assert len(provider.calls) == len(victims)
    assert not _events(logs, "router_step_limit")
    # A handful of lines per job, not the 146,114 of a hot loop.
    assert len(logs) < 40 * len(victims), Counter(e.get("event") for e in logs).most_common(5)


async def test_retry_after_of_infinity_moves_on_and_every_event_decodes(nats_url: str, tmp_path: Path) -> None:
    with FakeUpstream() as upstream:
        answers = iter(
            [
                {"retry-after": "inf"},
                {"retry-after-ms": "1e400"},
                {"retry-after": "9" * 400},
            ]
        )

        def limited(req: Request) -> Any:
            return json_reply({"error": {"message": "Too Many Requests"}}, 429, headers=next(answers, {}))

        upstream.route("POST", r"/v1/images/generations", limited)
        config = make_config(
            nats_url,
            tmp_path,
            draw={
                "provider": "openai_compat",
                "fallback_1": "local",
                "openai_compat": {"base_url": upstream.url, "api_keys": ["k-test"], "model": "m", "max_retries": 0},
            },
        )
        bus = await connect(config)
        try:
            await bus.ensure_layout()
            with structlog.testing.capture_logs() as logs:
                async with running(Stack(bus, providers=[OpenAICompatProvider(config), LocalProvider(config)])):
                    client = Client(bus)
                    jobs = [await client.submit("draw", f"inf {i}", output="64x64") for i in range(3)]
                    ends = [await client.wait(j, timeout=30) for j in jobs]
                    histories = [await _history(bus, j) for j in jobs]
        finally:
            await bus.close()
    assert all(isinstance(e, JobCompleted) and e.provider == "local" for e in ends)
    for events in histories:
        failed = [e for e in events if isinstance(e, AttemptFailed)]
        assert [(f.provider, f.reason) for f in failed] == [("openai_compat", "rate_limited")]
        assert failed[0].retry_after == 86_400.0  # finite: capped at a day, far past policy.max_retry_after
    assert not _events(logs, "history_undecodable_event") and not _events(logs, "rejected_message")


# ---- 7: a finished job id runs again --------------------------------------------------------------


async def test_a_used_job_id_never_runs_again_even_from_a_raw_client_after_a_router_restart(bus: Bus) -> None:
    provider = ScriptedProvider(bus.config, "local", succeeding())
    job = f"once-{uuid.uuid4().hex[:10]}"
    request = JobRequested(job_id=job, op="draw", prompt="bill me once", output="64x64")
    subject = bus.names.subject("requested", job, "local")
    client = Client(bus)
    async with running(Stack(bus, providers=[provider])):
        await bus.js.publish(subject, encode(request), stream=bus.names.jobs_stream)  # no header at all
        first = await client.wait(job, timeout=30)
    with structlog.testing.capture_logs() as logs:
        # A new router (nothing in memory) and a raw resubmission of the same id, and another
        # client's request for it: neither may call the upstream again.
        async with running(Stack(bus, providers=[provider])):
            await bus.js.publish(subject, encode(request), stream=bus.names.jobs_stream)
            await bus.js.publish(
                bus.names.subject("requested", job, "other"),
                encode(JobRequested(job_id=job, op="draw", prompt="hijack", output="64x64")),
                stream=bus.names.jobs_stream,
            )
            with anyio.fail_after(15):
                while len(_events(logs, "duplicate_request")) < 2:
                    await anyio.sleep(0.05)
            await anyio.sleep(0.5)
            assert await client.wait(job, timeout=5) == first
    events = await _history(bus, job)
    assert isinstance(first, JobCompleted)
    assert len(provider.calls) == 1
    assert _count(events, AttemptDispatched) == 1 and _count(events, JobCompleted) == 1
    # The project's own client refuses a used id outright.
    with pytest.raises(Exception, match="already used"):
        await client.submit("draw", "again", job_id=job)


async def test_clients_take_the_first_terminal_event(bus: Bus) -> None:
    """Two terminal events on ``.done.<client>`` (the old resubmission bug left such histories): everyone
    — ``Client.wait``, ``Client.follow`` and the fold — takes the first."""
    provider = ScriptedProvider(bus.config, "local", succeeding())
    async with running(Stack(bus, providers=[provider])):
        client = Client(bus)
        job = await client.submit("draw", "first wins", output="64x64")
        first = await client.wait(job, timeout=30)
    assert isinstance(first, JobCompleted)
    later = JobRejected(job_id=job, reason="bad_request", message="a later, second terminal event")
    await bus.js.publish(bus.names.subject("done", job, client.client_id), encode(later), stream=bus.names.jobs_stream)
    assert await Client(bus).wait(job, timeout=5) == first
    followed = [e async for e in Client(bus).follow(job, timeout=5)]
    assert followed[-1] == first
    assert (await bus.read_job(job)).folded(job).terminal == first


# ---- 8: a provider answering another provider's attempt; cancels from another client ---------------


async def test_a_provider_cannot_answer_another_providers_attempt(bus: Bus) -> None:
    n = bus.names
    provider = ScriptedProvider(bus.config, "local", succeeding(delay=1.0, color=(1, 200, 1)))
    forged_ref = BlobRef(name="sha256-" + "1" * 64, size=10, sha256="1" * 64, mime="image/png", bucket=n.blob_bucket)
    with structlog.testing.capture_logs() as logs:
        async with running(Stack(bus, providers=[provider])):
            client = Client(bus)
            job = await client.submit("draw", "only local may answer", output="64x64")
            with anyio.fail_after(10):
                while not provider.calls:
                    await anyio.sleep(0.02)
            # grok publishes (where it may: its own attempt subject) a success for local's attempt …
            as_local = AttemptSucceeded(job_id=job, attempt=1, provider="local", result=forged_ref)
            await bus.js.publish(n.subject("attempt", job, "grok"), encode(as_local), stream=n.jobs_stream)
            # … and one in its own name for an attempt that was not dispatched to it.
            as_grok = AttemptSucceeded(job_id=job, attempt=1, provider="grok", result=forged_ref)
            await bus.js.publish(n.subject("attempt", job, "grok"), encode(as_grok), stream=n.jobs_stream)
            end = await client.wait(job, timeout=30)
    assert isinstance(end, JobCompleted) and end.provider == "local" and end.result != forged_ref
    assert any("does not belong on this subject" in e.get("reason", "") for e in _events(logs, "rejected_message"))


async def test_only_the_requesting_client_can_cancel(bus: Bus) -> None:
    provider = ScriptedProvider(bus.config, "local", succeeding(delay=1.5))
    async with running(Stack(bus, providers=[provider])):
        client = Client(bus)
        kept = await client.submit("draw", "not yours to cancel", output="64x64")
        cancelled = await client.submit("draw", "mine to cancel", output="64x64")
        other = Client(bus)
        other.client_id = "mallory"
        await other.cancel(kept, "cancelled by someone else")
        await client.cancel(cancelled, "changed my mind")
        assert isinstance(await client.wait(kept, timeout=30), JobCompleted)
        end = await client.wait(cancelled, timeout=30)
    assert type(end).__name__ == "JobCancelled"


# ---- 5 (router side): over-limit requests never reach a provider -----------------------------------


async def test_an_oversized_request_is_rejected_before_any_provider_is_called(bus: Bus) -> None:
    provider = ScriptedProvider(bus.config, "local", succeeding())
    client = Client(bus)
    one = await client.put_image(png(300, 300))
    big = msgspec.structs.replace(one, size=4_300_000)  # as declared by a hostile client
    cases = {
        "count": [one] * 300,
        "bytes": [big] * 16,
        "bucket": [msgspec.structs.replace(one, bucket=bus.names.input_bucket("someone-else"))],
    }
    async with running(Stack(bus, providers=[provider])):
        ends = {}
        for name, inputs in cases.items():
            job = f"big-{name}-{uuid.uuid4().hex[:8]}"
            req = JobRequested(job_id=job, op="edit", prompt="x", inputs=inputs)
            await bus.publish(req)
            ends[name] = await client.wait(job, timeout=30)
        bad_output = await client.submit("draw", "x", output="16000x16000")
        ends["output"] = await client.wait(bad_output, timeout=30)
    assert all(isinstance(e, JobRejected) and e.reason == "bad_request" for e in ends.values()), ends
    messages = {k: e.message for k, e in ends.items() if isinstance(e, JobRejected)}
    assert "limits.max_inputs" in messages["count"]
    assert "limits.max_input_bytes" in messages["bytes"]
    assert "may not read from" in messages["bucket"]
    assert "limits.max_pixels" in messages["output"]
    assert provider.calls == []


# ---- 9: fairness ------------------------------------------------------------------------------------


FLOOD = 5_000


async def test_a_flooding_client_is_held_to_its_limit_and_another_client_is_served(
    nats_url: str, tmp_path: Path
) -> None:
    config: Config = make_config(nats_url, tmp_path, limits={"max_jobs_per_client": 64, "max_jobs_per_user": 8})
    bus = await connect(config)
    running_now = {"now": 0, "peak": 0}

    async def slow(ctx: AttemptContext) -> Output:
        running_now["now"] += 1
        running_now["peak"] = max(running_now["peak"], running_now["now"])
        try:
            return await succeeding(delay=0.2)(ctx)
        finally:
            running_now["now"] -= 1

    provider = ScriptedProvider(config, "local", slow)
    try:
        await bus.ensure_layout()
        async with running(Stack(bus, providers=[provider])):
            flood_ids = [f"flood-{i}-{uuid.uuid4().hex[:6]}" for i in range(FLOOD)]
            subject = bus.names.subject
            started = time.monotonic()
            for job in flood_ids:  # a raw client that bypasses the bridge and its per-user pacing
                req = JobRequested(job_id=job, op="draw", prompt="flood", output="64x64")
                await bus.nc.publish(subject("requested", job, "flooder"), encode(req))
            await bus.nc.flush()
            flooded = time.monotonic() - started
            normal = Client(bus)
            normal.client_id = "normal"
            t0 = time.monotonic()
            end = await normal.wait(await normal.submit("draw", "a normal job", output="64x64"), timeout=60)
            normal_latency = time.monotonic() - t0
            outcomes: Counter[str] = Counter()
            with anyio.fail_after(120):
                for job in flood_ids:
                    done = await normal.wait(job, timeout=120)
                    outcomes[type(done).__name__ if not isinstance(done, JobRejected) else done.reason] += 1
    finally:
        await bus.close()
    print(
        f"\nfairness: {FLOOD} flood requests published in {flooded:.2f}s; normal job done in {normal_latency:.2f}s; "
        f"flood outcomes {dict(outcomes)}; upstream calls {len(provider.calls)}, at most {running_now['peak']} at once"
    )
    assert isinstance(end, JobCompleted)
    assert outcomes["too_many_jobs"] > 0 and outcomes["JobCompleted"] > 0
    assert outcomes["JobFailed"] == 0  # nothing timed out
    assert sum(outcomes.values()) == FLOOD
    assert len(provider.calls) == outcomes["JobCompleted"] + 1
    # The provider never had more than the flooding client's limit, plus the normal job, at once.
    assert running_now["peak"] <= 64 + 1
