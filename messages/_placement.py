"""Where each event belongs in the subject layout, and whether a stored one is where it belongs.

A job's history is only what its writers were allowed to write: an event is part of it
when its subject has the event's kind and, for attempt results, names the event's
provider. Everything else (a ``job.completed.v1`` on an attempt subject, a result that
claims another provider's attempt) is ignored by every reader — the router, the fold,
``Client.follow`` and ``aiimg trace`` alike.
"""

from __future__ import annotations

from ._events import (
    AttemptDispatched,
    AttemptFailed,
    AttemptSucceeded,
    CancelRequested,
    Event,
    JobRequested,
)
from ._subjects import Kind, Names, ParsedSubject

__all__ = ("event_subject", "kind_of", "placed")


def kind_of(event: Event) -> Kind:
    """The subject kind an event is written on."""
    if isinstance(event, JobRequested):
        return "requested"
    if isinstance(event, CancelRequested):
        return "cancel"
    if isinstance(event, AttemptDispatched):
        return "dispatch"
    if isinstance(event, (AttemptSucceeded, AttemptFailed)):
        return "attempt"
    return "done"


def event_subject(names: Names, event: Event, client: str = "") -> str:
    """The subject ``event`` is written on. ``client`` names the writer of requests and cancels,
    and for terminal events the client that requested the job."""
    kind = kind_of(event)
    if isinstance(event, (AttemptDispatched, AttemptSucceeded, AttemptFailed)):
        return names.subject(kind, event.job_id, event.provider)
    if not client:
        what = "terminal events are written for" if kind == "done" else f"{kind} events are written under"
        raise ValueError(f"{what} a client id")
    return names.subject(kind, event.job_id, client)


def placed(parsed: ParsedSubject, event: Event) -> bool:
    """Whether ``event`` belongs on the subject ``parsed`` (kind, job id and writer all agree)."""
    if parsed.job_id != event.job_id or parsed.kind != kind_of(event):
        return False
    if isinstance(event, (AttemptDispatched, AttemptSucceeded, AttemptFailed)):
        return parsed.token == event.provider
    return True
