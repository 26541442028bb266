"""The router's pure decisions: chains, retries, escalation, timeouts."""

from __future__ import annotations

from typing import Any

from aiimg.messages import (
    AttemptDispatched,
    AttemptFailed,
    AttemptSucceeded,
    BlobRef,
    JobCompleted,
    JobFailed,
    JobRequested,
)
from aiimg.services.config import config_from_dict
from aiimg.services.domain.routing import decide, plan_chain
from aiimg.services.domain.state import fold

K = {"api_keys": ["k"]}
REF = BlobRef(name="sha256-" + "0" * 64, size=1, sha256="0" * 64, mime="image/png")


def cfg(**kw: Any) -> Any:
    return config_from_dict(kw)


def req(op: str = "draw", backend: str = "") -> JobRequested:
    return JobRequested(job_id="j1", op=op, prompt="p", backend=backend, at=100.0)  # type: ignore[arg-type]


def test_chain_dedupes_and_skips_empty_and_unconfigured() -> None:
    c = cfg(draw={"provider": "grok", "fallback_1": "", "fallback_2": "grok", "fallback_3": "gitee", "grok": K})
    plan = plan_chain(c, req())
    assert plan.chain == ["grok"]
    assert plan.skipped == {"gitee": "not configured"}


def test_chain_skips_providers_that_cannot_edit() -> None:
    c = cfg(
        edit={
            "provider": "grok",
            "fallback_1": "gemini",  # alias for gemini_native
            "fallback_2": "local",
            "grok": {**K, "supports_edit": False},
            "gemini_native": K,
        }
    )
    plan = plan_chain(c, req("edit"))
    assert plan.chain == ["gemini_native", "local"]
    assert plan.skipped == {"grok": "supports_edit = false"}
    assert plan_chain(cfg(draw={"provider": "gitee_async"}), req()).skipped == {"gitee_async": "cannot draw"}


def test_edit_fallbacks_off() -> None:
    c = cfg(edit={"provider": "local", "fallback_1": "grok", "grok": K, "fallback": {"enabled": False}})
    assert plan_chain(c, req("edit")).chain == ["local"]


def test_explicit_backend_goes_first_and_fallbacks_follow() -> None:
    c = cfg(
        draw={"provider": "gemini_native", "fallback_1": "grok", "fallback_2": "local", "grok": K, "gemini_native": K}
    )
    # The explicit backend takes the primary's place; the fallbacks still follow, deduplicated.
    assert plan_chain(c, req(backend="local")).chain == ["local", "grok"]
    assert plan_chain(c, req(backend="gemini")).chain == ["gemini_native", "grok", "local"]
    assert plan_chain(c, req(backend="auto")).chain == ["gemini_native", "grok", "local"]


def test_selfie_prefers_configured_provider() -> None:
    c = cfg(edit={"provider": "local", "grok": K}, selfie={"prefer_provider": "grok"})
    assert plan_chain(c, req("selfie")).chain == ["grok", "local"]


def _dispatch(n: int, provider: str, deadline: float = 1000.0, op: str = "draw") -> AttemptDispatched:
    return AttemptDispatched(
        job_id="j1",
        attempt=n,
        provider=provider,
        op=op,
        chain=["grok", "local"],
        deadline=deadline,
        at=100.0,  # type: ignore[arg-type]
    )


def _failed(n: int, provider: str, reason: str, retry_after: float = 0.0) -> AttemptFailed:
    return AttemptFailed(job_id="j1", attempt=n, provider=provider, reason=reason, retry_after=retry_after, at=101.0)  # type: ignore[arg-type]


def test_decide_flow_success() -> None:
    c = cfg(draw={"provider": "grok", "fallback_1": "local", "grok": K})
    state = fold("j1", [req()])
    d = decide(state, c, 100.0)
    assert isinstance(d.event, AttemptDispatched) and d.event.provider == "grok" and d.event.chain == ["grok", "local"]
    state = fold("j1", [req(), d.event])
    assert decide(state, c, 101.0).wait_until == d.event.deadline
    ok = AttemptSucceeded(job_id="j1", attempt=1, provider="grok", result=REF)
    assert isinstance(decide(fold("j1", [req(), d.event, ok]), c, 102.0).event, JobCompleted)


