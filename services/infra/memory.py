"""An in-memory job bus: the job stream, durable consumers and blobs of one process, no NATS.

:class:`MemoryBus` has the same surface the actors use on JetStream
(:class:`services.actors.ports.JobBus`): optimistic writes over a job's history, histories
read back with their writers, durable consumers with explicit ack, ``nak`` with a delay,
``term``, ``+WPI`` and redelivery after ``ack_wait``, terminal-event notices and a
content-addressed blob store. The contract tests (``tests/contracts/``) run the router and
the provider actor on it and on a real nats-server, so both must behave alike; it is also
a quick way to run actors in a test of one's own provider.

It keeps everything, forever, in one process: not for production.
"""

from __future__ import annotations

import hashlib
import heapq
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
import structlog
from anyio.abc import TaskStatus

from ...messages import (
    BlobRef,
    DecodeError,
    Event,
    JobRequested,
    Names,
    ProviderHealth,
    decode_event,
    encode,
    event_subject,
    placed,
)
from ..domain.config import ConfigBase as Config
from ..domain.errors import BlobError, BusError, StaleView
from .bus import JobLog, Logged, consumer_configs
from .delivery import Delivery, crash_delay
from .health import decode_health
from .media import MediaInfo, sniff_mime

__all__ = ("MemoryBlobStore", "MemoryBus", "MemoryConsumer", "MemoryHealth")

log = structlog.get_logger("aiimg.memory")

Handler = Callable[[Delivery], Awaitable[None]]


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, ``>`` the rest (one token at least)."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or (token != "*" and token != got[i]):
            return False
    return len(got) == len(want)


@dataclass(frozen=True, slots=True)
class _Stored:
    seq: int
    subject: str
    data: bytes


class MemoryBus:
    """The job stream and everything around it, in memory (see the module docstring)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.names = Names(config.nats.prefix)
        self._stream: list[_Stored] = []
        self._msg_ids: dict[str, int] = {}
        self._consumers: dict[str, MemoryConsumer] = {}
        self._done: list[Callable[[str], Awaitable[None]]] = []
        self._blobs: dict[tuple[str, str], bytes] = {}
        self._health = MemoryHealth()

    async def close(self) -> None:
        """Nothing to release (the same surface as ``Bus``)."""

    # ---- the job stream ---------------------------------------------------------------

    async def publish(self, event: Event, *, client: str = "") -> int:
        return (await self.publish_checked(event, client=client))[0]

    async def publish_checked(
        self, event: Event, *, client: str = "", expect_last: int | None = None, msg_id: str = ""
    ) -> tuple[int, bool]:
        """Append ``event``, with ``Bus.publish_checked``'s rules: a request only while its job is
        empty, ``expect_last`` over the whole job (else :class:`StaleView`), ``msg_id`` dedupe."""
        data = encode(event)
        try:
            decode_event(data)
        except DecodeError as exc:
            raise BusError(f"refusing to write an invalid {event.__struct_config__.tag}: {exc}") from None
        if msg_id and msg_id in self._msg_ids:
            return self._msg_ids[msg_id], True
        if isinstance(event, JobRequested):
            expect_last = 0
        subject = event_subject(self.names, event, client or self.config.nats.client())
        if expect_last is not None:
            last = self._last_seq(event.job_id)
            if last != expect_last:
                if isinstance(event, JobRequested):
                    first = next(
                        (
                            m
                            for m in self._stream
                            if subject_matches(self.names.subject("history", event.job_id), m.subject)
                        ),
                        None,
                    )
                    if first is not None and (first.subject, first.data) == (subject, data):
                        return first.seq, True  # our own earlier write (see Bus.publish_checked)
                    raise BusError(f"job id {event.job_id} was already used")
                raise StaleView(f"job {event.job_id} has events newer than seq {expect_last}")
        if msg_id:
            self._msg_ids[msg_id] = len(self._stream) + 1
        return await self.publish_raw(subject, data), False

    async def publish_raw(self, subject: str, data: bytes) -> int:
        """Store any bytes on any subject of the layout (what a client with publish rights could do);
        like the stream, refuse any other subject."""
        if not any(subject_matches(pattern, subject) for pattern in self.names.jobs_subjects):
            raise BusError(f"no stream takes subject {subject!r}")
        seq = len(self._stream) + 1
        self._stream.append(_Stored(seq, subject, data))
        for consumer in self._consumers.values():
            consumer.wake()
        if subject_matches(self.names.subject("done"), subject):
            job_id = self.names.parse(subject).job_id
            for callback in list(self._done):
                await callback(job_id)
        return seq

    def _last_seq(self, job_id: str) -> int:
        pattern = self.names.subject("history", job_id)
        return max((m.seq for m in self._stream if subject_matches(pattern, m.subject)), default=0)

    def messages(self, after: int = 0) -> list[_Stored]:
        return self._stream[after:]

    async def read_job(self, job_id: str, *, after: int = 0) -> JobLog:
        pattern = self.names.subject("history", job_id)
        entries: list[Logged] = []
        last = 0
        for m in self._stream[after:]:
            if not subject_matches(pattern, m.subject):
                continue
            last = m.seq
            try:
                event = decode_event(m.data)
                where = self.names.parse(m.subject)
            except (DecodeError, ValueError):
                continue
            if placed(where, event):
                entries.append(Logged(m.seq, where.token, event))
        return JobLog(entries, last)

    async def first_seq(self, job_id: str) -> int:
        pattern = self.names.subject("history", job_id)
        return next((m.seq for m in self._stream if subject_matches(pattern, m.subject)), 0)

    async def check_consumers(self, *, repair: bool) -> dict[str, list[str]]:
        return {}  # consumers here are built from the layout and cannot be changed from outside

    # ---- consumers, notices, blobs -----------------------------------------------------

    def consumer(self, durable: str, handler: Handler, *, concurrency: int, name: str = "") -> MemoryConsumer:
        configs = {c.name: c for c in consumer_configs(self.names, self.config)}
        if durable not in configs:
            raise BusError(f"no durable consumer {durable} in the layout")
        before = self._consumers.get(durable)
        if before is not None and not before._stopped.is_set():
            raise BusError(f"in-memory bus: consumer {durable} already has a runner")
        cfg = configs[durable]
        filters = list(cfg.filter_subjects or ([cfg.filter_subject] if cfg.filter_subject else []))
        consumer = MemoryConsumer(self, filters, handler, concurrency, float(cfg.ack_wait or 30.0), name or durable)
        if before is not None:
            # A restarted actor on the same durable: it continues where the stopped one left off,
            # unacked and held-back messages included (as on JetStream).
            consumer._next, consumer._pending, consumer._due = before._next, before._pending, before._due
        self._consumers[durable] = consumer
        return consumer

    async def on_done(self, callback: Callable[[str], Awaitable[None]]) -> _Closer:
        self._done.append(callback)
        return _Closer(lambda: self._done.remove(callback))

    async def ensure_object_bucket(self, bucket: str, *, ttl: float = 0.0) -> None:
        """Buckets need no creating here."""

    def blob_store(self, bucket: str | None = None, *, purge: bool = True) -> MemoryBlobStore:
        return MemoryBlobStore(self._blobs, bucket or self.names.blob_bucket, self.config.retention.max_blob_bytes)

    def health(self) -> MemoryHealth:
        return self._health


class MemoryHealth:
    """Breaker records by key with revisions, as the KV bucket keeps them (see ``infra.health``)."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[bytes, int]] = {}
        self._revision = 0
        self._listeners: list[Callable[[str], Awaitable[None]]] = []

    async def read(self, key: str) -> tuple[ProviderHealth | None, int]:
        if key not in self._records:
            return None, 0
        data, revision = self._records[key]
        return decode_health(key, data), revision

    async def write(self, key: str, health: ProviderHealth, revision: int) -> int | None:
        current = self._records.get(key, (b"", 0))[1]
        if current != revision:
            return None
        self._revision += 1
        self._records[key] = (msgspec.json.encode(health), self._revision)
        for listener in list(self._listeners):
            await listener(key)
        return self._revision

    async def on_change(self, callback: Callable[[str], Awaitable[None]]) -> _Closer:
        self._listeners.append(callback)
        return _Closer(lambda: self._listeners.remove(callback))


