"""Image and video bytes in the JetStream object store, addressed by content.

Blobs use the standard NATS object store layout (bucket ``aiimg_blobs``, stream
``OBJ_<bucket>``): chunks on ``$O.<bucket>.C.<nuid>``, and the object's metadata as
the standard ObjectInfo JSON (size, chunk count, ``SHA-256=`` digest) on
``$O.<bucket>.M.<base64url(name)>``. Any NATS client with object-store support can
read a result by the ``name`` in a :class:`~messages.BlobRef`, and this module reads
objects that other clients wrote. Names are ``sha256-<hex>``: the same bytes are stored once.

Why not nats-py's ``ObjectStore``: its ``put`` waits for one acknowledgement per
128 KB chunk, and its ``get`` creates a consumer and grows the result with
``bytes += chunk`` (quadratic), about 11 MB/s for 40 MB on a 2-core machine. Here:

* **put** hashes each chunk while the previous ones are in flight, publishes the
  chunks pipelined (each with a reply subject on one wildcard inbox, at most
  :data:`WINDOW_BYTES` unacknowledged), checks for an existing copy while the
  acknowledgements arrive, then writes the metadata (a rollup) once every chunk is
  stored — so a reader never sees metadata whose chunks are missing;
* **get** reads the metadata with one direct get, then all chunks with batched
  direct gets (no consumer, no per-chunk round trip), hashing as they arrive, and
  joins them once. Size and digest are checked against both the metadata and the ref.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import msgspec
import structlog
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, NotFoundError, ObjectNotFoundError
from nats.nuid import NUID

from ...messages import BlobRef, Names
from ..domain.errors import BlobError
from .media import MediaInfo, sniff_mime
from .retry import Backoff, retrying

if TYPE_CHECKING:  # the bus builds these; a runtime import would be a cycle
    from .bus import Bus

__all__ = ("BATCH_CHUNKS", "CHUNK_SIZE", "READ_RETRY", "UNAVAILABLE_RETRY", "WINDOW_BYTES", "BlobStore")

log = structlog.get_logger("aiimg.blobs")

CHUNK_SIZE = 256 * 1024
"""Bytes per chunk message (capped by the server's ``max_payload``).

Larger chunks mean fewer messages but bigger copies per message in nats-py; 256 KB
measured as fast as 1 MB here and keeps each write small (see ``docs/benchmarks.md``)."""

WINDOW_BYTES = 16 * 1024 * 1024
"""Most chunk bytes published but not yet acknowledged by the stream, per put."""

BATCH_CHUNKS = 256
"""Most chunks asked for in one batched direct get."""

THREAD_HASH_BYTES = 1024 * 1024
"""Blobs at least this large are hashed on a worker thread, overlapping with the transfer."""

READ_RETRY = Backoff(0.05, factor=4.0, cap=0.5, tries=4)
"""Reading a missing-looking blob again: three more tries, after 0.05, 0.2 and 0.5 s (see :meth:`BlobStore.get`)."""

UNAVAILABLE_RETRY = Backoff(0.1, cap=1.0, within=5.0)
"""Asking again for a blob's metadata when its bucket's direct get has no responders: every
0.1 s, doubling to at most 1 s, for 5 s. That is what a JetStream cluster answers while the
bucket's stream elects a leader (a node lost or restarting), so it is waited out, not read as
"missing" (see :meth:`BlobStore._info`)."""

_DIGEST_PREFIX = "SHA-256="
_STATUS_END = frozenset({"204", "404"})
"""Direct-get batch status codes that end a batch: end of batch, nothing (more) found."""


class _Options(msgspec.Struct):
    max_chunk_size: int = 0
    link: dict[str, Any] | None = None


class _ObjectInfo(msgspec.Struct):
    """The standard object-store metadata document (unknown fields are ignored)."""

    name: str
    bucket: str
    nuid: str = ""
    size: int = 0
    chunks: int = 0
    digest: str = ""
    mtime: str = ""
    deleted: bool = False
    headers: Any = None
    options: _Options | None = None


_decode_info = msgspec.json.Decoder(_ObjectInfo).decode
_encode = msgspec.json.Encoder().encode


class BlobStore:
    """Put and get blobs on ``bus``'s connection. Safe to share between concurrent tasks.

    ``bucket`` is where :meth:`put` writes (default: the results bucket); :meth:`get`
    reads the bucket each reference names. ``purge``: whether this store may drop the
    chunks of an upload it abandons (a failure, or content already stored). Only a
    bucket's sole owner may purge (a purge right covers the whole bucket); elsewhere such
    chunks are left to the bucket's TTL, and a debug line says so.

    ``read_retry`` is how a blob that looks missing is read again (:data:`READ_RETRY`),
    ``unavailable_retry`` how long a blob store without responders is waited for
    (:data:`UNAVAILABLE_RETRY`);
    ``batch_chunks`` and ``window_bytes`` bound a get's batches and a put's unacknowledged
    bytes (:data:`BATCH_CHUNKS`, :data:`WINDOW_BYTES`).
    """

    def __init__(
        self,
        bus: Bus,
        bucket: str | None = None,
        *,
        purge: bool = True,
        read_retry: Backoff = READ_RETRY,
        unavailable_retry: Backoff = UNAVAILABLE_RETRY,
        batch_chunks: int = BATCH_CHUNKS,
        window_bytes: int = WINDOW_BYTES,
    ) -> None:
        self.bus = bus
        self.bucket = bucket or bus.names.blob_bucket
        self.purge = purge
        self.read_retry = read_retry
        self.unavailable_retry = unavailable_retry
        self.batch_chunks = max(1, batch_chunks)
        self.window_bytes = window_bytes
        self.max_bytes = bus.config.retention.max_blob_bytes
        self.max_age = bus.config.retention.blob_max_age
        self._nuid = NUID()
        self._inbox = _Inbox(bus)

    # ---- public -------------------------------------------------------------

    async def put(self, data: bytes, info: MediaInfo | None = None) -> BlobRef:
        """Store ``data`` (once per content) and return its reference."""
        size = len(data)
        if size > self.max_bytes:
            raise BlobError(f"blob of {size} bytes exceeds retention.max_blob_bytes={self.max_bytes}")
        bucket = self.bucket
        nuid = self._nuid.next().decode()
        chunk_subject = Names.object_chunk_subject(bucket, nuid)
        chunk_size = self._chunk_size()
        hasher = _Hasher(threaded=size >= THREAD_HASH_BYTES)
        chunks = 0
        acks = _Acks(self._inbox, window=max(self.window_bytes, chunk_size))
        try:
            if size:
                await acks.start()
                view = memoryview(data)
                for offset in range(0, size, chunk_size):
                    piece = view[offset : offset + chunk_size]
                    await acks.publish(chunk_subject, piece)
                    chunks += 1
                    # Let nats-py's flusher put the chunk on the socket, then hash it while
                    # the server stores it (hashing first kept the server idle meanwhile).
                    await anyio.lowlevel.checkpoint()
                    hasher.update(piece)
            digest = await hasher.digest()
            name = f"sha256-{digest.hex()}"
            # Look for an existing copy while the chunk acks come in.
            existing = await self._info(bucket, name)
            await acks.wait_all(self._timeout(size))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await acks.close()
                if chunks:
                    await self._purge(bucket, chunk_subject)
            raise
        await acks.close()

        ref = BlobRef(
            name=name,
            size=size,
            sha256=digest.hex(),
            mime=info.mime if info else (sniff_mime(data) or "application/octet-stream"),
            width=info.width if info else 0,
            height=info.height if info else 0,
            bucket=bucket,
        )
        if existing is not None and self._reusable(existing, ref):
            if chunks:
                await self._purge(bucket, chunk_subject)
            return ref

        meta = {
            # The fields of the standard ObjectInfo; size and chunks always present (0 included).
            "name": name,
            "bucket": bucket,
            "nuid": nuid,
            "size": size,
            "chunks": chunks,
            "digest": _DIGEST_PREFIX + base64.urlsafe_b64encode(digest).decode(),
            "mtime": datetime.now(UTC).isoformat(),
            "headers": {"Content-Type": [ref.mime]},
            "options": {"max_chunk_size": chunk_size},
        }
        try:
            await self._write_meta(bucket, name, meta)
        except BaseException:
            with anyio.CancelScope(shield=True):
                if chunks:
                    await self._purge(bucket, chunk_subject)
            raise
        if existing is not None and existing.nuid and existing.nuid != nuid and not existing.deleted:
            await self._purge(bucket, Names.object_chunk_subject(bucket, existing.nuid))
        return ref

    async def _write_meta(self, bucket: str, name: str, meta: dict[str, Any]) -> None:
        """Publish ``meta`` as the object's only metadata message (rollup) and check the ack."""
        try:
            ack = await self.bus.nc.request(
                _meta_subject(bucket, name), _encode(meta), timeout=10.0, headers={"Nats-Rollup": "sub"}
            )
        except NoRespondersError:
            raise BlobError(f"blob bucket {bucket} does not exist") from None
        except NatsTimeoutError:
            raise BlobError("blob store did not acknowledge the metadata") from None
        _check_ack(ack.data, "metadata")

    async def get(self, ref: BlobRef) -> bytes:
        """The bytes of ``ref``, checked against its size and sha256.

        On a JetStream cluster direct gets may be answered by a replica that has not yet
        applied the newest writes, so a blob that looks missing or short right after it
        was stored is read again a few times (``read_retry``) before it counts as lost.
        """

        def again(exc: BaseException, wait: float) -> None:
            log.debug("blob_read_again", blob=ref.name, error=str(exc), retry_in=wait)

        try:
            return await retrying(lambda: self._get_once(ref), self.read_retry, retry_on=_Stale, on_retry=again)
        except _Stale as exc:
            raise BlobError(str(exc)) from None

    async def _get_once(self, ref: BlobRef) -> bytes:
        bucket = ref.bucket or self.bucket
        info = await self._info(bucket, ref.name)
        if info is None or info.deleted:
            raise _Stale(f"blob {ref.name} not found (expired or never stored)")
        if info.options is not None and info.options.link:
            return await self._get_via_nats_py(bucket, ref)
        if info.size != ref.size or _digest_hex(info.digest) != ref.sha256:
            raise BlobError(f"blob {ref.name} is corrupt (metadata does not match the reference)")
        try:
            data = await self._read_chunks(bucket, info) if ref.size else b""
        except _NoDirectGet:
            # A bucket made elsewhere without allow_direct: let nats-py read it (slowly).
            return await self._get_via_nats_py(bucket, ref)
        if len(data) != ref.size:
            raise BlobError(f"blob {ref.name} is corrupt (size mismatch)")
        return data

    # ---- internals ----------------------------------------------------------

    def _chunk_size(self) -> int:
        # Leave room for the protocol line and headers inside max_payload.
        limit = int(self.bus.nc.max_payload or 1024 * 1024) - 1024
        return max(1024, min(CHUNK_SIZE, limit))

    def _timeout(self, size: int) -> float:
        """Generous: 10 s plus 20 MB/s for the bytes."""
        return 10.0 + size / 20e6

    def _reusable(self, existing: _ObjectInfo, ref: BlobRef) -> bool:
        """An existing copy is reused unless deleted, different, or past half its lifetime."""
        if existing.deleted or existing.size != ref.size or _digest_hex(existing.digest) != ref.sha256:
            return False
        if existing.size and not existing.nuid:
            return False
        age = time.time() - _timestamp(existing.mtime)
        return age < self.max_age / 2

    async def _info(self, bucket: str, name: str) -> _ObjectInfo | None:
        """The current metadata of ``name`` (one direct get), or ``None`` if there is none.

        No responders is transient: the bucket's stream has no leader yet (an election) and
        every role may wait that out, while few may use the stream API (``STREAM.MSG.GET``,
        denied by the shipped permissions). So it is asked again (``unavailable_retry``), and
        only then is the stream API tried, for buckets made elsewhere without direct gets;
        where that is refused or the bucket does not exist, the read is a ``BlobError`` or
        ``None`` (missing).
        """

        def again(exc: BaseException, wait: float) -> None:
            log.debug("blob_store_no_responders", bucket=bucket, retry_in=wait)

        try:
            return await retrying(
                lambda: self._direct_info(bucket, name),
                self.unavailable_retry,
                retry_on=NoRespondersError,
                on_retry=again,
            )
        except NoRespondersError:
            pass
        stream = Names.object_stream(bucket)
        try:
            raw = await self.bus.js.get_msg(stream, subject=_meta_subject(bucket, name), direct=False)
        except (NotFoundError, ObjectNotFoundError):
            return None
        except (NatsTimeoutError, NoRespondersError, APIError) as exc:
            raise BlobError(f"blob store for bucket {bucket} did not answer ({type(exc).__name__})") from None
        return self._decode_info(raw.data or b"", name, "")

    async def _direct_info(self, bucket: str, name: str) -> _ObjectInfo | None:
        """One direct get of ``name``'s metadata; ``NoRespondersError`` when nobody answers it."""
        stream = Names.object_stream(bucket)
        try:
            msg = await self.bus.nc.request(
                Names.direct_get_subject(stream, _meta_subject(bucket, name)), b"", timeout=10.0
            )
        except NatsTimeoutError:
            raise BlobError(f"blob store did not answer for {name}") from None
        status = (msg.headers or {}).get("Status")
        if status == "404":
            return None
        if status:
            raise BlobError(f"blob store refused to read {name}: status {status}")
        return self._decode_info(msg.data, name, (msg.headers or {}).get("Nats-Time-Stamp", ""))

    @staticmethod
    def _decode_info(payload: bytes, name: str, stamp: str) -> _ObjectInfo:
        try:
            info = _decode_info(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise BlobError(f"blob {name} has unreadable metadata") from None
        if stamp:
            # The server's receive time is authoritative for age (as other clients read it).
            info.mtime = stamp
        return info

    async def _read_chunks(self, bucket: str, info: _ObjectInfo) -> bytes:
        """Every chunk of ``info`` via batched direct gets; verifies the digest as it goes."""
        if info.chunks <= 0 or not info.nuid:
            raise BlobError(f"blob {info.name} is corrupt (no chunks)")
        nc = self.bus.nc
        chunk_subject = Names.object_chunk_subject(bucket, info.nuid)
        parts: list[bytes] = []
        hasher = _Hasher(threaded=info.size >= THREAD_HASH_BYTES)
        received = 0
        next_seq = 1
        batch_done = anyio.Event()
        failure: list[str] = []
        no_direct: list[bool] = []

        async def on_msg(_: str, msg: Msg) -> None:
            nonlocal received, next_seq, batch_done
            headers = msg.headers or {}
            status = headers.get("Status")
            if status is not None and not msg.data:
                if status == "503":
                    no_direct.append(True)
                elif status not in _STATUS_END:
                    failure.append(f"status {status} {headers.get('Description', '')}".strip())
                batch_done.set()
                return
            data = msg.data
            hasher.update(data)
            parts.append(data)
            received += len(data)
            next_seq = int(headers.get("Nats-Sequence", next_seq)) + 1

        inbox = await self._inbox.register(on_msg)
        try:
            while received < info.size:
                before = received
                batch_done = anyio.Event()
                request = {"seq": next_seq, "next_by_subj": chunk_subject, "batch": min(info.chunks, self.batch_chunks)}
                subject = Names.direct_get_subject(Names.object_stream(bucket))
                await nc.publish(subject, json.dumps(request).encode(), reply=inbox)
                with anyio.move_on_after(self._timeout(info.size)) as scope:
                    await batch_done.wait()
                if scope.cancelled_caught:
                    raise BlobError(f"blob {info.name}: timed out reading chunks")
                if no_direct and not parts:
                    raise _NoDirectGet
                if failure:
                    raise BlobError(f"blob {info.name}: cannot read chunks ({failure[0]})")
                if received == before:
                    raise _Stale(f"blob {info.name} is corrupt (chunks missing)")
                if received > info.size:
                    raise BlobError(f"blob {info.name} is corrupt (more bytes than its size)")
        finally:
            self._inbox.unregister(inbox)
        if _DIGEST_PREFIX + base64.urlsafe_b64encode(await hasher.digest()).decode() != info.digest:
            raise BlobError(f"blob {info.name} is corrupt (checksum mismatch)")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _get_via_nats_py(self, bucket: str, ref: BlobRef) -> bytes:
        """Object links (never written by aiimg) and buckets without direct gets: nats-py's reader."""
        try:
            store = await self.bus.js.object_store(bucket)
            result = await store.get(ref.name)
        except (NotFoundError, ObjectNotFoundError):
            raise BlobError(f"blob {ref.name} not found (expired or never stored)") from None
        data = result.data or b""
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise BlobError(f"blob {ref.name} is corrupt (size or checksum mismatch)")
        return data

    async def _purge(self, bucket: str, subject: str) -> None:
        """Drop the chunks on ``subject`` (a failed or redundant upload), where this store may."""
        if not self.purge:
            log.debug("blob_chunks_left_to_ttl", bucket=bucket, subject=subject)
            return
        try:
            await self.bus.js.purge_stream(Names.object_stream(bucket), subject=subject)
        except (NatsTimeoutError, NotFoundError, APIError, ConnectionClosedError) as exc:
            # The chunks stay until the bucket's TTL (or forever in a bucket without one).
            log.warning("blob_chunks_not_purged", bucket=bucket, subject=subject, error=f"{type(exc).__name__}: {exc}")


class _Hasher:
    """SHA-256 fed in order; for big blobs on one shared worker thread.

    ``hashlib`` releases the GIL while it hashes, so a 40 MB digest (about 35 ms here)
    runs beside the event loop that moves the bytes instead of after it.
    """

    _pool: ThreadPoolExecutor | None = None
    _pool_lock = threading.Lock()

    def __init__(self, *, threaded: bool) -> None:
        self._hash = hashlib.sha256()
        self._threaded = threaded
        self._last: Future[None] | None = None

    @classmethod
    def _executor(cls) -> ThreadPoolExecutor:
        with cls._pool_lock:
            if cls._pool is None:
                # One worker: updates of one hash must run in the order they were submitted.
                cls._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aiimg-blob-hash")
            return cls._pool

    def update(self, data: bytes | memoryview) -> None:
        if self._threaded:
            self._last = self._executor().submit(self._hash.update, data)
        else:
            self._hash.update(data)

    async def digest(self) -> bytes:
        last = self._last
        if last is not None and not last.done():
            await anyio.to_thread.run_sync(last.result)
        elif last is not None:
            last.result()
        return self._hash.digest()


class _Stale(Exception):
    """Missing metadata or chunks: gone, or (on a cluster) a replica that is behind.

    A signal inside :meth:`BlobStore.get`, never raised out of it (it becomes ``BlobError``)."""


class _NoDirectGet(Exception):
    """The bucket's stream does not answer direct gets: a signal inside ``BlobStore.get`` only."""


class _Inbox:
    """One wildcard subscription per blob store for the replies of every put and get.

    A put (its chunks' acknowledgements) or a get (its batched direct-get answers)
    registers a handler under a fresh token and uses ``<inbox>.<token>[.<n>]`` as reply
    subjects. One subscription for the life of the store instead of a subscribe and an
    unsubscribe per blob: two protocol messages and two interest changes on the server for
    every result a provider stores and every result a client reads."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.prefix = ""
        self.handlers: dict[str, Callable[[str, Msg], Awaitable[None]]] = {}
        self._next = 0
        self._sub: Any = None
        self._lock = anyio.Lock()

    async def register(self, handler: Callable[[str, Msg], Awaitable[None]]) -> str:
        """Subscribe on first use; the reply subject prefix whose messages go to ``handler(rest, msg)``."""
        if self._sub is None:
            async with self._lock:
                if self._sub is None:
                    prefix = self.bus.nc.new_inbox()
                    # Chunks may add up to far more than nats-py's default pending limit: disable it.
                    self._sub = await self.bus.nc.subscribe(
                        prefix + ".>", cb=self._on_msg, pending_msgs_limit=0, pending_bytes_limit=0
                    )
                    self.prefix = prefix
        self._next += 1
        token = str(self._next)
        self.handlers[token] = handler
        return f"{self.prefix}.{token}"

    def unregister(self, subject_prefix: str) -> None:
        self.handlers.pop(subject_prefix.rpartition(".")[2], None)

    async def _on_msg(self, msg: Msg) -> None:
        token, _, rest = msg.subject[len(self.prefix) + 1 :].partition(".")
        handler = self.handlers.get(token)
        if handler is not None:
            await handler(rest, msg)


class _Acks:
    """Publishes one put's chunks with reply subjects on the store's ack inbox and tracks their acks."""

    def __init__(self, inbox: _Inbox, window: int) -> None:
        self.inbox = inbox
        self.bus = inbox.bus
        self.window = window
        self.reply_prefix = ""
        self.sent = 0
        self.acked = 0
        self.outstanding = 0
        self.sizes: dict[str, int] = {}
        self.error = ""
        self._changed = anyio.Event()

    async def start(self) -> None:
        self.reply_prefix = await self.inbox.register(self.on_ack)

    async def on_ack(self, token: str, msg: Msg) -> None:
        size = self.sizes.pop(token, None)
        if size is None:
            return
        if not self.error:
            self.error = _ack_error(msg.data, (msg.headers or {}).get("Status"))
        self.acked += 1
        self.outstanding -= size
        self._changed.set()

    async def publish(self, subject: str, payload: memoryview) -> None:
        await self._wait(lambda: self.outstanding + len(payload) <= self.window or self.outstanding == 0, 30.0)
        token = str(self.sent)
        self.sizes[token] = len(payload)
        self.outstanding += len(payload)
        self.sent += 1
        await self.bus.nc.publish(subject, payload, reply=f"{self.reply_prefix}.{token}")  # type: ignore[arg-type]

    async def wait_all(self, timeout: float) -> None:
        if self.sent:
            await self._wait(lambda: self.acked >= self.sent, timeout)

    async def _wait(self, ready: Callable[[], bool], timeout: float) -> None:
        with anyio.move_on_after(timeout) as scope:
            while not self.error and not ready():
                self._changed = anyio.Event()
                await self._changed.wait()
        if self.error:
            raise BlobError(f"blob store refused a chunk: {self.error}")
        if scope.cancelled_caught:
            raise BlobError(f"blob store did not acknowledge {self.sent - self.acked} of {self.sent} chunks")

    async def close(self) -> None:
        if self.reply_prefix:
            self.inbox.unregister(self.reply_prefix)


_meta_subject = Names.object_meta_subject


def _digest_hex(digest: str) -> str:
    """``SHA-256=<base64url>`` (either case of the prefix) → hex; '' if malformed."""
    if digest[: len(_DIGEST_PREFIX)].upper() != _DIGEST_PREFIX:
        return ""
    try:
        return base64.urlsafe_b64decode(digest[len(_DIGEST_PREFIX) :]).hex()
    except (ValueError, TypeError):
        return ""


def _timestamp(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time (nanoseconds allowed); 0 if unreadable."""
    if not text:
        return 0.0
    text = text.strip().replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def _ack_error(data: bytes, status: str | None) -> str:
    """'' for a stream publish ack, else what went wrong."""
    if status:
        return f"status {status}"
    try:
        doc = json.loads(data)
    except ValueError:
        return "unreadable acknowledgement"
    err = doc.get("error") if isinstance(doc, dict) else None
    if err:
        return str(err.get("description") or err) if isinstance(err, dict) else str(err)
    if not isinstance(doc, dict) or "seq" not in doc:
        return "unexpected acknowledgement"
    return ""


def _check_ack(data: bytes, what: str) -> None:
    error = _ack_error(data, None)
    if error:
        raise BlobError(f"blob store refused the {what}: {error}")
