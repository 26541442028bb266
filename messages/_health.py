"""Provider health: one circuit breaker per provider and operation, shared by every router.

Stored as JSON in the KV bucket ``<prefix>_state`` under ``health.<provider>.<op>``
(:meth:`Names.health_key`), written by routers only (compare-and-set on the key's
revision) and watched by all of them, so a provider one router found dead is skipped by
every replica. Any NATS client may read it (``aiimg status`` does).

States (``docs/operations.md``, "Provider health")::

    closed ──(threshold consecutive failures of a breaker reason,
              or one with an upstream retry hint)──▶ open
    open ──(until passes; one router claims the probe)──▶ half_open
    half_open ──(probe succeeds)──▶ closed      (probe fails)──▶ open, longer
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, TypeAlias

import msgspec

from ._types import Operation, ProviderAlias, Reason

__all__ = ("BreakerState", "ProviderHealth")

BreakerState: TypeAlias = Literal["closed", "open", "half_open"]

_Seconds = Annotated[float, msgspec.Meta(ge=0)]


class ProviderHealth(msgspec.Struct, frozen=True, kw_only=True, tag="provider.health.v1", tag_field="type"):
    """The breaker of ``provider`` for ``op`` (one record per KV key)."""

    provider: ProviderAlias
    op: Operation
    state: BreakerState = "closed"
    failures: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Consecutive failures with a breaker reason since the last success."""
    reason: Reason | Literal[""] = ""
    """The reason of the last counted failure."""
    message: Annotated[str, msgspec.Meta(max_length=500)] = ""
    """Its message (already free of secrets: it is the attempt's own failure message)."""
    until: _Seconds = 0.0
    """``open``: when a probe may go; ``half_open``: when an unanswered probe is given up."""
    opened: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Times it opened in a row without a success in between (the cool-down doubles each time)."""
    recent: list[_Seconds] = msgspec.field(default_factory=list)
    """When the last failures (any breaker reason) happened, newest last, at most 20."""
    at: _Seconds = 0.0
    """When this record was written."""

    def __post_init__(self) -> None:
        for value in (self.until, self.at, *self.recent):
            if not math.isfinite(value):
                raise ValueError("times must be finite")
