"""A job's state as a pure fold over its events.

``apply(state, event)`` never performs I/O and never reads the clock; replaying the
same history always gives the same state, which is how a restarted router, a provider
checking a redelivery, and ``aiimg trace`` all agree on what a job is doing.

Conflicts resolve by stream order: the first request of a job id wins (a job id is used
once), the first result of an attempt wins (a provider's late success after the router
counted a timeout is ignored), the first terminal event wins, and repeated dispatches of
an attempt number are ignored.

Some events carry their writer in the subject they were stored on (``…requested.<client>``,
``…cancel.<client>``): the fold records which client requested the job and honours a
cancel only from that client. Entries are ``(writer, event)`` pairs; a bare event has the
writer ``""``. (Attempt results name their provider in the subject too; readers drop
results whose subject and body disagree before folding, see ``messages.placed``.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeAlias

import msgspec

from ...messages import (
    AttemptDispatched,
    AttemptFailed,
    AttemptSucceeded,
    CancelRequested,
    JobCancelled,
    JobCompleted,
    JobEvent,
    JobFailed,
    JobRejected,
    JobRequested,
    TerminalEvent,
)

__all__ = ("AttemptView", "Entry", "JobState", "apply", "fold")

Entry: TypeAlias = JobEvent | tuple[str, JobEvent]
"""A history entry: an event, or ``(writer, event)`` when its subject named a writer."""


class AttemptView(msgspec.Struct, frozen=True, kw_only=True):
    dispatch: AttemptDispatched
    outcome: AttemptSucceeded | AttemptFailed | None = None

    @property
    def n(self) -> int:
        return self.dispatch.attempt

    @property
    def provider(self) -> str:
        return self.dispatch.provider

    @property
    def open(self) -> bool:
        return self.outcome is None


class JobState(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    request: JobRequested | None = None
    client: str = ""
    """The client that requested the job (the writer token of its ``requested`` subject)."""
    attempts: tuple[AttemptView, ...] = ()
    cancel_requested: str | None = None
    terminal: TerminalEvent | None = None

    @property
    def done(self) -> bool:
        return self.terminal is not None

    @property
    def current(self) -> AttemptView | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def chain(self) -> list[str]:
        return list(self.attempts[0].dispatch.chain) if self.attempts else []

    def attempt(self, n: int) -> AttemptView | None:
        return self.attempts[n - 1] if 0 < n <= len(self.attempts) else None

    @property
    def status(self) -> str:
        if isinstance(self.terminal, JobCompleted):
            return "completed"
        if isinstance(self.terminal, JobFailed):
            return "failed"
        if isinstance(self.terminal, JobCancelled):
            return "cancelled"
        if isinstance(self.terminal, JobRejected):
            return "rejected"
        if self.request is None:
            return "unknown"
        return "running" if self.attempts else "queued"


def apply(state: JobState, event: JobEvent, writer: str = "") -> JobState:
    """The state after ``event`` (written by ``writer``). Pure; events that change nothing return ``state``."""
    if state.terminal is not None:
        return state
    match event:
        case JobRequested():
            if state.request is None:
                return msgspec.structs.replace(state, request=event, client=writer)
        case CancelRequested():
            # Only the requesting client may cancel; a cancel before the request is not one.
            if state.request is not None and state.cancel_requested is None and writer == state.client:
                return msgspec.structs.replace(state, cancel_requested=event.reason)
        case AttemptDispatched():
            if event.attempt == len(state.attempts) + 1:
                return msgspec.structs.replace(state, attempts=(*state.attempts, AttemptView(dispatch=event)))
        case AttemptSucceeded() | AttemptFailed():
            view = state.attempt(event.attempt)
            if view is not None and view.open and view.provider == event.provider:
                attempts = list(state.attempts)
                attempts[event.attempt - 1] = msgspec.structs.replace(view, outcome=event)
                return msgspec.structs.replace(state, attempts=tuple(attempts))
        case JobCompleted() | JobFailed() | JobCancelled() | JobRejected():
            return msgspec.structs.replace(state, terminal=event)
    return state


def fold(job_id: str, entries: Iterable[Entry]) -> JobState:
    """Replay ``entries`` (oldest first) from the empty state."""
    state = JobState(job_id=job_id)
    for entry in entries:
        writer, event = entry if isinstance(entry, tuple) else ("", entry)
        if event.job_id == job_id:
            state = apply(state, event, writer)
    return state
