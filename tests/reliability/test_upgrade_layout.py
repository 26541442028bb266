"""Upgrading over a stream written by the previous layout: old terminal events still end their jobs.

Found running the quick start over the embedded store an earlier version had written: a job
whose ``job.completed.v1`` was stored on ``<prefix>.job.<id>.done`` (before terminal events
named their client) had an unacked router message left; the new router, reading that terminal
event as misplaced, thought the job unfinished and wrote a second ``job.completed.v1`` on
``done.<client>`` — which a bridge's results consumer would deliver to a chat again.
"""

from __future__ import annotations

import uuid

import pytest
import structlog

from aiimg.messages import (
    AttemptDispatched,
    AttemptSucceeded,
    BlobRef,
    JobCompleted,
    JobRequested,
    encode,
)
from aiimg.services.app.client import Client
from aiimg.services.app.stack import Stack, running
from aiimg.services.infra.bus import Bus
from aiimg.services.providers.local import LocalProvider

pytestmark = pytest.mark.anyio

REF = BlobRef(name="sha256-" + "1" * 64, size=10, sha256="1" * 64, mime="image/png", width=8, height=8)


async def test_a_job_ended_under_the_old_layout_is_not_ended_again(bus: Bus) -> None:
    n = bus.names
    job = f"old-{uuid.uuid4().hex[:10]}"
    legacy_done = f"{n.prefix}.job.{job}.done"
    # The stream as the previous version made it: it also took <prefix>.job.<id>.done.
    info = await bus.js.stream_info(n.jobs_stream)
    info.config.subjects = [*(info.config.subjects or []), f"{n.prefix}.job.*.done"]
    await bus.js.update_stream(info.config)
    history = [
        (n.subject("requested", job, "c1"), JobRequested(job_id=job, op="draw", prompt="old", at=1.0)),
        (
            n.subject("dispatch", job, "local"),
            AttemptDispatched(
                job_id=job, attempt=1, provider="local", op="draw", chain=["local"], deadline=4e9, at=2.0
            ),
        ),
        (
            n.subject("attempt", job, "local"),
            AttemptSucceeded(job_id=job, attempt=1, provider="local", result=REF, at=3.0),
        ),
        (legacy_done, JobCompleted(job_id=job, result=REF, provider="local", attempt=1, at=4.0)),
    ]
    for subject, event in history:
        await bus.js.publish(subject, encode(event), stream=n.jobs_stream)

    assert (await bus.read_job(job)).folded(job).done  # every reader sees it ended

    with structlog.testing.capture_logs() as logs:
        # The upgraded router starts and reads the old job's messages (never acked) from its consumer.
        async with running(Stack(bus, providers=[LocalProvider(bus.config)])):
            client = Client(bus)
            end = await client.wait(await client.submit("draw", "new", output="64x64"), timeout=30)
            assert isinstance(end, JobCompleted)
    events = [e for _, e in await bus.history(job)]
    # One terminal event, the old one. (The provider may run the old, never-acked work item
    # once more; its late result is not a step of a finished job.)
    assert [e.at for e in events if isinstance(e, JobCompleted)] == [4.0]
    assert not [e for e in logs if e["event"] == "history_misplaced_event"]