class _Closer:
    def __init__(self, close: Callable[[], None]) -> None:
        self._close = close

    async def close(self) -> None:
        self._close()


class MemoryBlobStore:
    """Content-addressed blobs (``sha256-<hex>``) in a dict shared by the bus's stores."""

    def __init__(self, blobs: dict[tuple[str, str], bytes], bucket: str, max_bytes: int) -> None:
        self._blobs = blobs
        self.bucket = bucket
        self.max_bytes = max_bytes

    async def put(self, data: bytes, info: MediaInfo | None = None) -> BlobRef:
        if len(data) > self.max_bytes:
            raise BlobError(f"blob of {len(data)} bytes exceeds retention.max_blob_bytes={self.max_bytes}")
        digest = hashlib.sha256(data).hexdigest()
        ref = BlobRef(
            name=f"sha256-{digest}",
            size=len(data),
            sha256=digest,
            mime=info.mime if info else (sniff_mime(data) or "application/octet-stream"),
            width=info.width if info else 0,
            height=info.height if info else 0,
            bucket=self.bucket,
        )
        self._blobs[(self.bucket, ref.name)] = bytes(data)
        return ref

    async def get(self, ref: BlobRef) -> bytes:
        data = self._blobs.get((ref.bucket, ref.name))
        if data is None:
            raise BlobError(f"blob {ref.name} not found (expired or never stored)")
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise BlobError(f"blob {ref.name} is corrupt (size or checksum mismatch)")
        return data


@dataclass(slots=True)
class _Pending:
    delivered: int = 0
    ack_by: float = 0.0
    """While delivered and unanswered: when ``ack_wait`` runs out and it is redelivered."""


