"""The one place that builds subject, stream and bucket names.

Layout (prefix ``aiimg`` by default)::

    aiimg.job.<job_id>.requested              JobRequested            (client)
    aiimg.job.<job_id>.cancel                 CancelRequested         (client)
    aiimg.job.<job_id>.dispatch.<provider>    AttemptDispatched       (router; provider work item)
    aiimg.job.<job_id>.attempt                AttemptSucceeded/Failed (provider, or router on timeout)
    aiimg.job.<job_id>.done                   JobCompleted/Failed/Cancelled (router)

All of them live in one stream (``AIIMG_JOBS``), so ``aiimg.job.<job_id>.>`` is a
job's complete, ordered history, and ``aiimg.job.*.dispatch.<provider>`` is the
provider's work queue (a durable consumer filtered on that subject).
"""

from __future__ import annotations

import re
from typing import Literal, TypeAlias

__all__ = (
    "DEFAULT_PREFIX",
    "Kind",
    "Names",
    "subject",
)

DEFAULT_PREFIX = "aiimg"
"""Subject prefix; change it to run several independent deployments on one NATS."""

Kind: TypeAlias = Literal["requested", "cancel", "dispatch", "attempt", "done", "history"]

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_WILD = "*"


def _token(value: str, what: str) -> str:
    if value == _WILD or _TOKEN.match(value):
        return value
    raise ValueError(f"invalid {what} for a subject token: {value!r}")


def subject(kind: Kind, job_id: str = _WILD, provider: str = _WILD, *, prefix: str = DEFAULT_PREFIX) -> str:
    """Build a job subject. ``job_id`` / ``provider`` default to ``*`` for consumer filters.

    ``kind="history"`` gives ``<prefix>.job.<job_id>.>``, every event of one job (or all jobs).
    """
    job = _token(job_id, "job id")
    base = f"{prefix}.job.{job}"
    if kind == "dispatch":
        return f"{base}.dispatch.{_token(provider, 'provider alias')}"
    if kind == "history":
        return f"{base}.>"
    return f"{base}.{kind}"


class Names:
    """Stream, bucket and consumer names for one deployment prefix."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not re.match(r"^[a-z][a-z0-9_-]{0,31}$", prefix):
            raise ValueError(f"invalid subject prefix: {prefix!r}")
        self.prefix = prefix

    @property
    def _up(self) -> str:
        return self.prefix.upper().replace("-", "_")

    @property
    def jobs_stream(self) -> str:
        return f"{self._up}_JOBS"

    @property
    def blob_bucket(self) -> str:
        return f"{self.prefix.replace('-', '_')}_blobs"

    @property
    def kv_bucket(self) -> str:
        return f"{self.prefix.replace('-', '_')}_state"

    @property
    def router_consumer(self) -> str:
        return "router"

    def provider_consumer(self, provider: str) -> str:
        return f"provider-{_token(provider, 'provider alias')}"

    def subject(self, kind: Kind, job_id: str = _WILD, provider: str = _WILD) -> str:
        return subject(kind, job_id, provider, prefix=self.prefix)

    def job_id_of(self, subj: str) -> str:
        """The job id token of a job subject (``<prefix>.job.<id>.…``)."""
        parts = subj.split(".")
        if len(parts) < 4 or parts[0] != self.prefix or parts[1] != "job":
            raise ValueError(f"not a job subject: {subj!r}")
        return parts[2]
