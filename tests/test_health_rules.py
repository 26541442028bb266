"""Circuit breakers: the pure transitions and how planning uses them."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from aiimg.messages import AttemptDispatched, AttemptFailed, JobFailed, JobRequested, ProviderHealth
from aiimg.services.config import config_from_dict
from aiimg.services.domain import health as rules
from aiimg.services.domain.config import PolicyConfig
from aiimg.services.domain.routing import Health, decide
from aiimg.services.domain.state import fold

K = {"api_keys": ["k"]}
POLICY = PolicyConfig(breaker_threshold=3, breaker_cooldown=60.0, breaker_max_cooldown=600.0)


def closed(provider: str = "grok") -> ProviderHealth:
    return rules.empty(provider, "draw")


def fail(h: ProviderHealth, reason: str = "auth", now: float = 1000.0, retry_after: float = 0.0) -> ProviderHealth:
    out = rules.record_failure(h, reason, "grok HTTP 401: bad key", retry_after, POLICY, now)  # type: ignore[arg-type]
    assert out is not None
    return out


def test_it_opens_after_the_threshold_of_consecutive_counted_failures() -> None:
    h = fail(fail(closed()))
    assert h.state == "closed" and h.failures == 2 and rules.blocked(h, 1000.0) is None
    h = fail(h)
    assert h.state == "open" and h.until == 1060.0
    why = rules.blocked(h, 1001.0)
    assert why is not None and why.startswith("circuit open until") and "3 × auth" in why and "bad key" in why


def test_reasons_outside_the_policy_do_not_count() -> None:
    for reason in ("content_policy", "bad_request", "no_image", "timeout", "network"):
        assert rules.record_failure(closed(), reason, "x", 0.0, POLICY, 1.0) is None  # type: ignore[arg-type]


def test_an_upstream_retry_hint_opens_it_at_once_for_that_long() -> None:
    h = fail(closed(), "rate_limited", retry_after=42.0)
    assert h.state == "open" and h.until == 1042.0
    assert fail(closed(), "rate_limited", retry_after=10**6).until == 1000.0 + POLICY.breaker_max_cooldown


def test_a_cooled_down_breaker_lets_one_probe_through_and_its_result_decides() -> None:
    h = fail(fail(fail(closed())))
    assert rules.probe_claim(h, 1030.0, 5.0) is None  # still cooling down
    probe = rules.probe_claim(h, 1061.0, 5.0)
    assert probe is not None and probe.state == "half_open"
    assert rules.blocked(probe, 1062.0) is not None  # others wait while the probe is out
    assert rules.blocked(probe, 1067.0) is None  # an unanswered probe is given up
    reopened = fail(probe, now=1063.0)
    assert reopened.state == "open" and reopened.until == 1063.0 + 120.0  # the cool-down doubles
    closed_again = rules.record_success(probe, 1064.0)
    assert closed_again is not None and closed_again.state == "closed" and closed_again.failures == 0
    assert rules.record_success(closed_again, 1065.0) is None  # nothing to write


def test_the_cooldown_doubling_is_capped() -> None:
    h = closed()
    for i in range(12):
        h = fail(h, now=1000.0 + i)
        h = msgspec.structs.replace(h, state="half_open") if h.state == "open" else h
    assert fail(h, now=5000.0).until - 5000.0 == POLICY.breaker_max_cooldown


def test_records_refuse_non_finite_times() -> None:
    with pytest.raises(ValueError):
        ProviderHealth(provider="grok", op="draw", until=float("inf"))
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(
            b'{"type":"provider.health.v1","provider":"grok","op":"draw","until":-1}', type=ProviderHealth
        )


# ---- planning ---------------------------------------------------------------------------------


def cfg(**kw: Any) -> Any:
    return config_from_dict({"draw": {"provider": "grok", "fallback_1": "local", "grok": K}, **kw})


def req() -> JobRequested:
    return JobRequested(job_id="j1", op="draw", prompt="p", at=100.0)


def open_grok(until: float = 500.0) -> Health:
    record = ProviderHealth(provider="grok", op="draw", state="open", failures=3, reason="auth", until=until)
    return lambda provider, op: record if provider == "grok" else None


def test_an_open_primary_is_skipped_at_planning_and_the_dispatch_says_why() -> None:
    d = decide(fold("j1", [req()]), cfg(), 100.0, open_grok())
    assert isinstance(d.event, AttemptDispatched) and d.event.provider == "local"
    assert d.event.chain == ["grok", "local"]
    assert d.event.skipped["grok"].startswith("circuit open until")
    # encoded and decoded like any event
    assert msgspec.json.decode(msgspec.json.encode(d.event), type=AttemptDispatched) == d.event


def test_when_every_provider_is_open_the_job_fails_at_once_with_the_reasons() -> None:
    c = config_from_dict({"draw": {"provider": "grok", "grok": K}})
    d = decide(fold("j1", [req()]), c, 100.0, open_grok())
    assert isinstance(d.event, JobFailed) and "circuit open" in d.event.message and "grok" in d.event.message


def test_a_cooled_down_breaker_gets_the_job_as_its_probe() -> None:
    d = decide(fold("j1", [req()]), cfg(), 600.0, open_grok(until=500.0))
    assert isinstance(d.event, AttemptDispatched) and d.event.provider == "grok" and not d.event.skipped


def test_a_failure_that_opened_the_breaker_escalates_instead_of_retrying_there() -> None:
    c = cfg(draw={"provider": "grok", "fallback_1": "local", "grok": {**K, "max_retries": 3}})
    first = decide(fold("j1", [req()]), c, 100.0).event
    assert isinstance(first, AttemptDispatched)
    failed = AttemptFailed(job_id="j1", attempt=1, provider="grok", reason="rate_limited", retry_after=30, at=101.0)
    events: list[Any] = [req(), first, failed]
    assert decide(fold("j1", events), c, 102.0).event.provider == "grok"  # type: ignore[union-attr]  # closed: retry there
    d = decide(fold("j1", events), c, 102.0, open_grok())
    assert isinstance(d.event, AttemptDispatched) and d.event.provider == "local" and d.event.not_before == 0.0


def test_with_nowhere_else_to_go_a_job_retries_on_its_open_provider() -> None:
    c = config_from_dict({"draw": {"provider": "grok", "grok": {**K, "max_retries": 1}}})
    first = decide(fold("j1", [req()]), c, 100.0).event
    assert isinstance(first, AttemptDispatched)
    failed = AttemptFailed(job_id="j1", attempt=1, provider="grok", reason="rate_limited", retry_after=2, at=101.0)
    d = decide(fold("j1", [req(), first, failed]), c, 102.0, open_grok(until=104.0))
    assert isinstance(d.event, AttemptDispatched) and d.event.provider == "grok" and d.event.not_before == 104.0


def test_quota_exhausted_is_not_retried_by_default() -> None:
    c = cfg(draw={"provider": "grok", "fallback_1": "local", "grok": {**K, "max_retries": 3}})
    first = decide(fold("j1", [req()]), c, 100.0).event
    assert isinstance(first, AttemptDispatched)
    failed = AttemptFailed(job_id="j1", attempt=1, provider="grok", reason="quota_exhausted", at=101.0)
    d = decide(fold("j1", [req(), first, failed]), c, 102.0)
    assert isinstance(d.event, AttemptDispatched) and d.event.provider == "local"
