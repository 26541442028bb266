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
from nats.aio.msg import Msg
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from messages import (
    AttemptSucceeded,
    BlobRef,
    CancelRequested,
    JobCompleted,
    JobEvent,
    JobRequested,
    Operation,
    TerminalEvent,
    decode_event,
)
from messages._codec import DecodeError

from .blobs import BlobStore
from .bus import Bus, event_subject
from .errors import AiimgError, JobError, ProviderFailure
from .media import inspect_image

__all__ = ("Client", "new_job_id")


def new_job_id() -> str:
    """A fresh, time-ordered job id (subject-safe)."""
    return f"{int(time.time() * 1000):x}-{uuid.uuid4().hex[:16]}"


class Client:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.blobs = BlobStore(bus)

    async def put_image(self, data: bytes) -> BlobRef:
        """Validate and store an input image; raise ``AiimgError`` with a clear message if unusable."""
        try:
            info = inspect_image(data)
        except ProviderFailure as exc:
            raise AiimgError(f"input image rejected: {exc.message}") from None
        return await self.blobs.put(data, info)

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
        """Store input images, write ``JobRequested``; return the job id. Idempotent per ``job_id``."""
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
            )
        )
        return jid

    async def cancel(self, job_id: str, reason: str = "") -> None:
        await self.bus.publish(CancelRequested(job_id=job_id, reason=reason))

    async def follow(self, job_id: str, timeout: float | None = None) -> AsyncIterator[JobEvent]:
        """Every event of the job from the start, live, until (and including) the terminal one."""
        sub = await self.bus.js.subscribe(
            self.bus.names.subject("history", job_id),
            ordered_consumer=True,
            deliver_policy=js_api.DeliverPolicy.ALL,
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                wait = 5.0 if deadline is None else max(0.01, deadline - time.monotonic())
                try:
                    msg = await sub.next_msg(timeout=min(wait, 5.0))
                except TimeoutError:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise
                    continue
                try:
                    event = decode_event(msg.data)
                except DecodeError:
                    continue
                if event_subject(self.bus.names, event) != msg.subject:
                    continue  # not where this event belongs (see Bus.history)
                yield event
                if event.__struct_config__.tag in _TERMINAL_TAGS:
                    return
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def wait(self, job_id: str, timeout: float | None = None) -> TerminalEvent:
        """The job's terminal event.

        Cheaper than :meth:`follow`: a plain subscription to the job's ``done`` subject plus
        direct reads of the stored event — no consumer. The server routes a published
        message to live subscribers before its stream has stored it, so an event published
        just before our subscription became active may be neither delivered to us nor yet
        readable; the stored copy is therefore read again whenever the subscription has been
        quiet for a while (50 ms, doubling to 2 s).
        """
        subject = self.bus.names.subject("done", job_id)
        sub = await self.bus.nc.subscribe(subject)
        try:
            with anyio.fail_after(timeout) if timeout is not None else contextlib.nullcontext():
                quiet = 0.05
                while True:
                    end = await self._stored_terminal(subject)
                    if end is not None:
                        return end
                    try:
                        msg = await sub.next_msg(timeout=quiet)
                    except TimeoutError:
                        quiet = min(quiet * 2, 2.0)
                        continue
                    end = self._terminal(msg.data, msg.subject)
                    if end is not None:
                        return end
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _stored_terminal(self, subject: str) -> TerminalEvent | None:
        try:
            raw = await self.bus.js.get_msg(self.bus.names.jobs_stream, subject=subject, direct=True)
        except NotFoundError:
            return None
        return self._terminal(raw.data or b"", raw.subject or subject)

    def _terminal(self, data: bytes, subject: str) -> TerminalEvent | None:
        try:
            event = decode_event(data)
        except DecodeError:
            return None
        if event_subject(self.bus.names, event) != subject or event.__struct_config__.tag not in _TERMINAL_TAGS:
            return None  # not where a terminal event belongs (see Bus.history)
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
                except Exception:
                    pass  # read again below, from the completion's reference, and fail there
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
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
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


_TERMINAL_TAGS = frozenset({"job.completed.v1", "job.failed.v1", "job.cancelled.v1"})
