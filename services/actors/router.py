"""The router actor: turns requests and attempt results into the next step of each job.

For every message on its consumer (requests, cancels, attempt results) it loads the
job's state (:class:`~services.actors.jobs.JobRepository`), applies the message, asks
:func:`services.domain.routing.decide` what to do, and writes the resulting events.

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

import time
from collections import Counter

import anyio
import structlog

from ...messages import (
    AttemptDispatched,
    AttemptFailed,
    AttemptSucceeded,
    JobEvent,
    JobFailed,
    JobRejected,
    JobRequested,
    ParsedSubject,
)
from ..domain.admission import Admission
from ..domain.errors import BusError, StaleView
from ..domain.routing import decide
from ..domain.state import JobState
from ..infra.delivery import Delivery
from ..infra.retry import Backoff
from .health import HealthBoard
from .jobs import CACHE_SIZE, Entry, JobRepository, KeyedLock
from .ports import JobBus
from .runtime import Inbound, decoding

__all__ = ("Router",)

log = structlog.get_logger("aiimg.router")

MAX_WRITES_PER_MESSAGE = 32
"""Writes one message may cause before the router stops and looks again later. A job's
whole life is a few writes; more means something keeps invalidating the router's view."""

STALE_RETRY = Backoff(1.0, cap=60.0)
"""When a message whose writes kept being refused is handled again: 1 s, doubling per delivery,
at most a minute (so an incident logs a few lines, not one a second)."""

TIMER_SLACK = 0.5
"""A job's timer already held by another message is kept if it fires at most this many seconds
after the new wait ends: one timer message per waiting job, not one per event it received."""

CONSUMER_CHECK_INTERVAL = 60.0
"""Seconds between checks that every durable consumer still has the layout's config."""


