"""Timeouts and heartbeats.

* A provider process that dies without acking (SIGKILL mid-call, no replica left) is
  detected: the router's durable timer counts the attempt as ``timeout`` at its deadline
  and the job escalates to the next provider, which completes it.
* A provider killed mid-call with a replica alive: after ``ack_wait`` the work item is
  redelivered to the replica, which completes it once.
* A long upstream call — ten times ``ack_wait`` — is kept alive by ``+WPI`` heartbeats
  and is not redelivered while the actor is healthy.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import pytest

from aiimg.messages import AttemptDispatched, AttemptFailed, AttemptSucceeded, JobCompleted
from aiimg.services.app.client import Client
from aiimg.services.app.stack import Stack, running
from aiimg.services.config import load_config
from aiimg.services.infra.bus import connect
from aiimg.services.providers.base import AttemptContext, Output

from ..conftest import make_config
from ..helpers import ScriptedProvider, png, succeeding
from .procs import ServeProcess, write_toml

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

KEYS = {"api_keys": ["sk-test-1"], "base_url": "http://127.0.0.1:9"}


def _config_file(tmp_path: Path, nats_url: str, ack_wait: float) -> Path:
    return write_toml(
        tmp_path / "aiimg.toml",
        {
            "data_dir": str(tmp_path / "data"),
            "nats": {"url": nats_url, "prefix": "h" + uuid.uuid4().hex[:10]},
            "actors": {"ack_wait": ack_wait},
            "policy": {"timeout_grace": 1.0},
            "retention": {"job_max_age": 3600.0, "blob_max_age": 3600.0},
            "draw": {
                "provider": "local",
                "fallback_1": "openai_compat",
                "local": {"delay": 60.0, "timeout": 4.0},
                "openai_compat": {**KEYS, "max_retries": 0},
            },
            "log": {"format": "json"},
        },
    )


async def test_provider_dead_without_ack_times_out_at_the_deadline_and_the_job_escalates(
    nats_url: str, tmp_path: Path
) -> None:
    path = _config_file(tmp_path, nats_url, ack_wait=1.0)
    config = load_config(path)
    bus = await connect(config)
    await bus.ensure_layout()
    local = ServeProcess(path, "local")
    try:
        fallback = ScriptedProvider(config, "openai_compat", succeeding())
        async with running(Stack(bus, providers=[fallback])):  # router + fallback in this process
            await local.wait_for("provider_started")
            client = Client(bus)
            job = await client.submit("draw", "nobody answers")
            await local.wait_for("attempt_started")
            local.kill()  # no ack, no nak, no failure event: only the deadline can tell
            end = await client.wait(job, timeout=60)
        events = [e for _, e in await bus.history(job)]
    finally:
        local.stop()
        await bus.close()
    assert isinstance(end, JobCompleted) and end.provider == "openai_compat" and end.attempt == 2
    failed = [e for e in events if isinstance(e, AttemptFailed)]
    assert [(f.provider, f.reason) for f in failed] == [("local", "timeout")]
    assert "deadline" in failed[0].message  # written by the router's durable timer, not the provider
    dispatched = [e for e in events if isinstance(e, AttemptDispatched)]
    assert failed[0].at >= dispatched[0].deadline
    assert len(fallback.calls) == 1


async def test_provider_killed_mid_call_is_redelivered_to_a_replica_after_ack_wait(
    nats_url: str, tmp_path: Path
) -> None:
    path = _config_file(tmp_path, nats_url, ack_wait=1.0)
    config = load_config(path)
    bus = await connect(config)
    await bus.ensure_layout()
    first = ServeProcess(path, "local")
    try:
        replica = ScriptedProvider(config, "local", succeeding())
        async with running(Stack(bus, providers=[])):  # the router
            await first.wait_for("provider_started")
            client = Client(bus)
            job = await client.submit("draw", "hand over")
            await first.wait_for("attempt_started")
            first.kill()
            async with running(Stack(bus, router=False, providers=[replica])):
                end = await client.wait(job, timeout=30)
        events = [e for _, e in await bus.history(job)]
    finally:
        first.stop()
        await bus.close()
    assert isinstance(end, JobCompleted) and end.provider == "local" and end.attempt == 1
    assert len(replica.calls) == 1
    assert sum(isinstance(e, AttemptSucceeded) for e in events) == 1
    assert not any(isinstance(e, AttemptFailed) for e in events)


@pytest.mark.parametrize("ack_wait", [0.6, 1.0])
async def test_a_call_ten_times_ack_wait_is_kept_alive_by_heartbeats(
    nats_url: str, tmp_path: Path, ack_wait: float
) -> None:
    config = make_config(
        nats_url,
        tmp_path,
        actors={"ack_wait": ack_wait},
        draw={"provider": "local", "local": {"timeout": ack_wait * 10 + 20}},
    )
    bus = await connect(config)
    await bus.ensure_layout()
    entered = 0

    async def long_call(ctx: AttemptContext) -> Output:
        nonlocal entered
        entered += 1
        await anyio.sleep(ack_wait * 10)
        return Output(data=png(64, 64))

    provider = ScriptedProvider(config, "local", long_call)
    try:
        async with running(Stack(bus, providers=[provider])):
            client = Client(bus)
            job = await client.submit("draw", "long call")
            end = await client.wait(job, timeout=ack_wait * 10 + 30)
        info = await bus.js.consumer_info(bus.names.jobs_stream, bus.names.provider_consumer("local"))
    finally:
        await bus.close()
    assert isinstance(end, JobCompleted)
    assert entered == 1, "the work item was redelivered while its call was running"
    assert info.num_redelivered == 0
