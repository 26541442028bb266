"""Results to the last hop, durably: who in this process waits for a job, and what chat saw last.

The bridge reads its client's terminal events from its own durable consumer
(``deliver-<client>``, filtered on ``<prefix>.job.*.done.<client>``) and acks one only once the
chat has it. Each event goes either to a live handler of this process that registered for
the job before submitting it (:class:`Waiters`: a command still waiting in its chat, or an
LLM tool's background delivery), or — when none does, e.g. after a restart or a reload of
the plugin — straight to the chat session stored in the job's request
(``JobRequested.origin["session"]``). :class:`LastResults` remembers the last result sent to
each chat, for ``/重发图片``.

Nothing here imports AstrBot: the sending itself is the bridge's (``flows``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import OrderedDict
from pathlib import Path
from types import TracebackType

import msgspec
import structlog

from ..messages import BlobRef, JobCompleted, TerminalEvent

__all__ = ("LastResult", "LastResults", "Stopped", "Waiter", "Waiters")

log = structlog.get_logger("aiimg.bridge.delivery")


class Stopped(Exception):
    """The bridge is stopping: the result will be delivered by the next start, not this waiter."""


class Waiter:
    """One live handler waiting for job ``job_id``'s terminal event.

    Registered with :meth:`Waiters.expect` before the job is submitted, so its terminal event
    can never arrive first. The deliverer hands the event over (:meth:`offer`) and waits for
    :meth:`settled`: the handler's ``with waiter:`` block ending normally means the chat got
    the outcome; ending with an exception (a cancel included) means it did not.
    """

    def __init__(self, owner: Waiters, job_id: str) -> None:
        self._owner = owner
        self.job_id = job_id
        loop = asyncio.get_running_loop()
        self._event: asyncio.Future[TerminalEvent] = loop.create_future()
        self._settled: asyncio.Future[bool] = loop.create_future()

    # ---- the handler's side ----------------------------------------------------------------

    async def wait(self, timeout: float | None = None) -> TerminalEvent:
        """The job's terminal event; ``TimeoutError`` after ``timeout``, :class:`Stopped` on stop."""
        return await asyncio.wait_for(asyncio.shield(self._event), timeout)

    def __enter__(self) -> Waiter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release(delivered=kind is None)

    def release(self, *, delivered: bool = False) -> None:
        """Unregister; tell the deliverer whether a handed-over event reached the chat."""
        self._owner.discard(self)
        if not self._event.done():
            self._event.cancel()
        if not self._settled.done():
            if self._handed:
                self._settled.set_result(delivered)
            else:
                self._settled.cancel()

    # ---- the deliverer's side --------------------------------------------------------------

    @property
    def _handed(self) -> bool:
        return self._event.done() and not self._event.cancelled() and self._event.exception() is None

    def offer(self, event: TerminalEvent) -> bool:
        """Hand ``event`` to the handler; False if it stopped waiting already."""
        if self._event.done():
            return False
        self._event.set_result(event)
        return True

    async def settled(self) -> bool:
        """After :meth:`offer`: True once the handler delivered it, False if it gave up."""
        try:
            return await asyncio.shield(self._settled)
        except asyncio.CancelledError:
            if self._settled.cancelled():
                return False
            raise

    def stop(self) -> None:
        if not self._event.done():
            self._event.set_exception(Stopped())


ABANDONED_KEEP = 1024
"""How many timed-out jobs are remembered (their late failure is not sent again)."""


class Waiters:
    """The live handlers of this process, by job id, and the jobs whose handlers gave up."""

    def __init__(self) -> None:
        self._live: dict[str, Waiter] = {}
        self._gave_up: OrderedDict[str, None] = OrderedDict()
        self.stopping = False

    def expect(self, job_id: str) -> Waiter:
        """Register a waiter for ``job_id`` (call before submitting the job)."""
        if self.stopping:
            raise Stopped()
        waiter = Waiter(self, job_id)
        self._live[job_id] = waiter
        return waiter

    def get(self, job_id: str) -> Waiter | None:
        return self._live.get(job_id)

    def discard(self, waiter: Waiter) -> None:
        if self._live.get(waiter.job_id) is waiter:
            del self._live[waiter.job_id]

    def gave_up(self, job_id: str) -> None:
        """The chat was told this job timed out (and it was cancelled): only a late success is news."""
        self._gave_up[job_id] = None
        while len(self._gave_up) > ABANDONED_KEEP:
            self._gave_up.popitem(last=False)

    def given_up(self, job_id: str) -> bool:
        return job_id in self._gave_up

    def stop(self) -> None:
        """Every waiter not handed its event yet stops waiting (:class:`Stopped`); no new ones."""
        self.stopping = True
        for waiter in list(self._live.values()):
            waiter.stop()


class LastResult(msgspec.Struct, kw_only=True):
    """The last result a chat got: enough to fetch and send it again."""

    job_id: str
    op: str
    result: BlobRef
    source_url: str = ""
    platform: str = ""
    at: float = 0.0


LAST_RESULTS_KEEP = 2000
"""Chats whose last result is remembered (the oldest are forgotten first)."""


class LastResults:
    """The last delivered result per chat session, in a small JSON file in the plugin's data dir.

    Only the blob reference is kept; the bytes are fetched from the blob store again (and are
    gone once ``retention.blob_max_age`` has passed).
    """

    def __init__(self, path: Path, keep: int = LAST_RESULTS_KEEP) -> None:
        self.path = path
        self.keep = keep

    def _load(self) -> dict[str, LastResult]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            return msgspec.json.decode(raw, type=dict[str, LastResult])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("last_results_unreadable", path=str(self.path), error=str(exc))
            return {}

    def get(self, session: str) -> LastResult | None:
        return self._load().get(session)

    def remember(self, session: str, end: JobCompleted, *, op: str, platform: str) -> None:
        if not session:
            return
        entries = self._load()
        entries.pop(session, None)
        entries[session] = LastResult(
            job_id=end.job_id, op=op, result=end.result, source_url=end.source_url, platform=platform, at=time.time()
        )
        while len(entries) > self.keep:
            del entries[next(iter(entries))]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(json.dumps(msgspec.to_builtins(entries), ensure_ascii=False).encode())
        os.replace(tmp, self.path)
