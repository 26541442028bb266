"""The one exception tree of aiimg.

::

    AiimgError
    ├── ConfigError            bad or missing configuration (names the key)
    ├── BusError               NATS / JetStream unavailable or misbehaving
    │   ├── EmbeddedServerError  the embedded nats-server could not start
    │   └── StaleView          an optimistic write found events its writer had not seen
    ├── BlobError              a blob is missing, too large or corrupt
    ├── MediaError             bytes that are not a usable image or video (``kind`` says how)
    ├── UpstreamResponseError  an upstream's HTTP answer the transport will not hand on
    │   ├── ResponseTooLarge     over the byte cap (counted after decoding)
    │   └── BadEncoding          a content encoding it does not decode, or broken gzip/deflate
    ├── AddressRefused         a download refused before connecting: a private address or local name
    ├── HostUnresolved         a download's host name does not resolve (fail closed)
    ├── SelfieError            a selfie cannot be requested (``code`` says why)
    ├── JobError               a job ended without a result (carries the terminal event)
    └── ProviderFailure        one provider attempt failed with a typed reason

Each layer raises its own errors and says what happened, not what it means for an attempt:
``infra`` raises ``MediaError``, ``UpstreamResponseError``, ``AddressRefused``… and the
provider layer turns them into a ``ProviderFailure`` with a typed reason in one function,
:func:`services.providers._errors.failure_for`, at the provider actor's boundary. Providers
raise ``ProviderFailure`` themselves for what an upstream said, which only they understand.

Signals that are not errors (skip a stale work item, retry later) are plain return
values in the actors, never exceptions, so they stay out of error logs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ...messages import JobCancelled, JobFailed, JobRejected, Reason

__all__ = (
    "AddressRefused",
    "AiimgError",
    "BadEncoding",
    "BlobError",
    "BusError",
    "ConfigError",
    "EmbeddedServerError",
    "HostUnresolved",
    "JobError",
    "MediaError",
    "MediaKind",
    "ProviderFailure",
    "ResponseTooLarge",
    "SelfieError",
    "StaleView",
    "UpstreamResponseError",
)


class AiimgError(Exception):
    """Root of every error aiimg raises on purpose. ``message`` says what happened, for people."""

    def __init__(self, message: str = "", *args: object) -> None:
        super().__init__(message, *args)
        self.message = message


class ConfigError(AiimgError):
    """Raised when configuration is invalid: an unknown key, a wrong type, a missing secret."""


class BusError(AiimgError):
    """Raised when NATS or JetStream cannot be reached or refuses an operation."""


class EmbeddedServerError(BusError):
    """Raised when the embedded nats-server binary is missing or does not start."""


class StaleView(BusError):
    """Raised when an optimistic write finds the job has events the writer has not seen."""


class BlobError(AiimgError):
    """Raised when a blob is missing, larger than allowed, or fails its checksum."""


MediaKind = Literal["no_image", "invalid", "too_large"]
"""How bytes failed a media check: a placeholder (tiny, 1-pixel-wide) instead of an image,
not a decodable image or video of a known format, or more pixels than ``limits.max_pixels``."""


class MediaError(AiimgError):
    """Raised by the media checks (``infra.media``) for bytes that are not a usable image or video.

    Whose fault that is depends on where the bytes came from: a result's (``no_image``,
    ``invalid_response``) or the request's (an input: ``bad_request``). The caller decides.
    """

    def __init__(self, kind: MediaKind, message: str) -> None:
        super().__init__(message)
        self.kind: MediaKind = kind


class UpstreamResponseError(AiimgError):
    """Raised by the HTTP transport for an answer it will not hand on (``infra.http``)."""


class ResponseTooLarge(UpstreamResponseError):
    """The body is over the reader's byte cap, counted after decoding."""


class BadEncoding(UpstreamResponseError):
    """A content encoding other than one ``gzip`` / ``deflate``, or compressed data that is broken."""


class AddressRefused(AiimgError):
    """Raised by the download guard for a private address or a local name, before connecting."""


class HostUnresolved(AiimgError):
    """Raised by the download guard when a host name does not resolve: nothing is fetched."""


class SelfieError(AiimgError):
    """Raised when a selfie cannot be requested: the feature is off or no portrait is set.

    ``code`` is ``disabled`` or ``no_references``; front ends map it to their own text.
    """

    def __init__(self, code: Literal["disabled", "no_references"], message: str) -> None:
        super().__init__(message)
        self.code = code


class JobError(AiimgError):
    """Raised by clients when a job ends failed or cancelled; ``event`` is the terminal event."""

    def __init__(self, event: JobFailed | JobCancelled | JobRejected) -> None:
        super().__init__(_describe(event))
        self.event = event


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
        super().__init__(f"{reason}: {message}")
        self.message = message
        self.reason: Reason = reason
        self.status = status
        self.retry_after = retry_after


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
