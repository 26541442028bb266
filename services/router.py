"""The router actor: turns requests and attempt results into the next step of each job.

For every message on its consumer (requests, cancels, attempt results) it loads the
job's state — from its cache, or by replaying the job's history — applies the message,
asks :func:`services.routing.decide` what to do, and writes the resulting events.

Timers are durable: when a job is waiting for a provider, the router does not ack the
message that caused the wait but ``nak``s it with a delay equal to the time left until
the attempt's deadline. The server redelivers it then, even to a restarted router, and
the router counts the attempt as a timeout if it is still open. No timer lives only in
memory, so a router can be killed at any point and a new one continues every job.

All writes are idempotent (``Nats-Msg-Id`` per logical event; the fold keeps the first
result per attempt and the first terminal event), so several router replicas may share
the consumer for availability.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import anyio
import structlog
from nats.aio.msg import Msg
from structlog.contextvars import bound_contextvars

from messages import (
    AttemptDispatched,
    AttemptFailed,
    AttemptSucceeded,
    DecodeError,
    JobEvent,
    JobFailed,
    JobRequested,
    decode_event,
)

from .bus import Bus, StaleView, event_subject
from .routing import decide
from .runtime import PullConsumer, describe
from .state import JobState, apply, fold

__all__ = ("Router",)

log = structlog.get_logger("aiimg.router")


@dataclass(slots=True)
class _Entry:
    state: JobState
    last_seq: int
    timer_seq: int = 0
    """Stream seq of the message currently holding this job's durable timer."""
    timer_due: float = 0.0
    """When that message comes back."""


