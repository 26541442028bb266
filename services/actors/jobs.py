"""The router's view of jobs: a cache of folded states in front of the job log, and per-job locks.

:class:`JobRepository` loads a job's state (from the cache, from the request alone for a
fresh job, or by replaying its history), appends events optimistically (a write lands only
if the job has nothing newer than the state it was decided on, else :class:`StaleView`),
and remembers recently finished jobs so their leftover timer messages cost nothing.

:class:`KeyedLock` serialises the handling of one job's messages inside one router.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import anyio

from ...messages import AttemptFailed, AttemptSucceeded, JobEvent, JobRequested
from ..domain.state import JobState, apply
from .ports import JobBus

__all__ = ("CACHE_SIZE", "FINISHED_PER_CACHED", "Entry", "JobRepository", "KeyedLock")

CACHE_SIZE = 20_000
"""Folded job states kept in memory. A running job's state is a few hundred bytes; past this
the least recently used is dropped and replayed from the stream when it is needed again."""

FINISHED_PER_CACHED = 5
"""Finished job ids remembered per cached state (100,000 by default, a few MB): a finished
job's leftover timer message is acked without replaying its history."""


@dataclass(slots=True)
class Entry:
    """One job's state as the router last saw it, and where its history ended then."""

    state: JobState
    last_seq: int
    """Stream seq of the job's newest message this view knows of (what writes expect)."""
    floor: int = 0
    """Every message of the job up to this seq is folded into ``state`` (read back whole, or the
    fresh request) …"""
    applied: set[int] = field(default_factory=set)
    """… and these later ones too (applied as delivered, or written by us)."""
    request_seq: int = 0
    """Stream seq of the job's (first) request: any other request message is a duplicate."""
    timer_seq: int = 0
    """Stream seq of the message currently holding this job's durable timer."""
    timer_due: float = 0.0
    """When that message comes back."""


class JobRepository:
    def __init__(self, bus: JobBus, *, cache_size: int = CACHE_SIZE) -> None:
        self.bus = bus
        self._cache: OrderedDict[str, Entry] = OrderedDict()
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._cache_size = cache_size

    def finished(self, job_id: str) -> bool:
        """Whether ``job_id`` finished recently (its leftover messages need no replay)."""
        if job_id in self._finished:
            self._finished.move_to_end(job_id)
            return True
        return False

    async def load(self, job_id: str, seq: int, writer: str, event: JobEvent, delivered: int) -> Entry:
        """The job's state with ``event`` (stream seq ``seq``, written by ``writer``) applied."""
        entry = self._cache.get(job_id)
        if entry is None:
            if isinstance(event, JobRequested) and delivered == 1 and await self.bus.first_seq(job_id) == seq:
                # Fast path for a fresh job: the request is the job's first event, so it is
                # its whole history unless something was written since — which the first
                # write checks (expect_last=seq) and then we replay the real history.
                state = apply(JobState(job_id=job_id), event, writer)
                return self._store(job_id, Entry(state=state, last_seq=seq, floor=seq, request_seq=seq))
            return await self.reload(job_id)
        self._cache.move_to_end(job_id)
        if seq <= entry.floor or seq in entry.applied:
            # Already part of this view — applied, or ignored by the fold where it stood (a
            # cancel before the request, a result before its dispatch): a redelivery is not
            # applied again at a later position, where it could mean something else.
            return entry
        if not _fits(entry.state, event):
            return await self.reload(job_id)
        entry.state = apply(entry.state, event, writer)
        entry.applied.add(seq)
        entry.last_seq = max(entry.last_seq, seq)
        return entry

    async def reload(self, job_id: str) -> Entry:
        """The job's state replayed from its stored history (what is true, not what we cached)."""
        job = await self.bus.read_job(job_id)
        old = self._cache.get(job_id)
        entry = Entry(
            state=job.folded(job_id),
            last_seq=job.last_seq,
            floor=job.last_seq,
            request_seq=next((e.seq for e in job.entries if isinstance(e.event, JobRequested)), 0),
            timer_seq=old.timer_seq if old else 0,
            timer_due=old.timer_due if old else 0.0,
        )
        return self._store(job_id, entry)

    async def append(self, entry: Entry, event: JobEvent) -> None:
        """Write ``event`` if the job has nothing newer than ``entry``; raises ``StaleView`` otherwise."""
        # Terminal events go on the requesting client's done subject (what its consumer reads).
        new_seq, _ = await self.bus.publish_checked(event, client=entry.state.client, expect_last=entry.last_seq)
        entry.state = apply(entry.state, event)
        entry.applied.add(new_seq)
        entry.last_seq = max(entry.last_seq, new_seq)

    def forget_if_done(self, job_id: str) -> None:
        entry = self._cache.get(job_id)
        if entry is not None and entry.state.done:
            del self._cache[job_id]
            self._finished[job_id] = None
            while len(self._finished) > self._cache_size * FINISHED_PER_CACHED:
                self._finished.popitem(last=False)

    def _store(self, job_id: str, entry: Entry) -> Entry:
        self._cache[job_id] = entry
        self._cache.move_to_end(job_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return entry


def _fits(state: JobState, event: JobEvent) -> bool:
    """Whether ``event`` can follow ``state`` directly (else our cached view missed something)."""
    if isinstance(event, (AttemptSucceeded, AttemptFailed)):
        view = state.attempt(event.attempt)
        return view is not None and view.provider == event.provider
    return True


class KeyedLock:
    """One lock per key, removed when nobody holds or waits for it."""

    __slots__ = ("_locks",)

    def __init__(self) -> None:
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}

    def __call__(self, key: str) -> _Held:
        return _Held(self._locks, key)

    def __len__(self) -> int:
        return len(self._locks)


class _Held:
    __slots__ = ("_key", "_locks")

    def __init__(self, locks: dict[str, tuple[anyio.Lock, int]], key: str) -> None:
        self._locks = locks
        self._key = key

    async def __aenter__(self) -> None:
        lock, users = self._locks.get(self._key, (None, 0))
        if lock is None:
            lock = anyio.Lock()
        self._locks[self._key] = (lock, users + 1)
        await lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        lock, users = self._locks[self._key]
        lock.release()
        if users <= 1:
            del self._locks[self._key]
        else:
            self._locks[self._key] = (lock, users - 1)