class MemoryDelivery:
    """One delivery of a stored message by a :class:`MemoryConsumer`."""

    __slots__ = ("_answered", "_consumer", "_delivered", "_msg")

    def __init__(self, consumer: MemoryConsumer, msg: _Stored, delivered: int) -> None:
        self._consumer = consumer
        self._msg = msg
        self._delivered = delivered
        self._answered = False

    @property
    def subject(self) -> str:
        return self._msg.subject

    @property
    def data(self) -> bytes:
        return self._msg.data

    @property
    def seq(self) -> int:
        return self._msg.seq

    @property
    def delivered(self) -> int:
        return self._delivered

    def _answer(self) -> bool:
        if self._answered:
            return False
        self._answered = True
        return True

    async def ack(self) -> None:
        if self._answer():
            self._consumer.settle(self._msg.seq)

    async def term(self) -> None:
        if self._answer():
            self._consumer.settle(self._msg.seq)

    async def nak(self, delay: float | None = None) -> None:
        if self._answer():
            self._consumer.redeliver(self._msg.seq, delay or 0.0)

    async def in_progress(self) -> None:
        if not self._answered:
            self._consumer.extend(self._msg.seq)

    def describe(self) -> dict[str, Any]:
        return {"subject": self.subject, "seq": self.seq, "delivered": self._delivered}


@dataclass(slots=True)
class MemoryConsumer:
    """A durable pull consumer on a :class:`MemoryBus`: deliver-all, explicit ack, ``concurrency`` at a time."""

    bus: MemoryBus
    filters: list[str]
    handler: Handler
    concurrency: int
    ack_wait: float
    name: str
    _next: int = 0
    """Index of the next stored message this consumer has not looked at."""
    _pending: dict[int, _Pending] = field(default_factory=dict)
    _due: list[tuple[float, int]] = field(default_factory=list)
    """(when, seq) of messages handed back (``nak``) or out of ``ack_wait``: delivered before new ones."""
    _in_flight: int = 0
    _wake: anyio.Event = field(default_factory=anyio.Event)
    _stopping: anyio.Event = field(default_factory=anyio.Event)
    _stopped: anyio.Event = field(default_factory=anyio.Event)

    def wake(self) -> None:
        self._wake.set()

    def settle(self, seq: int) -> None:
        self._pending.pop(seq, None)
        self.wake()

    def redeliver(self, seq: int, delay: float) -> None:
        pending = self._pending.get(seq)
        if pending is not None:
            pending.ack_by = 0.0
            heapq.heappush(self._due, (time.monotonic() + max(0.0, delay), seq))
        self.wake()

    def extend(self, seq: int) -> None:
        pending = self._pending.get(seq)
        if pending is not None and pending.ack_by:
            pending.ack_by = time.monotonic() + self.ack_wait

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with anyio.create_task_group() as tg:
                task_status.started()
                while not self._stopping.is_set():
                    self._wake = anyio.Event()
                    self._expire_ack_waits()
                    while self._in_flight < self.concurrency:
                        nxt = self._take()
                        if nxt is None:
                            break
                        self._in_flight += 1
                        tg.start_soon(self._run_one, nxt)
                    with anyio.move_on_after(self._sleep()):
                        await self._wake.wait()
                with anyio.move_on_after(30.0):
                    while self._in_flight:
                        self._wake = anyio.Event()
                        await self._wake.wait()
                tg.cancel_scope.cancel()
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        self._stopping.set()
        self.wake()
        await self._stopped.wait()

    def _take(self) -> MemoryDelivery | None:
        now = time.monotonic()
        while self._due and self._due[0][0] <= now:
            _, seq = heapq.heappop(self._due)
            pending = self._pending.get(seq)
            if pending is not None and not pending.ack_by:
                return self._deliver(self.bus.messages(seq - 1)[0], pending)
        stream = self.bus.messages(self._next)
        for msg in stream:
            self._next = msg.seq
            if any(subject_matches(f, msg.subject) for f in self.filters):
                pending = self._pending.setdefault(msg.seq, _Pending())
                return self._deliver(msg, pending)
        return None

    def _deliver(self, msg: _Stored, pending: _Pending) -> MemoryDelivery:
        pending.delivered += 1
        pending.ack_by = time.monotonic() + self.ack_wait
        return MemoryDelivery(self, msg, pending.delivered)

    def _expire_ack_waits(self) -> None:
        now = time.monotonic()
        for seq, pending in self._pending.items():
            if pending.ack_by and pending.ack_by <= now:
                pending.ack_by = 0.0
                heapq.heappush(self._due, (now, seq))

    def _sleep(self) -> float:
        now = time.monotonic()
        times = [due for due, _ in self._due[:1]] + [p.ack_by for p in self._pending.values() if p.ack_by]
        return max(0.001, min(times) - now) if times else 1.0

    async def _run_one(self, delivery: MemoryDelivery) -> None:
        try:
            await self.handler(delivery)
        except anyio.get_cancelled_exc_class():
            await delivery.nak()
            raise
        except Exception:
            delay = crash_delay(delivery.delivered)
            log.exception("handler_crashed", consumer=self.name, retry_in=delay, **delivery.describe())
            await delivery.nak(delay)
        finally:
            self._in_flight -= 1
            self.wake()
