"""Scalar types shared by every message: operations, failure reasons, ids."""

from __future__ import annotations

from typing import Annotated, Literal, TypeAlias

import msgspec

__all__ = ("FAILURE_REASONS", "REJECT_REASONS", "JobId", "Operation", "ProviderAlias", "Reason", "RejectReason")

Operation: TypeAlias = Literal["draw", "edit", "selfie", "video"]
"""What a job asks for. ``selfie`` is an edit whose first inputs are reference portraits."""

Reason: TypeAlias = Literal[
    "rate_limited",
    "quota_exhausted",
    "auth",
    "bad_request",
    "content_policy",
    "no_image",
    "unsupported",
    "timeout",
    "upstream_error",
    "network",
    "invalid_response",
]
"""Why one attempt failed. Drives retry, fallback and circuit-breaker decisions
(``policy.retry_reasons``, ``policy.breaker_reasons``).

``rate_limited`` passes (try again soon); ``quota_exhausted`` does not (a balance, credits or a
plan quota ran out: retrying the same account bills nothing and fails again)."""

FAILURE_REASONS: tuple[Reason, ...] = (
    "rate_limited",
    "quota_exhausted",
    "auth",
    "bad_request",
    "content_policy",
    "no_image",
    "unsupported",
    "timeout",
    "upstream_error",
    "network",
    "invalid_response",
)

RejectReason: TypeAlias = Literal["bad_request", "too_many_jobs"]
"""Why the router refused a request outright (``job.rejected.v1``)."""

REJECT_REASONS: tuple[RejectReason, ...] = ("bad_request", "too_many_jobs")


# Subject tokens must not contain ".", "*", ">" or whitespace; keep them to a portable set.
JobId: TypeAlias = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
"""A job id, client-chosen, used verbatim as a NATS subject token."""

ProviderAlias: TypeAlias = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_]{1,32}$")]
"""A provider alias such as ``grok`` or ``gemini_native``; also a subject token."""
