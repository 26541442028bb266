"""Every event of a job's life, as it is stored in the job stream.

A job's history is the ordered list of these events on ``aiimg.job.<job_id>.>``;
its state is a pure fold over that list (``services.domain.state.fold``).

Evolution rules (msgspec ``docs/schema-evolution.rst``): new fields get defaults,
field types never change, unknown fields are ignored, and a breaking change gets
a new tag (``…v2``) rather than a new meaning for an old one.
"""

from __future__ import annotations

import math
import time
from typing import Annotated, TypeAlias

import msgspec

from ._blobs import BlobRef
from ._types import JobId, Operation, ProviderAlias, Reason, RejectReason

__all__ = (
    "AttemptDispatched",
    "AttemptFailed",
    "AttemptSucceeded",
    "CancelRequested",
    "Event",
    "FailureSummary",
    "JobCancelled",
    "JobCompleted",
    "JobEvent",
    "JobFailed",
    "JobRejected",
    "JobRequested",
    "TerminalEvent",
)

Prompt: TypeAlias = Annotated[str, msgspec.Meta(max_length=8000)]
Text: TypeAlias = Annotated[str, msgspec.Meta(max_length=2000)]
Short: TypeAlias = Annotated[str, msgspec.Meta(max_length=64)]
AttemptNo: TypeAlias = Annotated[int, msgspec.Meta(ge=1, le=1000)]
Origin: TypeAlias = Annotated[
    dict[Annotated[str, msgspec.Meta(max_length=64)], Annotated[str, msgspec.Meta(max_length=512)]],
    msgspec.Meta(max_length=16),
]


def _now() -> float:
    return time.time()


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every job event. ``type`` is an explicit, versioned tag."""

    job_id: JobId
    """Chosen by the client, used once: the job's subject token (every event of the job carries it)."""
    at: float = msgspec.field(default_factory=_now)
    """Wall-clock time the event was written, seconds since the epoch (the writer's clock).
    Like every number in an event it must be finite: ``1e400`` does not decode."""

    def __post_init__(self) -> None:
        # JSON has no infinity or NaN: msgspec would write ``null`` and nobody could read the
        # event back. Refuse them when an event is built, and when one is decoded (``1e400``).
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, not {value}")


class JobRequested(Event, frozen=True, kw_only=True, tag="job.requested.v1"):
    """A client asks for an image or a video. Written by the client; always the first event.

    ``output`` is a size intent: ``4K``/``2K``/``1K``, ``WxH`` or a ratio such as ``16:9``
    (empty = the provider's configured default). ``backend`` replaces the configured primary
    provider (empty = the configured primary); the configured fallbacks still follow it.
    """

    op: Operation
    """``edit``, ``selfie`` and ``video`` need at least one input (else ``job.rejected.v1``, ``bad_request``)."""
    prompt: Prompt = ""
    inputs: list[BlobRef] = msgspec.field(default_factory=list)
    """Input images, stored first in the client's bucket ``<prefix>_in_<client>`` (or its
    ``<prefix>_refs_<client>``, or earlier results in ``<prefix>_blobs``; any other bucket is
    rejected). The router rejects (``bad_request``) more than ``limits.max_inputs`` (default 16)
    inputs or more than ``limits.max_input_bytes`` (default 64 MiB) of declared ``size``; the
    provider reads each by ``bucket`` and ``name`` and checks ``size`` and ``sha256`` against the
    stored bytes, and the bytes as an image within ``limits.max_pixels``. ``mime``, ``width``
    and ``height`` of an input are not trusted (the bytes are sniffed)."""
    backend: Short = ""
    """A provider alias or short name that replaces the configured primary of ``draw`` or
    ``edit``/``selfie`` (the primary is then not tried unless it is also a fallback);
    ``""`` or ``auto``: the configured primary. Ignored for ``video``."""
    output: Short = ""
    """Size intent: ``4K``, ``2K``, ``1K``, ``WxH``, a ratio (``16:9``) or both (``16:9 4K``);
    one that does not parse or is over ``limits.max_pixels`` (default 64 MP) is rejected."""
    origin: Origin = msgspec.field(default_factory=dict)
    """Opaque requester metadata (bot id, chat, user); echoed, never interpreted — except
    ``user``, counted against ``limits.max_jobs_per_user`` (``too_many_jobs``)."""


