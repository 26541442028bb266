"""Submitting jobs and following them to their result, for the CLI, the bridge and tests.

This is a convenience over the wire contract, not a requirement: any NATS client can
publish a ``job.requested.v1`` JSON document and subscribe to the job's subjects
(``docs/nats-api.md``).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence

import anyio
import structlog
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from ...messages import (
    AttemptSucceeded,
    BlobRef,
    CancelRequested,
    JobCompleted,
    JobEvent,
    JobRequested,
    Operation,
    TerminalEvent,
    decode_event,
    placed,
)
from ...messages._codec import DecodeError
from ..domain.errors import AiimgError, JobError, MediaError
from ..infra.blobs import READ_RETRY, BlobStore
from ..infra.bus import Bus, unsubscribe
from ..infra.media import check_image
from ..infra.retry import Backoff

__all__ = ("QUIET", "Client", "new_job_id")

log = structlog.get_logger("aiimg.client")

QUIET = Backoff(0.05, cap=2.0)
"""How long a follower waits for news before it reads the stored history again: 50 ms,
doubling while nothing new arrives, at most 2 s (see :meth:`Client.follow`)."""


def new_job_id() -> str:
    """A fresh, time-ordered job id (subject-safe)."""
    return f"{int(time.time() * 1000):x}-{uuid.uuid4().hex[:16]}"


class Client:
    """A client of the service under ``nats.client_id``: its inputs go to its own bucket, its
    requests and cancels to subjects that name it (which its NATS user may publish to).

    ``read_retry``: how a result that looks missing is read again (a replica behind);
    ``quiet``: how often a quiet job's stored history is read again (:data:`QUIET`).
    """

    def __init__(self, bus: Bus, *, read_retry: Backoff = READ_RETRY, quiet: Backoff = QUIET) -> None:
        self.bus = bus
        self.client_id = bus.config.nats.client()
        self.quiet = quiet
        self.blobs = BlobStore(bus, read_retry=read_retry)
        """Reads any blob (results, inputs); writes nothing."""
        self.inputs = BlobStore(bus, bus.names.input_bucket(self.client_id), read_retry=read_retry)
        """This client's input images (a bucket only it writes, expiring like results)."""
        self._inputs_ready = False

    async def put_image(self, data: bytes) -> BlobRef:
        """Validate and store an input image; raise ``MediaError`` with a clear message if unusable."""
        try:
            info = await check_image(data, max_pixels=self.bus.config.limits.max_pixels)
        except MediaError as exc:
            raise MediaError(exc.kind, f"input image rejected: {exc.message}") from None
        if not self._inputs_ready:
            await self.bus.ensure_object_bucket(self.inputs.bucket, ttl=self.bus.config.retention.blob_max_age)
            self._inputs_ready = True
        return await self.inputs.put(data, info)

    async def submit(
        self,
        op: Operation,
        prompt: str = "",
        *,
        images: Sequence[bytes] = (),
        inputs: Sequence[BlobRef] = (),
        backend: str = "",
        output: str = "",
        origin: Mapping[str, str] | None = None,
        job_id: str | None = None,
    ) -> str:
        """Store input images, write ``JobRequested``; return the job id.

        A job id is used once: submitting an id that already has events raises
        :class:`~services.domain.errors.BusError` (``job id … was already used``).
        """
        refs = list(inputs) + [await self.put_image(img) for img in images]
        if op in ("edit", "selfie") and not refs:
            raise AiimgError(f"{op} needs at least one input image")
        jid = job_id or new_job_id()
        await self.bus.publish(
            JobRequested(
                job_id=jid,
                op=op,
                prompt=prompt,
                inputs=refs,
                backend=backend,
                output=output,
                origin=dict(origin or {}),
            ),
            client=self.client_id,
        )
        return jid

    async def cancel(self, job_id: str, reason: str = "") -> None:
        """Ask the router to cancel ``job_id``; honoured only for jobs this client requested."""
        await self.bus.publish(CancelRequested(job_id=job_id, reason=reason), client=self.client_id)

    async def follow(self, job_id: str, timeout: float | None = None) -> AsyncIterator[JobEvent]:
        """Every event of the job from the start, in stream order, live, until (and including) the terminal one.

        No consumer is created (a client's NATS user may not create consumers): the events are
        read from the stream with direct gets, and a plain subscription to the job's subjects
        only says when to read again. The server routes a message to live subscribers before
        the stream has stored it, so a wake-up may find nothing new yet; the history is then
        read again after a short quiet period (``quiet``: 50 ms, doubling to 2 s).
        """
        sub = await self.bus.nc.subscribe(self.bus.names.subject("history", job_id))
        deadline = None if timeout is None else time.monotonic() + timeout
        last = 0
        idle = 0  # reads in a row that found nothing new
        try:
            while True:
                job = await self.bus.read_job(job_id, after=last)
                last = max(last, job.last_seq)
                for entry in job.entries:
                    yield entry.event
                    if entry.event.__struct_config__.tag in _TERMINAL_TAGS:
                        return
                idle = 0 if job.entries else idle + 1
                quiet = self.quiet.delay(idle)
                wait = quiet if deadline is None else min(quiet, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError(f"job {job_id} did not finish in time")
                with contextlib.suppress(TimeoutError):  # quiet: read the stored history again
                    await sub.next_msg(timeout=wait)
                    # Drain what else arrived: one read covers all of it.
                    while sub.pending_msgs:
                        await sub.next_msg(timeout=0.01)
        finally:
            await unsubscribe(sub)

    async def wait(self, job_id: str, timeout: float | None = None) -> TerminalEvent:
        """The job's terminal event.

        Cheaper than :meth:`follow`: a plain subscription to the job's ``done`` subject plus
        direct reads of the stored event — no consumer. The server routes a published
        message to live subscribers before its stream has stored it, so an event published
        just before our subscription became active may be neither delivered to us nor yet
        readable; the stored copy is therefore read again whenever the subscription has been
        quiet for a while (``quiet``: 50 ms, doubling to 2 s).
        """
        subject = self.bus.names.subject("done", job_id)
        sub = await self.bus.nc.subscribe(subject)
        try:
            with anyio.fail_after(timeout) if timeout is not None else contextlib.nullcontext():
                idle = 1
                while True:
                    end = await self._stored_terminal(subject)
                    if end is not None:
                        return end
                    try:
                        msg = await sub.next_msg(timeout=self.quiet.delay(idle))
                    except TimeoutError:
                        idle += 1
                        continue
                    if self._terminal(msg.data, msg.subject) is not None:
                        # Return the first stored terminal event, not whichever arrived live.
                        end = await self._stored_terminal(subject)
                        if end is None:
                            end = self._terminal(msg.data, msg.subject)
                        if end is not None:
                            return end
        finally:
            await unsubscribe(sub)

    async def _stored_terminal(self, subject: str) -> TerminalEvent | None:
        """The job's first stored terminal event (the one every reader agrees on), if any."""
        seq = 1
        while True:
            try:
                raw = await self.bus.js.get_msg(
                    self.bus.names.jobs_stream, seq=seq, subject=subject, next=True, direct=True
                )
            except NotFoundError:
                return None
            end = self._terminal(raw.data or b"", raw.subject or subject)
            if end is not None:
                return end
            seq = int(raw.seq or seq) + 1

    def _terminal(self, data: bytes, subject: str) -> TerminalEvent | None:
        try:
            event = decode_event(data)
            where = self.bus.names.parse(subject)
        except (DecodeError, ValueError):
            return None
        if not placed(where, event) or event.__struct_config__.tag not in _TERMINAL_TAGS:
            return None  # not where a terminal event belongs (see Bus.read_job)
        return event  # type: ignore[return-value]

    async def result(self, job_id: str, timeout: float | None = None) -> tuple[JobCompleted, bytes]:
        """Wait for the job; return its completion and the result bytes, or raise ``JobError``.

        The result blob is fetched as soon as a provider reports success, while the router
        is still writing the completion (which names the same blob); the blob is stored
        before that report is published, so fetching it early is safe. If the completion
        names another blob, or the early fetch failed, the completion's blob is read.
        """
        early: dict[str, tuple[BlobRef, anyio.Event, list[bytes]]] = {}

        async with anyio.create_task_group() as tg:

            async def fetch(ref: BlobRef, done: anyio.Event, out: list[bytes]) -> None:
                try:
                    out.append(await self.blobs.get(ref))
                except Exception as exc:
                    # An early read only saves time: whatever went wrong, the blob is read again
                    # below, from the completion's reference, and a failure that persists is raised there.
                    log.info(
                        "early_result_read_failed", job_id=job_id, blob=ref.name, error=f"{type(exc).__name__}: {exc}"
                    )
                finally:
                    done.set()

            async def on_attempt(msg: Msg) -> None:
                try:
                    event = decode_event(msg.data)
                except DecodeError:
                    return
                if isinstance(event, AttemptSucceeded) and event.job_id == job_id and event.result.name not in early:
                    entry: tuple[BlobRef, anyio.Event, list[bytes]] = (event.result, anyio.Event(), [])
                    early[event.result.name] = entry
                    tg.start_soon(fetch, *entry)

            sub = await self.bus.nc.subscribe(self.bus.names.subject("attempt", job_id), cb=on_attempt)
            failure: Exception | None = None
            data: bytes | None = None
            try:
                end = await self.wait(job_id, timeout=timeout)
            except Exception as exc:
                # Raised after the task group, so a timeout stays a TimeoutError even while an
                # early read is still running (inside, anyio would wrap it in an ExceptionGroup).
                failure = exc
            else:
                if isinstance(end, JobCompleted):
                    hit = early.get(end.result.name)
                    if hit is not None and hit[0] == end.result:
                        await hit[1].wait()
                        data = hit[2][0] if hit[2] else None
            finally:
                await unsubscribe(sub)
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if not isinstance(end, JobCompleted):
            raise JobError(end)
        if data is None:
            data = await self.blobs.get(end.result)
        return end, data

    async def run(self, op: Operation, prompt: str = "", *, timeout: float | None = None, **kw: object) -> bytes:
        """Submit and wait: the result bytes (raises ``JobError`` on failure)."""
        job_id = await self.submit(op, prompt, **kw)  # type: ignore[arg-type]
        with anyio.fail_after(timeout) if timeout else contextlib.nullcontext():
            _, data = await self.result(job_id)
        return data


_TERMINAL_TAGS = frozenset({"job.completed.v1", "job.failed.v1", "job.cancelled.v1", "job.rejected.v1"})