class Router:
    def __init__(self, bus: Bus, *, concurrency: int | None = None, cache_size: int = 20_000) -> None:
        self.bus = bus
        self.config = bus.config
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()
        """Recently finished jobs: their leftover timer messages are acked without a replay."""
        self._cache_size = cache_size
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}
        self.consumer = PullConsumer(
            bus,
            bus.names.router_consumer,
            self.handle,
            concurrency=concurrency or bus.config.actors.router_concurrency,
            name="router",
        )

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        log.info("router_started")
        await self.consumer.run(task_status=task_status)

    async def stop(self) -> None:
        await self.consumer.stop()

    # ---- per message ----------------------------------------------------------

    async def handle(self, msg: Msg) -> None:
        job_id = _job_id(self.bus, msg.subject)
        try:
            event = decode_event(msg.data)
        except DecodeError as exc:
            log.warning("rejected_message", reason=str(exc), job_id=job_id, **describe(msg))
            await msg.term()
            return
        if job_id is None or event.job_id != job_id:
            log.warning("rejected_message", reason="job id in body does not match the subject", **describe(msg))
            await msg.term()
            return
        if event_subject(self.bus.names, event) != msg.subject:
            # e.g. a job.requested.v1 on the attempt subject: whoever may publish attempt
            # results (a provider) must not be able to start or end jobs through it.
            tag = event.__struct_config__.tag
            log.warning("rejected_message", reason=f"{tag} does not belong on this subject", **describe(msg))
            await msg.term()
            return
        with bound_contextvars(job_id=job_id):
            async with self._lock(job_id):
                await self._step(msg, event)

    async def _step(self, msg: Msg, event: JobEvent) -> None:
        if event.job_id in self._finished:
            # A stale timer (or late result) of a job we finished: nothing to replay.
            self._finished.move_to_end(event.job_id)
            await msg.ack()
            return
        md = msg.metadata
        seq = md.sequence.stream
        entry = await self._load(event.job_id, seq, event, md.num_delivered)
        if entry.state.request is None:
            log.warning("rejected_message", reason="event for a job that was never requested", **describe(msg))
            await msg.term()
            return
        if entry.state.done:
            await msg.ack()
            self._forget_if_done(event.job_id)
            return
        conflicts = 0
        while True:
            now = time.time()
            decision = decide(entry.state, self.config, now)
            if decision.event is not None:
                written = decision.event
                try:
                    new_seq, duplicate = await self.bus.publish_checked(written, expect_last=entry.last_seq)
                except StaleView:
                    # Someone wrote to this job since our view (a provider result, a cancel,
                    # another router): read it back and decide again on the full history.
                    conflicts += 1
                    if conflicts > 5:
                        await msg.nak(delay=1.0)
                        return
                    entry = await self._reload(event.job_id)
                    continue
                if duplicate:
                    # Another router wrote this step first (or we did, before a crash):
                    # our view may be stale, so read the truth back.
                    entry = await self._reload(event.job_id)
                else:
                    entry.state = apply(entry.state, written)
                    entry.last_seq = max(entry.last_seq, new_seq)
                _log_written(written)
                continue
            if decision.wait_until is not None:
                if entry.timer_seq and entry.timer_seq != seq and entry.timer_due <= decision.wait_until + 0.5:
                    # Another message already holds this job's timer and fires in time.
                    await msg.ack()
                else:
                    entry.timer_seq = seq
                    entry.timer_due = decision.wait_until
                    await msg.nak(delay=max(0.001, decision.wait_until - now))
                return
            await msg.ack()
            self._forget_if_done(event.job_id)
            return

    # ---- state cache ----------------------------------------------------------

    async def _load(self, job_id: str, seq: int, event: JobEvent, delivered: int) -> _Entry:
        entry = self._cache.get(job_id)
        if entry is None:
            if isinstance(event, JobRequested) and delivered == 1:
                # Fast path for a fresh job: assume its request is its whole history. The
                # first write checks that assumption (expect_last=seq); if anything else was
                # written meanwhile, the write is refused and we replay the real history.
                return self._store(job_id, _Entry(state=apply(JobState(job_id=job_id), event), last_seq=seq))
            return await self._reload(job_id)
        self._cache.move_to_end(job_id)
        # Apply every incoming event, whatever its seq: our own writes may have moved past
        # an external event we have not seen yet (a cancel written while we dispatched).
        # ``apply`` ignores events it already has, so redeliveries are harmless.
        if not _fits(entry.state, event):
            return await self._reload(job_id)
        entry.state = apply(entry.state, event)
        entry.last_seq = max(entry.last_seq, seq)
        return entry

    async def _reload(self, job_id: str) -> _Entry:
        history, last = await self.bus.history_and_last(job_id)
        state = fold(job_id, (e for _, e in history))
        old = self._cache.get(job_id)
        entry = _Entry(
            state=state,
            last_seq=last,
            timer_seq=old.timer_seq if old else 0,
            timer_due=old.timer_due if old else 0.0,
        )
        return self._store(job_id, entry)

    def _store(self, job_id: str, entry: _Entry) -> _Entry:
        self._cache[job_id] = entry
        self._cache.move_to_end(job_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return entry

    def _forget_if_done(self, job_id: str) -> None:
        entry = self._cache.get(job_id)
        if entry is not None and entry.state.done:
            del self._cache[job_id]
            self._finished[job_id] = None
            while len(self._finished) > self._cache_size * 5:
                self._finished.popitem(last=False)

    def _lock(self, job_id: str) -> _JobLock:
        return _JobLock(self._locks, job_id)


class _JobLock:
    """A per-job lock that removes itself when nobody holds or waits for it."""

    __slots__ = ("_job", "_locks")

    def __init__(self, locks: dict[str, tuple[anyio.Lock, int]], job: str) -> None:
        self._locks = locks
        self._job = job

    async def __aenter__(self) -> None:
        lock, users = self._locks.get(self._job, (None, 0))
        if lock is None:
            lock = anyio.Lock()
        self._locks[self._job] = (lock, users + 1)
        await lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        lock, users = self._locks[self._job]
        lock.release()
        if users <= 1:
            del self._locks[self._job]
        else:
            self._locks[self._job] = (lock, users - 1)


def _fits(state: JobState, event: JobEvent) -> bool:
    """Whether ``event`` can follow ``state`` directly (else our cached view missed something)."""
    if isinstance(event, (AttemptSucceeded, AttemptFailed)):
        view = state.attempt(event.attempt)
        return view is not None and view.provider == event.provider
    return True


def _job_id(bus: Bus, subject: str) -> str | None:
    try:
        return bus.names.job_id_of(subject)
    except ValueError:
        return None


def _log_written(event: JobEvent) -> None:
    match event:
        case AttemptDispatched():
            log.info(
                "attempt_dispatched",
                attempt=event.attempt,
                provider=event.provider,
                delay=round(max(0.0, event.not_before - event.at), 3) if event.not_before else 0,
            )
        case AttemptFailed():
            log.info("attempt_timed_out", attempt=event.attempt, provider=event.provider)
        case JobFailed():
            log.info("job_failed", message=event.message, failures=len(event.failures))
        case _:
            log.info(event.__struct_config__.tag or "event_written")