def test_non_retryable_escalates_at_once_and_exhaustion_lists_reasons() -> None:
    c = cfg(draw={"provider": "grok", "fallback_1": "local", "grok": K})
    events: list[Any] = [req(), _dispatch(1, "grok"), _failed(1, "grok", "content_policy")]
    d = decide(fold("j1", events), c, 102.0)
    assert isinstance(d.event, AttemptDispatched) and d.event.provider == "local" and d.event.not_before == 0.0
    events += [d.event, _failed(2, "local", "bad_request")]
    end = decide(fold("j1", events), c, 103.0).event
    assert isinstance(end, JobFailed)
    assert [(f.provider, f.reason) for f in end.failures] == [("grok", "content_policy"), ("local", "bad_request")]


def test_retryable_reason_retries_same_provider_with_backoff_then_escalates() -> None:
    c = cfg(draw={"provider": "grok", "fallback_1": "local", "grok": {**K, "max_retries": 1}}, policy={"backoff": 2.0})
    events: list[Any] = [req(), _dispatch(1, "grok"), _failed(1, "grok", "upstream_error")]
    d = decide(fold("j1", events), c, 102.0)
    assert isinstance(d.event, AttemptDispatched) and d.event.provider == "grok" and d.event.not_before == 104.0
    events += [d.event, _failed(2, "grok", "upstream_error")]
    d2 = decide(fold("j1", events), c, 105.0)
    assert isinstance(d2.event, AttemptDispatched) and d2.event.provider == "local"


def test_edit_retries_back_off_from_edit_fallback_retry_delay() -> None:
    """``edit.fallback.retry_delay`` (on the settings page) is where an edit's backoff starts, doubling."""
    c = cfg(
        edit={"provider": "grok", "fallback_1": "local", "grok": K, "fallback": {"max_retries": 2, "retry_delay": 5.0}},
        policy={"backoff": 2.0, "max_backoff": 60.0},
    )
    for op in ("edit", "selfie"):
        events: list[Any] = [req(op), _dispatch(1, "grok", op=op), _failed(1, "grok", "upstream_error")]
        d = decide(fold("j1", events), c, 102.0)
        assert isinstance(d.event, AttemptDispatched) and d.event.provider == "grok" and d.event.not_before == 107.0
        events += [d.event, _failed(2, "grok", "upstream_error")]
        d2 = decide(fold("j1", events), c, 110.0)
        assert isinstance(d2.event, AttemptDispatched) and d2.event.provider == "grok" and d2.event.not_before == 120.0
    # Drawing keeps policy.backoff.
    c = cfg(draw={"provider": "grok", "grok": {**K, "max_retries": 1}}, policy={"backoff": 2.0})
    events = [req(), _dispatch(1, "grok"), _failed(1, "grok", "upstream_error")]
    d = decide(fold("j1", events), c, 102.0)
    assert isinstance(d.event, AttemptDispatched) and d.event.not_before == 104.0


def test_retry_hint_beyond_cap_escalates_instead_of_waiting() -> None:
    c = cfg(draw={"provider": "grok", "fallback_1": "local", "grok": K}, policy={"max_retry_after": 60.0})
    events: list[Any] = [req(), _dispatch(1, "grok"), _failed(1, "grok", "rate_limited", retry_after=3600)]
    d = decide(fold("j1", events), c, 102.0)
    assert isinstance(d.event, AttemptDispatched) and d.event.provider == "local"


def test_timeout_is_decided_at_the_deadline() -> None:
    c = cfg(draw={"provider": "grok", "grok": K})
    events: list[Any] = [req(), _dispatch(1, "grok", deadline=200.0)]
    assert decide(fold("j1", events), c, 199.9).wait_until == 200.0
    d = decide(fold("j1", events), c, 200.0)
    assert isinstance(d.event, AttemptFailed) and d.event.reason == "timeout"


def test_fold_first_result_wins_and_terminal_is_final() -> None:
    events: list[Any] = [
        req(),
        _dispatch(1, "grok"),
        _failed(1, "grok", "timeout"),
        AttemptSucceeded(job_id="j1", attempt=1, provider="grok", result=REF),  # late: ignored
        _dispatch(1, "local"),  # duplicate attempt number: ignored
    ]
    state = fold("j1", events)
    assert len(state.attempts) == 1 and isinstance(state.attempts[0].outcome, AttemptFailed)
    done = JobFailed(job_id="j1")
    assert fold("j1", [*events, done, _dispatch(2, "local")]).attempts == state.attempts


def test_no_provider_fails_with_reason() -> None:
    c = cfg(draw={"provider": "grok"})
    d = decide(fold("j1", [req()]), c, 100.0)
    assert isinstance(d.event, JobFailed) and "grok: not configured" in d.event.message
