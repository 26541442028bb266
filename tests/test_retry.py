"""The one retry helper: its schedule, when it gives up, what it retries — with an injected
clock and sleep, so nothing here waits or reads the wall clock."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import pytest

from aiimg.services.infra.retry import Backoff, retrying

pytestmark = pytest.mark.anyio


class Flaky(Exception):
    pass


class FakeTime:
    """A clock that moves only when something sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def failing(times: int, exc: type[Exception] = Flaky) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    calls: list[int] = []

    async def call() -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= times:
            raise exc(f"try {len(calls)}")
        return "ok"

    return calls, call


def test_the_schedule_grows_by_the_factor_up_to_the_cap() -> None:
    b = Backoff(0.05, factor=4.0, cap=0.5)
    assert [b.delay(n) for n in (1, 2, 3, 4)] == [0.05, 0.2, 0.5, 0.5]
    assert [Backoff(1.0, factor=1.0).delay(n) for n in (1, 5)] == [1.0, 1.0]
    assert Backoff(5.0, cap=300.0).delay(10_000) == 300.0  # no overflow however many failures
    assert Backoff(5.0).delay(10_000) == math.inf


@pytest.mark.parametrize("bad", [{"first": -1.0}, {"first": 1.0, "factor": 0.5}, {"first": 1.0, "tries": -1}])
def test_a_schedule_that_makes_no_sense_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**bad)


async def test_retries_until_the_call_returns() -> None:
    t = FakeTime()
    calls, call = failing(2)
    seen: list[tuple[str, float]] = []
    result = await retrying(
        call,
        Backoff(0.25, tries=5),
        retry_on=Flaky,
        on_retry=lambda exc, wait: seen.append((str(exc), wait)),
        sleep=t.sleep,
        clock=t.clock,
    )
    assert result == "ok" and calls == [1, 2, 3]
    assert t.slept == [0.25, 0.5] and seen == [("try 1", 0.25), ("try 2", 0.5)]


async def test_the_last_error_is_raised_as_it_is_after_the_last_try() -> None:
    t = FakeTime()
    calls, call = failing(10)
    with pytest.raises(Flaky, match="try 5"):
        await retrying(call, Backoff(0.25, tries=5), retry_on=Flaky, sleep=t.sleep, clock=t.clock)
    assert len(calls) == 5 and t.slept == [0.25, 0.5, 1.0, 2.0]  # no wait after the last try


async def test_a_time_bound_stops_the_tries() -> None:
    t = FakeTime()
    calls, call = failing(100)
    with pytest.raises(Flaky):
        await retrying(call, Backoff(1.0, factor=1.0, within=30.0), retry_on=Flaky, sleep=t.sleep, clock=t.clock)
    assert len(calls) == 31 and sum(t.slept) == 30.0


async def test_other_exceptions_are_not_retried() -> None:
    t = FakeTime()
    calls, call = failing(3, ValueError)
    with pytest.raises(ValueError):
        await retrying(call, Backoff(0.1, tries=5), retry_on=Flaky, sleep=t.sleep, clock=t.clock)
    assert calls == [1] and t.slept == []
