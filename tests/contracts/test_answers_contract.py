"""Every request gets an answer: a request nobody can read still ends in ``job.rejected.v1``.

A client waiting on its job's terminal event must never wait on silence. Each class of
malformed request below is published raw (as any NATS client could) and must end with
``job.rejected.v1`` / ``bad_request`` carrying the decoder's words; one on a subject outside
the layout is refused when it is published. On the in-memory bus and on a real nats-server.
"""

from __future__ import annotations

import json
import uuid

import pytest
from nats.js.errors import NoStreamResponseError

from aiimg.messages import JobCompleted, JobRejected, JobRequested, encode
from aiimg.services.actors.ports import JobBus
from aiimg.services.app.stack import Stack, running
from aiimg.services.domain.errors import BusError
from aiimg.services.infra.memory import MemoryBus

from ..helpers import ScriptedProvider, succeeding
from .conftest import BusFactory, Configure, events, terminal

pytestmark = pytest.mark.anyio


async def _raw(bus: JobBus, subject: str, data: bytes) -> None:
    if isinstance(bus, MemoryBus):
        await bus.publish_raw(subject, data)
    else:
        await bus.js.publish(subject, data, stream=bus.names.jobs_stream)  # type: ignore[attr-defined]


def _cases(job: str) -> dict[str, tuple[bytes, str]]:
    """Body → words its rejection must contain."""
    ok = {"type": "job.requested.v1", "job_id": job, "op": "draw", "prompt": "p"}

    def body(**changes: object) -> bytes:
        return json.dumps({**ok, **changes}).encode()

    return {
        "not json": (b"{not json", "malformed"),
        "unknown type": (body(type="job.paint.v7"), "job.paint.v7"),
        "bad op": (body(op="paint"), "$.op"),
        "wrong type": (body(prompt=42), "$.prompt"),
        "prompt too long": (body(prompt="x" * 8001), "$.prompt"),
        "missing op": (b'{"type":"job.requested.v1","job_id":"%s"}' % job.encode(), "op"),
        "other job's id": (body(job_id="someone-else"), "does not belong"),
        "not a request": (body(type="job.cancel_requested.v1", reason="x"), "does not belong"),
    }


class TestAnswersContract:
    @pytest.mark.parametrize("case", list(_cases("x")))
    async def test_an_unreadable_request_ends_rejected_with_the_decoders_words(
        self, make_bus: BusFactory, configure: Configure, case: str
    ) -> None:
        bus = await make_bus(configure())
        job = f"a-{uuid.uuid4().hex[:12]}"
        data, words = _cases(job)[case]
        local = ScriptedProvider(bus.config, "local", succeeding())
        async with running(Stack(bus, providers=[local])):
            await _raw(bus, bus.names.subject("requested", job, "c1"), data)
            end = await terminal(bus, job, timeout=20)
        assert isinstance(end, JobRejected) and end.reason == "bad_request", end
        assert end.message.startswith("unreadable request:") and words in end.message, end.message
        assert local.calls == []

    async def test_a_second_unreadable_request_does_not_end_a_running_job(
        self, make_bus: BusFactory, configure: Configure
    ) -> None:
        bus = await make_bus(configure())
        job = f"a-{uuid.uuid4().hex[:12]}"
        local = ScriptedProvider(bus.config, "local", succeeding(delay=0.5))
        async with running(Stack(bus, providers=[local])):
            await bus.publish(JobRequested(job_id=job, op="draw", prompt="fine", output="64x64"), client="c1")
            await _raw(bus, bus.names.subject("requested", job, "c1"), b"{junk")
            end = await terminal(bus, job, timeout=20)
        assert isinstance(end, JobCompleted)
        assert [type(e).__name__ for e in await events(bus, job)][-1] == "JobCompleted"

    async def test_a_subject_outside_the_layout_is_refused_when_published(
        self, make_bus: BusFactory, configure: Configure
    ) -> None:
        bus = await make_bus(configure())
        dotted = f"{bus.names.prefix}.job.a.b.requested.c1"
        with pytest.raises((BusError, NoStreamResponseError)):
            await _raw(bus, dotted, encode(JobRequested(job_id="a", op="draw")))
        with pytest.raises((BusError, NoStreamResponseError)):
            await _raw(bus, f"{bus.names.prefix}.job.a.paint.c1", b"{}")
