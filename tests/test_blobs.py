"""The blob store on a real nats-server: byte-exact round trips, interop with nats-py's
own ObjectStore in both directions, deduplication, and typed errors for missing or
corrupt blobs."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import msgspec
import pytest
from nats.js.object_store import ObjectStore

from aiimg.messages import BlobRef
from aiimg.services.domain.errors import BlobError
from aiimg.services.infra.blobs import CHUNK_SIZE, BlobStore
from aiimg.services.infra.bus import Bus
from aiimg.services.infra.media import MediaInfo
from aiimg.services.infra.retry import Backoff

pytestmark = pytest.mark.anyio

QUICK = Backoff(0.0, tries=3)
"""Missing-blob tests need not wait the real re-read delays: three tries, no wait."""


QUICK_UNAVAILABLE = Backoff(0.01, tries=3)
"""A bucket without direct gets is not waited for as long as a real election."""


def quick(bus: Bus, **kw: int) -> BlobStore:
    return BlobStore(bus, read_retry=QUICK, unavailable_retry=QUICK_UNAVAILABLE, **kw)


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-looking bytes of ``size``."""
    block = hashlib.sha256(f"seed-{seed}".encode()).digest() * 2048  # 64 KB
    reps = size // len(block) + 1
    data = bytearray(block * reps)[:size]
    # Make every 64 KB block differ, so a chunk mix-up cannot go unnoticed.
    for i in range(0, max(0, size - 4), len(block)):
        data[i : i + 4] = i.to_bytes(4, "big")
    assert len(data) == size
    return bytes(data)


async def chunk_messages(bus: Bus, bucket: str) -> int:
    """How many chunk messages the bucket's stream holds."""
    info = await bus.js.stream_info(f"OBJ_{bucket}", subjects_filter=f"$O.{bucket}.C.>")
    return sum((info.state.subjects or {}).values())


async def native(bus: Bus) -> ObjectStore:
    return await bus.js.object_store(bus.names.blob_bucket)


@pytest.mark.parametrize(
    "size",
    [0, 1, 1000, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE - 7, 40 * 1024 * 1024],
    ids=["0B", "1B", "1000B", "one-chunk", "chunk+1", "3-chunks-minus-7", "40MB"],
)
async def test_round_trip_is_byte_identical(bus: Bus, size: int) -> None:
    store = quick(bus)
    data = payload(size, seed=size)
    ref = await store.put(data)
    assert ref.size == size
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert ref.name == f"sha256-{ref.sha256}"
    assert ref.bucket == bus.names.blob_bucket
    got = await store.get(ref)
    assert isinstance(got, bytes)
    assert got == data


async def test_metadata_is_the_standard_object_info(bus: Bus) -> None:
    store = quick(bus)
    data = payload(2 * CHUNK_SIZE + 10)
    ref = await store.put(data, MediaInfo("image/png", 10, 20))
    assert (ref.mime, ref.width, ref.height) == ("image/png", 10, 20)
    info = await (await native(bus)).get_info(ref.name)
    assert info.size == len(data)
    assert info.chunks == 3
    assert info.bucket == bus.names.blob_bucket
    expected = "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
    assert info.digest == expected
    assert not info.deleted
    # Chunks live on the standard subject for this object's nuid.
    stream = await bus.js.stream_info(f"OBJ_{ref.bucket}", subjects_filter=f"$O.{ref.bucket}.C.{info.nuid}")
    assert sum((stream.state.subjects or {}).values()) == 3


@pytest.mark.parametrize("size", [0, 5, 300_000, 3 * 1024 * 1024 + 3])
async def test_blob_written_by_blobstore_reads_with_nats_py(bus: Bus, size: int) -> None:
    data = payload(size, seed=7)
    ref = await quick(bus).put(data)
    result = await (await native(bus)).get(ref.name)
    assert (result.data or b"") == data


