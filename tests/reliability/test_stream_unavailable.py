"""A write to the job stream while no stream answers (a leader election, a node restarting).

Before: the write failed at once, so a provider's handler crashed, its work item came back
after the crash delay (5 s, 10 s, 20 s …) and the upstream was called — and billed — again;
under node loss in a cluster, jobs ran past their deadline (tests/reliability/test_cluster.py).
Now the same write is sent again for a while (nothing stored it), with one log line per wait.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import pytest
import structlog

from aiimg.messages import JobRequested
from aiimg.services.domain.errors import BusError
from aiimg.services.infra.bus import connect
from aiimg.services.infra.retry import Backoff

from ..conftest import make_config

pytestmark = pytest.mark.anyio


async def test_a_write_waits_for_the_job_stream_to_answer(nats_url: str, tmp_path: Path) -> None:
    bus = await connect(make_config(nats_url, tmp_path))  # no layout yet: nothing answers the subject
    job = f"u-{uuid.uuid4().hex[:12]}"
    try:
        with structlog.testing.capture_logs() as logs:
            async with anyio.create_task_group() as tg:

                async def stream_comes_back() -> None:
                    await anyio.sleep(0.8)
                    await bus.ensure_layout()

                tg.start_soon(stream_comes_back)
                seq = await bus.publish(JobRequested(job_id=job, op="draw", prompt="p"), client="c1")
        assert seq >= 1
        assert [type(e).__name__ for _, e in await bus.history(job)] == ["JobRequested"]
        waits = [e for e in logs if e["event"] == "job_stream_unavailable"]
        assert waits and all(e["error"] in ("NoStreamResponseError", "NoRespondersError") for e in waits)
    finally:
        await bus.close()


async def test_a_stream_that_stays_away_fails_the_write_with_a_clear_error(nats_url: str, tmp_path: Path) -> None:
    bus = await connect(make_config(nats_url, tmp_path))
    bus.publish_retry = Backoff(0.05, cap=0.1, within=0.4)
    try:
        with pytest.raises(BusError, match="unavailable \\(no responders\\)"):
            await bus.publish(JobRequested(job_id=f"u-{uuid.uuid4().hex[:12]}", op="draw"), client="c1")
    finally:
        await bus.close()
