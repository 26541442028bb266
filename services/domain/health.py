"""Circuit breakers per provider and operation: the pure rules.

A router records every attempt outcome it sees (:func:`record_failure`, :func:`record_success`)
in the shared record (:class:`~messages.ProviderHealth`, kept in KV by
:mod:`services.infra.health`), and asks :func:`blocked` at planning time whether a provider may
get the job. Only failures whose reason is in ``policy.breaker_reasons`` count: an account
problem (``auth``, ``quota_exhausted``), an operation the upstream does not offer
(``unsupported``) or a rate limit. A content-policy block or a bad prompt says nothing about
the provider's health.

It opens after ``policy.breaker_threshold`` consecutive counted failures, or at once when
the upstream said how long to stay away (a ``Retry-After``). It stays open for the upstream's
hint, else ``policy.breaker_cooldown`` seconds doubling with each re-open up to
``policy.breaker_max_cooldown``. Then one job is let through as a probe (``half_open``): its
success closes the breaker, its failure opens it again for longer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TypeAlias

import msgspec

from ...messages import Operation, ProviderHealth, Reason
from .config import PolicyConfig

__all__ = (
    "RECENT",
    "Change",
    "blocked",
    "describe",
    "empty",
    "probe_claim",
    "probe_due",
    "record_failure",
    "record_success",
)

Change: TypeAlias = Callable[[ProviderHealth], ProviderHealth | None]
"""A transition: the record after an observation, or ``None`` if it does not change."""

RECENT = 20
"""Failure times kept per record (for ``aiimg status``)."""


def record_failure(
    health: ProviderHealth, reason: Reason, message: str, retry_after: float, policy: PolicyConfig, now: float
) -> ProviderHealth | None:
    """The record after a failure of ``reason``; ``None`` if the failure does not count."""
    if reason not in policy.breaker_reasons:
        return None
    failures = health.failures + 1
    recent = [*health.recent[-(RECENT - 1) :], now]
    trips = health.state == "half_open" or failures >= policy.breaker_threshold or retry_after > 0
    if not trips:
        return _replace(health, failures=failures, reason=reason, message=message, recent=recent, at=now)
    if health.state == "open" and health.until > now + retry_after:
        # Already open for longer (another router's record of the same outage): keep its window.
        return _replace(health, failures=failures, reason=reason, message=message, recent=recent, at=now)
    opened = health.opened + 1
    cooldown = min(policy.breaker_max_cooldown, policy.breaker_cooldown * 2.0 ** (opened - 1))
    return _replace(
        health,
        state="open",
        failures=failures,
        reason=reason,
        message=message,
        until=now + (min(retry_after, policy.breaker_max_cooldown) if retry_after > 0 else cooldown),
        opened=opened,
        recent=recent,
        at=now,
    )


def record_success(health: ProviderHealth, now: float) -> ProviderHealth | None:
    """The record after a success; ``None`` if nothing changes (a closed breaker with no failures)."""
    if health.state == "closed" and health.failures == 0:
        return None
    return _replace(health, state="closed", failures=0, until=0.0, opened=0, at=now)


def blocked(health: ProviderHealth | None, now: float) -> str | None:
    """Why the provider must be skipped now, or ``None`` if it may get a job (maybe as the probe)."""
    if health is None or health.state == "closed":
        return None
    if health.until <= now:
        return None  # open and cooled down, or a probe that was never answered: a new probe may go
    return describe(health)


def probe_due(health: ProviderHealth | None, now: float) -> bool:
    """Whether a dispatch now is the breaker's probe: it tripped and its wait (or an unanswered
    probe's) is over."""
    return health is not None and health.state != "closed" and health.until <= now


def probe_claim(health: ProviderHealth | None, now: float, window: float) -> ProviderHealth | None:
    """The record that claims the probe for a dispatch now, or ``None`` if no probe is due."""
    if health is None or not probe_due(health, now):
        return None
    return _replace(health, state="half_open", until=now + window, at=now)


def describe(health: ProviderHealth) -> str:
    """``circuit open until 12:03:05 UTC: 3 × quota_exhausted (grok HTTP 429: …)``."""
    until = dt.datetime.fromtimestamp(health.until, dt.UTC).strftime("%H:%M:%S UTC")
    if health.state == "half_open":
        return f"circuit half-open: a probe job is running (until {until})"
    what = f"{health.failures} × {health.reason}" if health.failures > 1 else health.reason
    return f"circuit open until {until}: {what}" + (f" ({health.message})" if health.message else "")


def empty(provider: str, op: Operation) -> ProviderHealth:
    return ProviderHealth(provider=provider, op=op)


def _replace(health: ProviderHealth, **changes: object) -> ProviderHealth:
    return msgspec.structs.replace(health, **changes)
