"""``Client.result`` reads the result blob as soon as a provider reports success, while the
router writes the completion; these tests play provider and router by hand (no actors) to
check that the bytes returned are always those the completion names."""

from __future__ import annotations

import hashlib
import io
import uuid

import anyio
import pytest
from PIL import Image

from aiimg.messages import AttemptSucceeded, BlobRef, JobCompleted, JobFailed
from aiimg.services.app.client import Client
from aiimg.services.domain.errors import JobError
from aiimg.services.infra.blobs import BlobStore
from aiimg.services.infra.bus import Bus
from aiimg.services.infra.retry import Backoff

pytestmark = pytest.mark.anyio


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8 + seed, 8), (seed * 20 % 256, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def ref_for(data: bytes, bucket: str) -> BlobRef:
    digest = hashlib.sha256(data).hexdigest()
    return BlobRef(name=f"sha256-{digest}", size=len(data), sha256=digest, mime="image/png", bucket=bucket)


async def play(
    bus: Bus,
    job_id: str,
    reported: BlobRef,
    completed: BlobRef,
    before_completion: bytes = b"",
    log: list[str] | None = None,
) -> None:
    """The provider reports ``reported``; then (after storing ``before_completion``) the router completes with ``completed``."""
    await anyio.sleep(0.1)  # let Client.result subscribe
    await bus.publish(AttemptSucceeded(job_id=job_id, attempt=1, provider="local", result=reported))
    await anyio.sleep(0.2)
    if before_completion:
        await BlobStore(bus).put(before_completion)
    if log is not None:
        log.append("completion")
    await bus.publish(JobCompleted(job_id=job_id, result=completed, provider="local", attempt=1))


async def test_the_bytes_are_those_of_the_completion_not_of_an_earlier_report(bus: Bus) -> None:
    client = Client(bus)
    first, final = await client.blobs.put(png(1)), await client.blobs.put(png(2))
    job_id = "res-" + uuid.uuid4().hex[:12]
    async with anyio.create_task_group() as tg:
        tg.start_soon(play, bus, job_id, first, final)
        end, data = await client.result(job_id, timeout=20)
    assert end.result == final and data == png(2)


async def test_the_early_read_is_what_the_client_returns_when_refs_match(bus: Bus) -> None:
    client = Client(bus)
    ref = await client.blobs.put(png(3))
    job_id = "res-" + uuid.uuid4().hex[:12]
    log: list[str] = []
    real_get = client.blobs.get

    async def logging_get(r: BlobRef) -> bytes:
        log.append(f"read {r.name}")
        return await real_get(r)

    client.blobs.get = logging_get  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(play, bus, job_id, ref, ref, b"", log)
        _, data = await client.result(job_id, timeout=20)
    assert data == png(3)
    # Read once, as soon as the provider reported it, and not again after the completion.
    assert log == [f"read {ref.name}", "completion"]


async def test_a_failed_early_read_falls_back_to_the_completion(bus: Bus) -> None:
    client = Client(bus, read_retry=Backoff(0.0, tries=2))
    data = png(4)
    ref = ref_for(data, bus.names.blob_bucket)  # reported before it is readable
    job_id = "res-" + uuid.uuid4().hex[:12]
    async with anyio.create_task_group() as tg:
        tg.start_soon(play, bus, job_id, ref, ref, data)
        end, got = await client.result(job_id, timeout=20)
    assert end.result == ref and got == data


async def test_a_failed_job_raises_job_error_and_leaves_no_task_behind(bus: Bus) -> None:
    client = Client(bus)
    job_id = "res-" + uuid.uuid4().hex[:12]

    async def fail() -> None:
        await anyio.sleep(0.1)
        await bus.publish(JobFailed(job_id=job_id, message="every provider failed"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(fail)
        with pytest.raises(JobError):
            await client.result(job_id, timeout=20)


async def test_a_timeout_is_a_timeout_error_even_while_an_early_read_runs(bus: Bus) -> None:
    # The reported blob is missing, so its early read is still retrying when the wait times out.
    client = Client(bus, read_retry=Backoff(0.5, factor=1.0, tries=3))
    data = png(5)
    job_id = "res-" + uuid.uuid4().hex[:12]

    async def report() -> None:
        await anyio.sleep(0.1)
        ref = ref_for(data, bus.names.blob_bucket)
        await bus.publish(AttemptSucceeded(job_id=job_id, attempt=1, provider="local", result=ref))

    async with anyio.create_task_group() as tg:
        tg.start_soon(report)
        with pytest.raises(TimeoutError):
            await client.result(job_id, timeout=0.4)