class Router:
    def __init__(
        self,
        bus: JobBus,
        *,
        concurrency: int | None = None,
        cache_size: int = CACHE_SIZE,
        consumer_check_interval: float = CONSUMER_CHECK_INTERVAL,
    ) -> None:
        self.bus = bus
        self.config = bus.config
        self.consumer_check_interval = consumer_check_interval
        self.jobs = JobRepository(bus, cache_size=cache_size)
        self._locks = KeyedLock()
        limits = bus.config.limits
        self.admission = Admission(limits.max_jobs_per_client, limits.max_jobs_per_user)
        self.health = HealthBoard(bus.health(), bus.config)
        self.counts: Counter[str] = Counter()
        """Messages this process handled, by subject kind (``requested``, ``cancel``, ``attempt``)."""
        self.consumer = bus.consumer(
            bus.names.router_consumer,
            decoding(bus.names, self.handle, refused=self._refused),
            concurrency=concurrency or bus.config.actors.router_concurrency,
            name="router",
        )

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # The router owns the layout: a consumer re-filtered, paused or throttled by anyone
        # (a past misconfiguration, a client with too many rights) is put back before work starts.
        await self.bus.check_consumers(repair=True)
        async with anyio.create_task_group() as tg:
            await tg.start(self.health.run)
            log.info("router_started")
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

    async def _refused(self, delivery: Delivery, where: ParsedSubject, why: str) -> None:
        """A request nobody can read still gets an answer, if it is its job's first message:
        ``job.rejected.v1`` (``bad_request``, the decoder's words), so its client stops waiting.
        (A later one, under an id already in use, must not end that job: it is only logged.)"""
        if where.kind != "requested" or await self.bus.first_seq(where.job_id) != delivery.seq:
            return
        rejected = JobRejected(
            job_id=where.job_id, reason="bad_request", message=f"unreadable request: {why}"[:2000], at=time.time()
        )
        try:
            _, written = await self.bus.publish_checked(rejected, client=where.token, expect_last=delivery.seq)
        except StaleView:
            return  # something was written since: that job is in someone's hands
        except (BusError, OSError, TimeoutError) as exc:
            log.warning("reject_write_failed", error=str(exc)[:200])
            return
        if written:
            _log_written(rejected)

    async def handle(self, inbound: Inbound) -> None:
        self.counts[inbound.where.kind] += 1
        async with self._locks(inbound.where.job_id):
            await self._step(inbound)

    async def _step(self, inbound: Inbound) -> None:
        delivery, event, writer = inbound.delivery, inbound.event, inbound.writer
        job_id = event.job_id
        if self.jobs.finished(job_id):
            # A stale timer, a late result or a reused job id of a job we finished: nothing to replay.
            # (The first request's own timer comes back redelivered, never as a first delivery.)
            if isinstance(event, JobRequested) and delivery.delivered == 1:
                log.warning("duplicate_request", client=writer, reason="job id already used; nothing runs")
            await delivery.ack()
            return
        seq = delivery.seq
        entry = await self.jobs.load(job_id, seq, writer, event, delivery.delivered)
        state = entry.state
        if state.request is None:
            log.warning("rejected_message", reason="event for a job that was never requested", **delivery.describe())
            await delivery.term()
            return
        if isinstance(event, JobRequested) and seq != entry.request_seq:
            log.warning("duplicate_request", client=writer, reason="job id already used; nothing runs")
        if state.done:
            self.admission.release(job_id)
            await delivery.ack()
            self.jobs.forget_if_done(job_id)
            return
        if isinstance(event, AttemptSucceeded | AttemptFailed) and delivery.delivered == 1:
            await self._observe(state, event)
        if state.attempts and job_id not in self.admission:
            # Running since before this router started (or handled by another replica so far).
            user = state.request.origin.get("user", "")
            self.admission.admit(job_id, state.client, user, state.attempts[-1].dispatch.deadline)
        for _ in range(MAX_WRITES_PER_MESSAGE):
            now = time.time()
            decision = decide(entry.state, self.config, now, self.health.record)
            if decision.event is not None:
                if not await self._probe_allowed(decision.event, now):
                    continue  # another router's probe is out: decide again, now seeing it
                entry = await self._write(entry, decision.event, now)
                if entry.state.done:
                    break
                continue
            if decision.wait_until is not None:
                await self._hold_timer(inbound, entry, decision.wait_until, now)
                return
            break
        else:
            # Writes kept being refused or kept leading to more writes: look again later,
            # once, instead of spinning (one log line per incident, not per attempt).
            delay = STALE_RETRY.delay(delivery.delivered)
            log.error("router_step_limit", writes=MAX_WRITES_PER_MESSAGE, retry_in=delay, **delivery.describe())
            await delivery.nak(delay)
            return
        if entry.state.done:
            self.admission.release(job_id)
        await delivery.ack()
        self.jobs.forget_if_done(job_id)

    async def _write(self, entry: Entry, event: JobEvent, now: float) -> Entry:
        """Write ``event`` (admission first, for a job's first dispatch); on a stale view, the truth."""
        written = self._admit(entry.state, event, now)
        try:
            await self.jobs.append(entry, written)
        except StaleView:
            # Someone wrote to this job since our view (a provider result, a cancel, another
            # router): read it back; the caller decides again on the full history.
            return await self.jobs.reload(entry.state.job_id)
        if isinstance(written, AttemptDispatched):
            self.admission.renew(written.job_id, written.deadline)
        elif isinstance(written, AttemptFailed) and entry.state.request is not None:
            await self._observe(entry.state, written)  # a timeout, counted like a provider's failure
        _log_written(written)
        return entry

    async def _observe(self, state: JobState, outcome: AttemptSucceeded | AttemptFailed) -> None:
        """Count an attempt's outcome on its provider's breaker (only the dispatched provider's own)."""
        req = state.request
        attempt = next((a for a in state.attempts if a.n == outcome.attempt), None)
        if req is None or attempt is None or attempt.outcome != outcome:
            return  # not an outcome the job's state believes (a forged or a late one)
        now = time.time()
        try:
            if isinstance(outcome, AttemptSucceeded):
                await self.health.succeeded(outcome.provider, req.op, now)
            else:
                await self.health.failed(
                    outcome.provider, req.op, outcome.reason, outcome.message, outcome.retry_after, now
                )
        except (BusError, OSError, TimeoutError) as exc:
            log.warning("health_update_failed", provider=outcome.provider, error=str(exc)[:200])

    async def _probe_allowed(self, event: JobEvent, now: float) -> bool:
        """A dispatch to a provider whose breaker cooled down is its probe: claim it first."""
        if not isinstance(event, AttemptDispatched) or not self.health.needs_probe(event.provider, event.op, now):
            return True
        try:
            return await self.health.claim_probe(event.provider, event.op, now, max(1.0, event.deadline - now))
        except (BusError, OSError, TimeoutError) as exc:
            log.warning("health_update_failed", provider=event.provider, error=str(exc)[:200])
            return True

    async def _hold_timer(self, inbound: Inbound, entry: Entry, due: float, now: float) -> None:
        """Wait durably until ``due``: this message comes back then (unless another already will)."""
        delivery = inbound.delivery
        if entry.timer_seq and entry.timer_seq != delivery.seq and entry.timer_due <= due + TIMER_SLACK:
            await delivery.ack()  # another message already holds this job's timer and fires in time
            return
        entry.timer_seq = delivery.seq
        entry.timer_due = due
        await delivery.nak(max(0.001, due - now))

    def _admit(self, state: JobState, event: JobEvent, now: float) -> JobEvent:
        """The first dispatch of a job starts it: refuse it if its client or user is at their limit."""
        if not isinstance(event, AttemptDispatched) or event.attempt != 1 or state.request is None:
            return event
        user = state.request.origin.get("user", "")
        why = self.admission.refused(state.client, user, now)
        if why is not None:
            return JobRejected(job_id=state.job_id, reason="too_many_jobs", message=why, at=now)
        self.admission.admit(state.job_id, state.client, user, event.deadline)
        return event


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
