"""The router actor: turns requests and attempt results into the next step of each job.

For every message on its consumer (requests, cancels, attempt results) it loads the
job's state — from its cache, or by replaying the job's history — applies the message,
asks :func:`services.routing.decide` what to do, and writes the resulting events.

Timers are durable: when a job is waiting for a provider, the router does not ack the
message that caused the wait but ``nak``s it with a delay equal to the time left until
the attempt's deadline. The server redelivers it then, even to a restarted router, and
the router counts the attempt as a timeout if it is still open. No timer lives only in
memory, so a router can be killed at any point and a new one continues every job.

Every write is optimistic (``Nats-Expected-Last-Subject-Sequence`` over the whole job):
it lands only if the job has nothing the router has not seen, so several router
replicas may share the consumer, and a replay after a crash never writes a step twice.
No write carries a message id a client could guess and publish first.

Trust: the subject a message arrived on names its writer, and NATS permissions decide
who may publish there (``deploy/permissions.py``). The router only believes an attempt
result from the provider the attempt was dispatched to, a cancel from the client that
requested the job, and a job id once (a second request for a used id runs nothing).
"""

from __future__ import annotations

import heapq
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

import anyio
import structlog
from nats.aio.msg import Msg
from structlog.contextvars import bound_contextvars

from ...messages import (
    AttemptDispatched,
    AttemptFailed,
    AttemptSucceeded,
    DecodeError,
    JobEvent,
    JobFailed,
    JobRejected,
    JobRequested,
    decode_event,
    placed,
)
from ..domain.errors import BusError
from ..domain.routing import decide
from ..domain.state import JobState, apply
from ..infra.bus import Bus, StaleView
from .runtime import PullConsumer, describe

__all__ = ("Admission", "Router")

log = structlog.get_logger("aiimg.router")

MAX_WRITES_PER_MESSAGE = 32
"""Writes one message may cause before the router stops and looks again later. A job's
whole life is a few writes; more means something keeps invalidating the router's view."""

STALE_RETRY_DELAY = 1.0
"""Seconds before a message whose writes kept being refused is handled again, doubling per
delivery up to ``MAX_STALE_RETRY_DELAY`` (so an incident logs a few lines, not one a second)."""
MAX_STALE_RETRY_DELAY = 60.0

CONSUMER_CHECK_INTERVAL = 60.0
"""Seconds between checks that every durable consumer still has the layout's config."""


@dataclass(slots=True)
class _Entry:
    state: JobState
    last_seq: int
    request_seq: int = 0
    """Stream seq of the job's (first) request: any other request message is a duplicate."""
    timer_seq: int = 0
    """Stream seq of the message currently holding this job's durable timer."""
    timer_due: float = 0.0
    """When that message comes back."""


class Admission:
    """How many jobs each client, and each user of a client, has running (``limits.*``).

    In memory, per router: a restarted router recounts a running job when it next handles
    one of its messages, and an entry expires when its attempt's deadline passes without
    the router seeing the job again (another replica may have finished it). Replicas each
    count the jobs they handle, so the limits hold per replica.
    """

    def __init__(self, per_client: int, per_user: int) -> None:
        self.per_client = per_client
        self.per_user = per_user
        self._jobs: dict[str, tuple[str, str, float]] = {}
        self._clients: Counter[str] = Counter()
        self._users: Counter[tuple[str, str]] = Counter()
        self._expiry: list[tuple[float, str]] = []

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._jobs

    def running(self, client: str, user: str = "") -> int:
        self._expire(time.time())
        return self._users[(client, user)] if user else self._clients[client]

    def refused(self, client: str, user: str) -> str | None:
        """Why a new job of ``client``/``user`` may not start now, or ``None``."""
        self._expire(time.time())
        if self.per_client > 0 and self._clients[client] >= self.per_client:
            return f"client {client} already has {self._clients[client]} jobs running (limits.max_jobs_per_client)"
        if user and self.per_user > 0 and self._users[(client, user)] >= self.per_user:
            return f"user {user} already has {self._users[(client, user)]} jobs running (limits.max_jobs_per_user)"
        return None

    def admit(self, job_id: str, client: str, user: str, until: float) -> None:
        """Count ``job_id`` as running until ``until`` (renewed by :meth:`renew`)."""
        if job_id in self._jobs:
            self.renew(job_id, until)
            return
        self._jobs[job_id] = (client, user, until)
        self._clients[client] += 1
        if user:
            self._users[(client, user)] += 1
        heapq.heappush(self._expiry, (until, job_id))

    def renew(self, job_id: str, until: float) -> None:
        entry = self._jobs.get(job_id)
        if entry is not None and until > entry[2]:
            self._jobs[job_id] = (entry[0], entry[1], until)
            heapq.heappush(self._expiry, (until, job_id))

    def release(self, job_id: str) -> None:
        entry = self._jobs.pop(job_id, None)
        if entry is None:
            return
        client, user, _ = entry
        self._clients[client] -= 1
        if self._clients[client] <= 0:
            del self._clients[client]
        if user:
            self._users[(client, user)] -= 1
            if self._users[(client, user)] <= 0:
                del self._users[(client, user)]

    def _expire(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] < now:
            until, job_id = heapq.heappop(self._expiry)
            entry = self._jobs.get(job_id)
            if entry is not None and entry[2] <= until:
                self.release(job_id)