@pytest.mark.parametrize("size", [0, 5, 128 * 1024, 3 * 1024 * 1024 + 3])
async def test_blob_written_by_nats_py_reads_with_blobstore(bus: Bus, size: int) -> None:
    data = payload(size, seed=9)
    digest = hashlib.sha256(data).hexdigest()
    name = f"sha256-{digest}"
    await (await native(bus)).put(name, data)
    ref = BlobRef(name=name, size=size, sha256=digest, mime="application/octet-stream", bucket=bus.names.blob_bucket)
    assert await quick(bus).get(ref) == data


async def test_same_bytes_are_stored_once(bus: Bus) -> None:
    store = quick(bus)
    data = payload(3 * CHUNK_SIZE)
    first = await store.put(data)
    stored = await chunk_messages(bus, first.bucket)
    assert stored == 3
    second = await store.put(data)
    assert second == first
    assert await chunk_messages(bus, first.bucket) == stored  # the duplicate upload was dropped
    assert await store.get(second) == data


async def test_old_copy_is_rewritten_and_its_chunks_dropped(bus: Bus) -> None:
    store = quick(bus)
    data = payload(2 * CHUNK_SIZE + 1)
    ref = await store.put(data)
    old_nuid = (await (await native(bus)).get_info(ref.name)).nuid
    store.max_age = 0.0  # every existing copy now counts as past half its lifetime
    again = await store.put(data)
    assert again == ref
    new_nuid = (await (await native(bus)).get_info(ref.name)).nuid
    assert new_nuid != old_nuid
    assert await chunk_messages(bus, ref.bucket) == 3  # only the new copy's chunks remain
    assert await store.get(ref) == data


async def test_reads_across_several_batches(bus: Bus) -> None:
    store = quick(bus, batch_chunks=3)
    data = payload(10 * CHUNK_SIZE + 17)
    ref = await store.put(data)
    assert await store.get(ref) == data


async def test_put_with_a_small_ack_window(bus: Bus) -> None:
    store = quick(bus, window_bytes=1)  # one chunk in flight at a time
    data = payload(5 * CHUNK_SIZE + 3)
    ref = await store.put(data)
    assert await store.get(ref) == data


