"""A job's state as a pure fold over its events.

``apply(state, event)`` never performs I/O and never reads the clock; replaying the
same history always gives the same state, which is how a restarted router, a provider
checking a redelivery, and ``aiimg trace`` all agree on what a job is doing.

Conflicts resolve by stream order: the first result of an attempt wins (a provider's
late success after the router counted a timeout is ignored), the first terminal event
wins, and repeated dispatches of an attempt number are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from messages import (
    AttemptDispatched,
    AttemptFailed,
    AttemptSucceeded,
    CancelRequested,
    JobCancelled,
    JobCompleted,
    JobEvent,
    JobFailed,
    JobRequested,
    TerminalEvent,
)

__all__ = ("AttemptView", "JobState", "apply", "fold")


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
        if self.request is None:
            return "unknown"
        return "running" if self.attempts else "queued"


def apply(state: JobState, event: JobEvent) -> JobState:
    """The state after ``event``. Pure; events that change nothing return ``state`` itself."""
    if state.terminal is not None:
        return state
    match event:
        case JobRequested():
            if state.request is None:
                return msgspec.structs.replace(state, request=event)
        case CancelRequested():
            if state.cancel_requested is None:
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
        case JobCompleted() | JobFailed() | JobCancelled():
            return msgspec.structs.replace(state, terminal=event)
    return state


def fold(job_id: str, events: Iterable[JobEvent]) -> JobState:
    """Replay ``events`` (oldest first) from the empty state."""
    state = JobState(job_id=job_id)
    for event in events:
        if event.job_id == job_id:
            state = apply(state, event)
    return state
