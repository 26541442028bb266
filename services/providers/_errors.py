"""What a failure means for an attempt: the one place errors become typed reasons.

The layers below the providers say what happened — ``MediaError`` (``no_image``,
``invalid``, ``too_large``), ``ResponseTooLarge``, ``BadEncoding``, ``AddressRefused``,
``HostUnresolved``, httpx's transport errors — and :func:`failure_for` says what that
means for an attempt, once: the provider actor calls it for whatever a provider, a result
check or an input check raised, and ``_common.download`` for the download it names.
"""

from __future__ import annotations

from typing import Literal, overload

import httpx

from ...messages import Reason
from ..domain.errors import (
    AddressRefused,
    BlobError,
    HostUnresolved,
    MediaError,
    ProviderFailure,
    UpstreamResponseError,
)

__all__ = ("Mapped", "failure_for")

Mapped = ProviderFailure | MediaError | UpstreamResponseError | AddressRefused | HostUnresolved
"""The errors that always mean a failed attempt (:func:`failure_for` never returns ``None`` for them)."""


@overload
def failure_for(exc: Mapped | BlobError, *, label: str = "", request: Literal[True]) -> ProviderFailure: ...
@overload
def failure_for(exc: Mapped, *, label: str = "", request: bool = False) -> ProviderFailure: ...
@overload
def failure_for(exc: BaseException, *, label: str = "", request: bool = False) -> ProviderFailure | None: ...
def failure_for(exc: BaseException, *, label: str = "", request: bool = False) -> ProviderFailure | None:
    """``exc`` as the failure of an attempt, or ``None`` when it is not one (a bug, the bus).

    ``label`` names what failed (``"grok image download"``, ``"input #2"``) at the head of the
    message. ``request`` says the bytes came with the request (an input image): what is wrong
    with them — missing, unreadable, not an image, over the pixel limit — is the request's
    fault, ``bad_request``, whatever it would mean for a result.
    """
    if isinstance(exc, ProviderFailure):
        return exc
    if request and isinstance(exc, (MediaError, BlobError)):
        return ProviderFailure("bad_request", _labelled(label, _text(exc)))
    reason: Reason
    match exc:
        case MediaError(kind="no_image"):
            reason = "no_image"
        case MediaError() | UpstreamResponseError() | AddressRefused():
            reason = "invalid_response"
        case HostUnresolved():
            reason = "network"
        case httpx.TimeoutException():
            return ProviderFailure("timeout", _labelled(label, "upstream timed out"))
        case httpx.TransportError():
            return ProviderFailure("network", _labelled(label, type(exc).__name__))
        case _:
            return None
    return ProviderFailure(reason, _labelled(label, _text(exc)))


def _text(exc: BaseException) -> str:
    return str(getattr(exc, "message", "") or exc)


def _labelled(label: str, message: str) -> str:
    return f"{label}: {message}" if label and not message.startswith(f"{label}:") else message
