"""Admission: how many jobs each client, and each user of a client, has running.

Pure bookkeeping (the caller passes the time): the router asks :meth:`Admission.refused`
before a job's first dispatch and refuses the job with ``too_many_jobs`` when a limit of
``limits.*`` is reached.
"""

from __future__ import annotations

import heapq
from collections import Counter

__all__ = ("Admission",)


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

    def __len__(self) -> int:
        """Jobs this router counts as running."""
        return len(self._jobs)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._jobs

    def running(self, client: str, user: str, now: float) -> int:
        self._expire(now)
        return self._users[(client, user)] if user else self._clients[client]

    def refused(self, client: str, user: str, now: float) -> str | None:
        """Why a new job of ``client``/``user`` may not start at ``now``, or ``None``."""
        self._expire(now)
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
