"""aiimg wire contract: job events, blob references, subjects and codecs.

Everything here is plain data; JSON on the wire. See ``docs/nats-api.md``.
"""

from __future__ import annotations

from ._blobs import BlobRef as BlobRef
from ._codec import DecodeError as DecodeError
from ._codec import decode_event as decode_event
from ._codec import encode as encode
from ._events import AttemptDispatched as AttemptDispatched
from ._events import AttemptFailed as AttemptFailed
from ._events import AttemptSucceeded as AttemptSucceeded
from ._events import CancelRequested as CancelRequested
from ._events import Event as Event
from ._events import FailureSummary as FailureSummary
from ._events import JobCancelled as JobCancelled
from ._events import JobCompleted as JobCompleted
from ._events import JobEvent as JobEvent
from ._events import JobFailed as JobFailed
from ._events import JobRejected as JobRejected
from ._events import JobRequested as JobRequested
from ._events import TerminalEvent as TerminalEvent
from ._health import BreakerState as BreakerState
from ._health import ProviderHealth as ProviderHealth
from ._placement import event_subject as event_subject
from ._placement import kind_of as kind_of
from ._placement import placed as placed
from ._subjects import DEFAULT_PREFIX as DEFAULT_PREFIX
from ._subjects import Names as Names
from ._subjects import ParsedSubject as ParsedSubject
from ._subjects import subject as subject
from ._types import FAILURE_REASONS as FAILURE_REASONS
from ._types import REJECT_REASONS as REJECT_REASONS
from ._types import JobId as JobId
from ._types import Operation as Operation
from ._types import ProviderAlias as ProviderAlias
from ._types import Reason as Reason
from ._types import RejectReason as RejectReason

__all__ = (
    "AttemptDispatched",
    "AttemptFailed",
    "AttemptSucceeded",
    "BlobRef",
    "BreakerState",
    "CancelRequested",
    "DEFAULT_PREFIX",
    "DecodeError",
    "Event",
    "FAILURE_REASONS",
    "FailureSummary",
    "JobCancelled",
    "JobCompleted",
    "JobEvent",
    "JobFailed",
    "JobId",
    "JobRejected",
    "JobRequested",
    "Names",
    "Operation",
    "ParsedSubject",
    "ProviderAlias",
    "ProviderHealth",
    "REJECT_REASONS",
    "Reason",
    "RejectReason",
    "TerminalEvent",
    "decode_event",
    "encode",
    "event_subject",
    "kind_of",
    "placed",
    "subject",
)
