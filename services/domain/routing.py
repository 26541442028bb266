"""The router's decisions: provider chains and what to do next for a job. Pure functions.

``plan_chain`` turns a request and the config into an ordered, deduplicated list of
providers that can serve the operation. ``request_problem`` says why a request must be
refused before any provider is called. ``decide`` looks at a folded :class:`JobState`
and the time and returns the next event to write (or how long to wait).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...messages import (
    AttemptDispatched,
    AttemptFailed,
    AttemptSucceeded,
    FailureSummary,
    JobCancelled,
    JobCompleted,
    JobEvent,
    JobFailed,
    JobRejected,
    JobRequested,
    Names,
    Operation,
    ProviderHealth,
)
from .config import ConfigBase
from .health import blocked
from .sizes import parse_output
from .state import JobState

__all__ = ("Decision", "Health", "Plan", "decide", "plan_chain", "request_problem", "retry_delay")

Health = Callable[[str, Operation], ProviderHealth | None]
"""The shared breaker record of a provider for an operation, as the router last read it."""


def _no_health(provider: str, op: Operation) -> ProviderHealth | None:
    return None


_NEEDS_INPUT: frozenset[Operation] = frozenset({"edit", "selfie", "video"})


@dataclass(frozen=True, slots=True)
class Plan:
    chain: list[str]
    skipped: dict[str, str]
    """Providers named in config or the request that were left out, and why."""


def plan_chain(config: ConfigBase, request: JobRequested) -> Plan:
    """``[explicit backend or primary, fallback_1, fallback_2, fallback_3]``, deduplicated.

    Empty entries are skipped; so are providers that cannot do the operation, are not
    configured, or (for edits) have ``supports_edit = false``. Unlike the old plugin,
    the primary is never tried a second time as a fallback.
    """
    op: Operation = request.op
    candidates: list[str]
    if op == "video":
        candidates = [config.video.provider]
    else:
        section = config.draw if op == "draw" else config.edit
        backend = request.backend.strip()
        primary = backend if backend and backend.lower() != "auto" else section.provider
        candidates = [primary]
        if op == "selfie" and not (backend and backend.lower() != "auto"):
            prefer = config.selfie.prefer_provider.strip()
            if prefer and prefer.lower() != "auto":
                candidates.insert(0, prefer)
        if op == "draw" or config.edit.fallback.enabled:
            candidates += section.fallbacks()
    chain: list[str] = []
    skipped: dict[str, str] = {}
    for raw in candidates:
        alias = config.canonical(op, raw) if raw else ""
        if not alias or alias in chain or alias in skipped:
            continue
        if alias not in config.capabilities:
            skipped[alias] = "unknown provider"
        elif op not in config.capabilities[alias]:
            skipped[alias] = f"cannot {op}"
        elif not config.can_serve(op, alias):
            block = config.block(op, alias)
            if block is not None and op in ("edit", "selfie") and not block.supports_edit:
                skipped[alias] = "supports_edit = false"
            else:
                skipped[alias] = "not configured"
        else:
            chain.append(alias)
    return Plan(chain=chain, skipped=skipped)


def request_problem(config: ConfigBase, client: str, req: JobRequested) -> str | None:
    """Why ``req`` (written by ``client``) must be refused as ``bad_request``; ``None`` if it may run.

    Checked before any provider is called, so an oversized or malformed request costs the
    service one decode, never an upstream call or the memory to load its inputs:
    ``limits.max_inputs`` and ``limits.max_input_bytes`` (declared sizes; providers check the
    bytes they read again), inputs only from buckets this client may use (its own input and
    reference buckets, or earlier results), at least one input for edit/selfie/video, and a
    readable size intent within ``limits.max_pixels``.
    """
    lim = config.limits
    inputs = req.inputs
    if len(inputs) > lim.max_inputs:
        return f"{len(inputs)} input images; at most {lim.max_inputs} per job (limits.max_inputs)"
    total = sum(ref.size for ref in inputs)
    if total > lim.max_input_bytes:
        return f"input images of {total} bytes; at most {lim.max_input_bytes} per job (limits.max_input_bytes)"
    names = Names(config.nats.prefix)
    allowed = {names.blob_bucket}
    if client:
        allowed |= {names.input_bucket(client), names.refs_bucket(client)}
    for i, ref in enumerate(inputs, 1):
        if ref.bucket not in allowed:
            return f"input #{i} is in bucket {ref.bucket!r}, which client {client or '?'} may not read from"
    if req.op in _NEEDS_INPUT and not inputs:
        return f"{req.op} needs at least one input image"
    if req.output.strip():
        try:
            intent = parse_output(req.output)
        except ValueError as exc:
            return f"output {req.output!r}: {exc}"
        if intent.width and intent.height and intent.width * intent.height > lim.max_pixels:
            return f"output {req.output!r} is over {lim.max_pixels} pixels (limits.max_pixels)"
    return None


@dataclass(frozen=True, slots=True)
class Decision:
    """What the router does next for one job.

    Exactly one of: ``event`` to write (then decide again), ``wait_until`` (a time to
    look again), or neither (the job needs nothing more from the router).
    """

    event: JobEvent | None = None
    wait_until: float | None = None


def _max_retries(config: ConfigBase, op: Operation, provider: str) -> int:
    if op in ("edit", "selfie"):
        return max(0, config.edit.fallback.max_retries)
    block = config.block(op, provider)
    return max(0, block.max_retries) if block is not None else 0


def _backoff_start(config: ConfigBase, op: Operation) -> float:
    """Where the exponential backoff starts: ``edit.fallback.retry_delay`` for edits and selfies
    (the edit chain's own retry settings, as ``edit.fallback.max_retries``), else ``policy.backoff``."""
    if op in ("edit", "selfie"):
        return max(0.0, config.edit.fallback.retry_delay)
    return max(0.0, config.policy.backoff)


def retry_delay(config: ConfigBase, retries_used: int, retry_after: float, op: Operation = "draw") -> float | None:
    """Seconds before retrying on the same provider, or ``None`` to escalate now.

    Exponential from ``policy.backoff`` (edits and selfies: ``edit.fallback.retry_delay``) capped
    at ``policy.max_backoff``; a longer upstream hint wins, unless it exceeds ``policy.max_retry_after``.
    """
    pol = config.policy
    if retry_after > pol.max_retry_after:
        return None
    backoff = min(pol.max_backoff, _backoff_start(config, op) * float(2**retries_used))
    return float(max(backoff, retry_after))


def decide(state: JobState, config: ConfigBase, now: float, health: Health = _no_health) -> Decision:
    """The next step for ``state`` at time ``now``.

    ``health`` gives the providers' circuit breakers: a provider whose breaker is open is
    skipped (the dispatch's ``skipped`` says why), except that a job already on it retries
    there when no provider after it is usable.
    """
    req = state.request
    if req is None or state.terminal is not None:
        return Decision()
    if state.cancel_requested is not None:
        return Decision(JobCancelled(job_id=state.job_id, reason=state.cancel_requested, at=now))
    current = state.current
    if current is None:
        problem = request_problem(config, state.client, req)
        if problem is not None:
            return Decision(JobRejected(job_id=state.job_id, reason="bad_request", message=problem, at=now))
        plan = plan_chain(config, req)
        if not plan.chain:
            why = "; ".join(f"{k}: {v}" for k, v in plan.skipped.items()) or "nothing configured"
            return Decision(JobFailed(job_id=state.job_id, message=f"no provider can {req.op} ({why})", at=now))
        first, skipped = _next_usable(plan.chain, req.op, health, now)
        if first is None:
            why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
            return Decision(JobFailed(job_id=state.job_id, message=f"no provider can {req.op} now ({why})", at=now))
        return Decision(_dispatch(config, req, plan.chain, first, 1, now, now, skipped))
    outcome = current.outcome
    if outcome is None:
        if now >= current.dispatch.deadline:
            return Decision(
                AttemptFailed(
                    job_id=state.job_id,
                    attempt=current.n,
                    provider=current.provider,
                    reason="timeout",
                    message="no answer from the provider before its deadline",
                    at=now,
                )
            )
        return Decision(wait_until=current.dispatch.deadline)
    if isinstance(outcome, AttemptSucceeded):
        return Decision(
            JobCompleted(
                job_id=state.job_id,
                result=outcome.result,
                provider=outcome.provider,
                attempt=outcome.attempt,
                source_url=outcome.source_url,
                at=now,
            )
        )
    chain = state.chain
    provider = current.provider
    idx = chain.index(provider) if provider in chain else len(chain)
    nxt, skipped = _next_usable(chain[idx + 1 :], req.op, health, now)
    if outcome.reason in config.policy.retry_reasons and (
        nxt is None or blocked(health(provider, req.op), now) is None
    ):
        # Retry here, unless this provider's breaker is open and another one can take the job.
        used = _consecutive_on(state, provider) - 1
        if used < _max_retries(config, req.op, provider):
            delay = retry_delay(config, used, outcome.retry_after, req.op)
            if delay is not None:
                return Decision(_dispatch(config, req, chain, provider, current.n + 1, now, now + delay))
    if nxt is not None:
        return Decision(_dispatch(config, req, chain, nxt, current.n + 1, now, now, skipped))
    failures = [
        FailureSummary(attempt=a.n, provider=a.provider, reason=a.outcome.reason, message=a.outcome.message)
        for a in state.attempts
        if isinstance(a.outcome, AttemptFailed)
    ]
    message = "every provider failed"
    if skipped:
        message += " (skipped " + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + ")"
    return Decision(JobFailed(job_id=state.job_id, failures=failures, message=message, at=now))


def _next_usable(candidates: list[str], op: Operation, health: Health, now: float) -> tuple[str | None, dict[str, str]]:
    """The first of ``candidates`` whose breaker lets a job through, and those skipped before it."""
    skipped: dict[str, str] = {}
    for alias in candidates:
        why = blocked(health(alias, op), now)
        if why is None:
            return alias, skipped
        skipped[alias] = why
    return None, skipped


def _consecutive_on(state: JobState, provider: str) -> int:
    count = 0
    for a in reversed(state.attempts):
        if a.provider != provider:
            break
        count += 1
    return count


def _dispatch(
    config: ConfigBase,
    req: JobRequested,
    chain: list[str],
    provider: str,
    n: int,
    now: float,
    start: float,
    skipped: dict[str, str] | None = None,
) -> AttemptDispatched:
    block = config.block(req.op, provider)
    timeout = block.timeout if block is not None else 120.0
    return AttemptDispatched(
        job_id=req.job_id,
        attempt=n,
        provider=provider,
        op=req.op,
        prompt=req.prompt,
        inputs=list(req.inputs),
        output=req.output,
        chain=list(chain),
        deadline=start + timeout + config.policy.timeout_grace,
        not_before=start if start > now else 0.0,
        skipped={k: v[:2000] for k, v in (skipped or {}).items()},
        at=now,
    )