async def test_concurrent_puts_and_gets(bus: Bus) -> None:
    import anyio

    store = quick(bus)
    items = [payload(CHUNK_SIZE * (i % 3) + i * 1001, seed=i) for i in range(12)]
    refs: list[BlobRef | None] = [None] * len(items)

    async def put(i: int) -> None:
        refs[i] = await store.put(items[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(items)):
            tg.start_soon(put, i)
    got: list[bytes | None] = [None] * len(items)

    async def get(i: int) -> None:
        ref = refs[i]
        assert ref is not None
        got[i] = await store.get(ref)

    async with anyio.create_task_group() as tg:
        for i in range(len(items)):
            tg.start_soon(get, i)
    assert got == items


async def test_missing_blob_is_a_blob_error(bus: Bus) -> None:
    digest = hashlib.sha256(b"never stored").hexdigest()
    ref = BlobRef(name=f"sha256-{digest}", size=12, sha256=digest, mime="image/png", bucket=bus.names.blob_bucket)
    with pytest.raises(BlobError, match="not found"):
        await quick(bus).get(ref)


async def test_missing_bucket_is_a_blob_error(bus: Bus) -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    ref = BlobRef(name=f"sha256-{digest}", size=1, sha256=digest, mime="image/png", bucket="no_such_bucket_here")
    with pytest.raises(BlobError, match="not found"):
        await quick(bus).get(ref)


async def test_ref_that_does_not_match_the_object_is_a_blob_error(bus: Bus) -> None:
    store = quick(bus)
    ref = await store.put(payload(1000))
    wrong_size = msgspec.structs.replace(ref, size=999)
    with pytest.raises(BlobError, match="corrupt"):
        await store.get(wrong_size)
    wrong_digest = msgspec.structs.replace(ref, sha256="0" * 64)
    with pytest.raises(BlobError, match="corrupt"):
        await store.get(wrong_digest)


async def test_lost_chunk_is_a_blob_error(bus: Bus) -> None:
    store = quick(bus)
    data = payload(3 * CHUNK_SIZE)
    ref = await store.put(data)
    info = await (await native(bus)).get_info(ref.name)
    stream = f"OBJ_{ref.bucket}"
    first = await bus.js.get_msg(stream, seq=1, subject=f"$O.{ref.bucket}.C.{info.nuid}", next=True)
    assert first.seq is not None
    await bus.js.delete_msg(stream, first.seq)
    with pytest.raises(BlobError, match="corrupt"):
        await store.get(ref)


async def test_all_chunks_gone_is_a_blob_error(bus: Bus) -> None:
    store = quick(bus)
    ref = await store.put(payload(2 * CHUNK_SIZE))
    info = await (await native(bus)).get_info(ref.name)
    await bus.js.purge_stream(f"OBJ_{ref.bucket}", subject=f"$O.{ref.bucket}.C.{info.nuid}")
    with pytest.raises(BlobError, match="corrupt"):
        await store.get(ref)


async def test_tampered_chunk_is_a_blob_error(bus: Bus) -> None:
    """Metadata that names chunks whose bytes do not hash to its digest."""
    store = quick(bus)
    data = payload(CHUNK_SIZE + 5)
    ref = await store.put(data)
    bucket = ref.bucket
    tampered = bytearray(data)
    tampered[10] ^= 0xFF
    nuid = "tampered" + os.urandom(6).hex()
    ack = await bus.js.publish(f"$O.{bucket}.C.{nuid}", bytes(tampered[:CHUNK_SIZE]))
    assert ack.seq
    await bus.js.publish(f"$O.{bucket}.C.{nuid}", bytes(tampered[CHUNK_SIZE:]))
    meta = {
        "name": ref.name,
        "bucket": bucket,
        "nuid": nuid,
        "size": len(data),
        "chunks": 2,
        "digest": "SHA-256=" + base64.urlsafe_b64encode(bytes.fromhex(ref.sha256)).decode(),
    }
    subject = f"$O.{bucket}.M.{base64.urlsafe_b64encode(ref.name.encode()).decode()}"
    await bus.js.publish(subject, json.dumps(meta).encode(), headers={"Nats-Rollup": "sub"})
    with pytest.raises(BlobError, match="checksum"):
        await store.get(ref)


async def test_deleted_object_is_a_blob_error(bus: Bus) -> None:
    store = quick(bus)
    ref = await store.put(payload(100))
    await (await native(bus)).delete(ref.name)
    with pytest.raises(BlobError, match="not found"):
        await store.get(ref)
    # Putting the same bytes again brings it back.
    again = await store.put(payload(100))
    assert await store.get(again) == payload(100)


async def test_too_large_is_a_blob_error(bus: Bus) -> None:
    store = quick(bus)
    store.max_bytes = 10
    with pytest.raises(BlobError, match="exceeds"):
        await store.put(b"x" * 11)


async def test_bucket_with_direct_get_disabled_still_reads(bus: Bus) -> None:
    """Buckets made by other tools may lack allow_direct: reads fall back to the stream API / nats-py."""
    bucket = bus.names.blob_bucket
    info = await bus.js.stream_info(f"OBJ_{bucket}")
    config = info.config
    config.allow_direct = False
    await bus.js.update_stream(config)
    try:
        store = quick(bus)
        data = payload(2 * CHUNK_SIZE + 1)
        ref = await store.put(data)
        assert await store.get(ref) == data
    finally:
        config.allow_direct = True
        await bus.js.update_stream(config)
    assert await quick(bus).get(ref) == data


async def test_put_into_a_missing_bucket_is_a_blob_error(bus: Bus) -> None:
    store = quick(bus)
    store.bucket = "no_such_bucket_here"
    with pytest.raises(BlobError, match="refused a chunk"):
        await store.put(b"x")
    with pytest.raises(BlobError, match="does not exist"):
        await store.put(b"")


async def test_a_replica_that_is_behind_is_read_again(bus: Bus) -> None:
    """A direct get answered by a lagging replica (simulated: the first metadata read finds
    nothing) does not fail the read; the next attempt gets the blob."""
    store = quick(bus)
    data = payload(2 * CHUNK_SIZE + 3)
    ref = await store.put(data)
    real_info = store._info
    calls = 0

    async def behind_once(bucket: str, name: str) -> object:
        nonlocal calls
        calls += 1
        return None if calls == 1 else await real_info(bucket, name)

    store._info = behind_once  # type: ignore[method-assign,assignment]
    assert await store.get(ref) == data
    assert calls == 2


async def test_missing_blob_is_read_a_few_times_before_it_fails(bus: Bus) -> None:
    store = quick(bus)
    real_info = store._info
    calls = 0

    async def counting(bucket: str, name: str) -> object:
        nonlocal calls
        calls += 1
        return await real_info(bucket, name)

    store._info = counting  # type: ignore[method-assign,assignment]
    digest = hashlib.sha256(b"gone").hexdigest()
    ref = BlobRef(name=f"sha256-{digest}", size=4, sha256=digest, mime="image/png", bucket=bus.names.blob_bucket)
    with pytest.raises(BlobError, match="not found"):
        await store.get(ref)
    assert calls == QUICK.tries


async def test_a_blob_store_without_responders_is_waited_for(bus: Bus) -> None:
    """No responders to a direct get is what a bucket's stream answers while it has no leader
    (an election). The read waits it out with direct gets — never the stream API, which the
    shipped roles may not use — instead of calling the blob missing. Simulated here by a bucket
    whose stream appears 0.3 s into the read."""
    import anyio

    bucket = f"late_{os.urandom(4).hex()}"
    data = payload(CHUNK_SIZE + 5)
    digest = hashlib.sha256(data).hexdigest()
    ref = BlobRef(
        name=f"sha256-{digest}", size=len(data), sha256=digest, mime="application/octet-stream", bucket=bucket
    )
    reader = BlobStore(bus, read_retry=Backoff(0.0, tries=1), unavailable_retry=Backoff(0.05, cap=0.2, within=10.0))
    stream_api: list[object] = []
    real_get_msg = bus.js.get_msg

    async def get_msg(*args: object, **kw: object) -> object:
        stream_api.append(args)
        return await real_get_msg(*args, **kw)  # type: ignore[arg-type]

    bus.js.get_msg = get_msg  # type: ignore[method-assign]

    async def appear() -> None:
        await anyio.sleep(0.3)
        await bus.ensure_object_bucket(bucket, ttl=3600)
        assert await BlobStore(bus, bucket).put(data) == ref

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(appear)
            assert await reader.get(ref) == data
    finally:
        bus.js.get_msg = real_get_msg  # type: ignore[method-assign]
        await bus.js.delete_stream(f"OBJ_{bucket}")
    assert stream_api == []


async def test_a_blob_store_that_stays_without_responders_gives_up(bus: Bus) -> None:
    """After the backoff the stream API gets one try (buckets made without direct gets); a
    bucket that does not exist is then a missing blob."""
    store = BlobStore(bus, read_retry=Backoff(0.0, tries=1), unavailable_retry=Backoff(0.01, tries=3))
    real = store._direct_info
    calls = 0

    async def counting(bucket: str, name: str) -> object:
        nonlocal calls
        calls += 1
        return await real(bucket, name)

    store._direct_info = counting  # type: ignore[method-assign,assignment]
    digest = hashlib.sha256(b"nowhere").hexdigest()
    ref = BlobRef(name=f"sha256-{digest}", size=7, sha256=digest, mime="image/png", bucket="no_such_bucket_x")
    with pytest.raises(BlobError, match="not found"):
        await store.get(ref)
    assert calls == 3


async def test_puts_and_gets_share_one_reply_subscription(bus: Bus) -> None:
    store = quick(bus)
    await store.get(await store.put(payload(10, seed=1)))
    subscribed = bus.nc._sid  # nats-py counts every subscribe on the connection
    for i in range(5):
        data = payload(CHUNK_SIZE + 10, seed=100 + i)
        assert await store.get(await store.put(data)) == data
    assert bus.nc._sid == subscribed, "each put or get subscribed (and unsubscribed) an inbox of its own"
    assert not store._inbox.handlers, "finished puts or gets stay registered on the inbox"