class Router:
    def __init__(
        self,
        bus: Bus,
        *,
        concurrency: int | None = None,
        cache_size: int = 20_000,
        consumer_check_interval: float = CONSUMER_CHECK_INTERVAL,
    ) -> None:
        self.bus = bus
        self.config = bus.config
        self.consumer_check_interval = consumer_check_interval
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()
        """Recently finished jobs: their leftover timer messages are acked without a replay."""
        self._cache_size = cache_size
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}
        limits = bus.config.limits
        self.admission = Admission(limits.max_jobs_per_client, limits.max_jobs_per_user)
        self.consumer = PullConsumer(
            bus,
            bus.names.router_consumer,
            self.handle,
            concurrency=concurrency or bus.config.actors.router_concurrency,
            name="router",
        )

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # The router owns the layout: a consumer re-filtered, paused or throttled by anyone
        # (a past misconfiguration, a client with too many rights) is put back before work starts.
        await self.bus.check_consumers(repair=True)
        log.info("router_started")
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_consumers)
            await self.consumer.run(task_status=task_status)
            tg.cancel_scope.cancel()

    async def stop(self) -> None:
        await self.consumer.stop()

    async def _watch_consumers(self) -> None:
        while True:
            await anyio.sleep(self.consumer_check_interval)
            try:
                await self.bus.check_consumers(repair=True)
            except (BusError, OSError, TimeoutError) as exc:
                log.warning("consumer_check_failed", error=str(exc))

    # ---- per message ----------------------------------------------------------

    async def handle(self, msg: Msg) -> None:
        try:
            where = self.bus.names.parse(msg.subject)
        except ValueError as exc:
            log.warning("rejected_message", reason=str(exc), **describe(msg))
            await msg.term()
            return
        try:
            event = decode_event(msg.data)
        except DecodeError as exc:
            log.warning("rejected_message", reason=str(exc), job_id=where.job_id, **describe(msg))
            await msg.term()
            return
        if not placed(where, event):
            # e.g. a job.requested.v1 on an attempt subject, or a result that claims another
            # provider's attempt: whoever may publish there must not start, end or answer jobs
            # through it.
            tag = event.__struct_config__.tag
            log.warning(
                "rejected_message",
                reason=f"{tag} does not belong on this subject",
                job_id=where.job_id,
                **describe(msg),
            )
            await msg.term()
            return
        with bound_contextvars(job_id=where.job_id):
            async with self._lock(where.job_id):
                await self._step(msg, where.token, event)

    async def _step(self, msg: Msg, writer: str, event: JobEvent) -> None:
        job_id = event.job_id
        if job_id in self._finished:
            # A stale timer, a late result or a reused job id of a job we finished: nothing to replay.
            self._finished.move_to_end(job_id)
            if isinstance(event, JobRequested) and msg.metadata.num_delivered == 1:
                # (The first request's own timer comes back redelivered, never as a first delivery.)
                log.warning("duplicate_request", client=writer, reason="job id already used; nothing runs")
            await msg.ack()
            return
        md = msg.metadata
        seq = md.sequence.stream
        entry = await self._load(job_id, seq, writer, event, md.num_delivered)
        state = entry.state
        if state.request is None:
            log.warning("rejected_message", reason="event for a job that was never requested", **describe(msg))
            await msg.term()
            return
        if isinstance(event, JobRequested) and seq != entry.request_seq:
            log.warning("duplicate_request", client=writer, reason="job id already used; nothing runs")
        if state.done:
            self.admission.release(job_id)
            await msg.ack()
            self._forget_if_done(job_id)
            return
        if state.attempts and job_id not in self.admission:
            # Running since before this router started (or handled by another replica so far).
            user = state.request.origin.get("user", "")
            self.admission.admit(job_id, state.client, user, state.attempts[-1].dispatch.deadline)
        for _ in range(MAX_WRITES_PER_MESSAGE):
            now = time.time()
            decision = decide(entry.state, self.config, now)
            if decision.event is not None:
                written = self._admit(entry.state, decision.event, now)
                try:
                    new_seq, _ = await self.bus.publish_checked(written, expect_last=entry.last_seq)
                except StaleView:
                    # Someone wrote to this job since our view (a provider result, a cancel,
                    # another router): read it back and decide again on the full history.
                    entry = await self._reload(job_id)
                    if entry.state.done:
                        break
                    continue
                entry.state = apply(entry.state, written)
                entry.last_seq = max(entry.last_seq, new_seq)
                if isinstance(written, AttemptDispatched):
                    self.admission.renew(job_id, written.deadline)
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
            break
        else:
            # Writes kept being refused or kept leading to more writes: look again later,
            # once, instead of spinning (one log line per incident, not per attempt).
            delay = min(MAX_STALE_RETRY_DELAY, STALE_RETRY_DELAY * 2.0 ** min(md.num_delivered - 1, 16))
            log.error("router_step_limit", writes=MAX_WRITES_PER_MESSAGE, retry_in=delay, **describe(msg))
            await msg.nak(delay=delay)
            return
        if entry.state.done:
            self.admission.release(job_id)
        await msg.ack()
        self._forget_if_done(job_id)

    def _admit(self, state: JobState, event: JobEvent, now: float) -> JobEvent:
        """The first dispatch of a job starts it: refuse it if its client or user is at their limit."""
        if not isinstance(event, AttemptDispatched) or event.attempt != 1 or state.request is None:
            return event
        user = state.request.origin.get("user", "")
        why = self.admission.refused(state.client, user)
        if why is not None:
            return JobRejected(job_id=state.job_id, reason="too_many_jobs", message=why, at=now)
        self.admission.admit(state.job_id, state.client, user, event.deadline)
        return event

    # ---- state cache ----------------------------------------------------------

    async def _load(self, job_id: str, seq: int, writer: str, event: JobEvent, delivered: int) -> _Entry:
        entry = self._cache.get(job_id)
        if entry is None:
            if isinstance(event, JobRequested) and delivered == 1 and await self.bus.first_seq(job_id) == seq:
                # Fast path for a fresh job: the request is the job's first event, so it is
                # its whole history unless something was written since — which the first
                # write checks (expect_last=seq) and then we replay the real history.
                state = apply(JobState(job_id=job_id), event, writer)
                return self._store(job_id, _Entry(state=state, last_seq=seq, request_seq=seq))
            return await self._reload(job_id)
        self._cache.move_to_end(job_id)
        # Apply every incoming event, whatever its seq: our own writes may have moved past
        # an external event we have not seen yet (a cancel written while we dispatched).
        # ``apply`` ignores events it already has, so redeliveries are harmless.
        if not _fits(entry.state, event):
            return await self._reload(job_id)
        entry.state = apply(entry.state, event, writer)
        entry.last_seq = max(entry.last_seq, seq)
        return entry

    async def _reload(self, job_id: str) -> _Entry:
        job = await self.bus.read_job(job_id)
        old = self._cache.get(job_id)
        entry = _Entry(
            state=job.folded(job_id),
            last_seq=job.last_seq,
            request_seq=next((e.seq for e in job.entries if isinstance(e.event, JobRequested)), 0),
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
        case JobRejected():
            log.info("job_rejected", reason=event.reason, message=event.message)
        case _:
            log.info(event.__struct_config__.tag or "event_written")
