"""The one exception tree of aiimg.

::

    AiimgError
    ├── ConfigError            bad or missing configuration (names the key)
    ├── BusError               NATS / JetStream unavailable or misbehaving
    │   └── EmbeddedServerError  the embedded nats-server could not start
    ├── BlobError              a blob is missing, too large or corrupt
    ├── JobError               a job ended without a result (carries the terminal event)
    └── ProviderFailure        one provider attempt failed with a typed reason

Signals that are not errors (skip a stale work item, retry later) are plain return
values in the actors, never exceptions, so they stay out of error logs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...messages import JobCancelled, JobFailed, JobRejected, Reason

__all__ = (
    "AiimgError",
    "BlobError",
    "BusError",
    "ConfigError",
    "EmbeddedServerError",
    "JobError",
    "ProviderFailure",
)


class AiimgError(Exception):
    """Root of every error aiimg raises on purpose."""


class ConfigError(AiimgError):
    """Raised when configuration is invalid: an unknown key, a wrong type, a missing secret."""


class BusError(AiimgError):
    """Raised when NATS or JetStream cannot be reached or refuses an operation."""


class EmbeddedServerError(BusError):
    """Raised when the embedded nats-server binary is missing or does not start."""


class BlobError(AiimgError):
    """Raised when a blob is missing, larger than allowed, or fails its checksum."""


class JobError(AiimgError):
    """Raised by clients when a job ends failed or cancelled; ``event`` is the terminal event."""

    def __init__(self, event: JobFailed | JobCancelled | JobRejected) -> None:
        self.event = event
        super().__init__(_describe(event))


class ProviderFailure(AiimgError):
    """Raised inside a provider when an attempt fails; becomes an ``AttemptFailed`` event.

    ``message`` must be short and must not contain secrets (it is redacted again anyway).
    """

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        status: int = 0,
        retry_after: float = 0.0,
    ) -> None:
        self.reason: Reason = reason
        self.message = message
        self.status = status
        self.retry_after = retry_after
        super().__init__(f"{reason}: {message}")


def _describe(event: JobFailed | JobCancelled | JobRejected) -> str:
    from ...messages import JobCancelled, JobRejected

    if isinstance(event, JobCancelled):
        return f"job {event.job_id} cancelled" + (f": {event.reason}" if event.reason else "")
    if isinstance(event, JobRejected):
        return f"job {event.job_id} rejected ({event.reason})" + (f": {event.message}" if event.message else "")
    parts = [f"{f.provider}: {f.reason}" + (f" ({f.message})" if f.message else "") for f in event.failures]
    head = f"job {event.job_id} failed"
    if event.message:
        head += f": {event.message}"
    return head + ("; " + "; ".join(parts) if parts else "")