class CancelRequested(Event, frozen=True, kw_only=True, tag="job.cancel_requested.v1"):
    """A client asks to stop a job. The router answers with :class:`JobCancelled` if still running."""

    reason: Text = ""


class AttemptDispatched(Event, frozen=True, kw_only=True, tag="attempt.dispatched.v1"):
    """The router hands attempt ``attempt`` to ``provider``. This event is the provider's work item.

    It carries everything the provider needs, so a provider never reads the history
    on its first delivery. ``deadline`` is when the router will count the attempt as a
    timeout; ``not_before`` delays a retry (backoff or an upstream retry hint).
    """

    attempt: AttemptNo
    provider: ProviderAlias
    op: Operation
    prompt: Prompt = ""
    inputs: list[BlobRef] = msgspec.field(default_factory=list)
    output: Short = ""
    chain: list[ProviderAlias] = msgspec.field(default_factory=list)
    """The whole provider chain planned for this job, for traces and for a restarted router."""
    deadline: float = 0.0
    not_before: float = 0.0
    skipped: Annotated[dict[ProviderAlias, Text], msgspec.Meta(max_length=32)] = msgspec.field(default_factory=dict)
    """Providers passed over for this attempt, and why (``circuit open until …``, ``not configured``)."""


class AttemptSucceeded(Event, frozen=True, kw_only=True, tag="attempt.succeeded.v1"):
    """The provider produced a result; bytes are in the blob store."""

    attempt: AttemptNo
    provider: ProviderAlias
    result: BlobRef
    source_url: Annotated[str, msgspec.Meta(max_length=4096)] = ""
    """Where the upstream served the result from, when it gave a URL (videos are sent by URL)."""
    elapsed_ms: Annotated[int, msgspec.Meta(ge=0)] = 0


class AttemptFailed(Event, frozen=True, kw_only=True, tag="attempt.failed.v1"):
    """The attempt ended without a result. ``reason`` is typed; ``message`` is short and secret-free."""

    attempt: AttemptNo
    provider: ProviderAlias
    reason: Reason
    message: Text = ""
    status: Annotated[int, msgspec.Meta(ge=0, le=999)] = 0
    """Upstream HTTP status when there was one, else 0."""
    retry_after: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Seconds the upstream asked us to wait (``Retry-After``, Gemini ``RetryInfo``), else 0."""
    elapsed_ms: Annotated[int, msgspec.Meta(ge=0)] = 0


class FailureSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One failed attempt, as listed in :class:`JobFailed`."""

    attempt: int
    provider: str
    reason: Reason
    message: str = ""


class JobCompleted(Event, frozen=True, kw_only=True, tag="job.completed.v1"):
    """Terminal: the job has a result."""

    result: BlobRef
    provider: ProviderAlias
    attempt: AttemptNo
    source_url: Annotated[str, msgspec.Meta(max_length=4096)] = ""


class JobFailed(Event, frozen=True, kw_only=True, tag="job.failed.v1"):
    """Terminal: no provider produced a result. ``failures`` lists every attempt's reason."""

    failures: list[FailureSummary] = msgspec.field(default_factory=list)
    """Every failed attempt, in order. Empty when no attempt ran: no configured provider can
    serve the operation (``message`` says why each candidate was left out)."""
    message: Text = ""


class JobCancelled(Event, frozen=True, kw_only=True, tag="job.cancelled.v1"):
    """Terminal: the job was cancelled before it finished."""

    reason: Text = ""


class JobRejected(Event, frozen=True, kw_only=True, tag="job.rejected.v1"):
    """Terminal: the router refused the request before any provider was called.

    ``bad_request``: the request breaks a rule (too many or too large inputs, an input in a
    bucket the client may not use, an unreadable size intent …); ``too_many_jobs``: the
    client or its user already has as many jobs running as ``limits.*`` allow — try later.
    ``message`` names the rule.
    """

    reason: RejectReason
    message: Text = ""


JobEvent: TypeAlias = (
    JobRequested
    | CancelRequested
    | AttemptDispatched
    | AttemptSucceeded
    | AttemptFailed
    | JobCompleted
    | JobFailed
    | JobCancelled
    | JobRejected
)
"""Everything that can appear in the job stream."""

TerminalEvent: TypeAlias = JobCompleted | JobFailed | JobCancelled | JobRejected
