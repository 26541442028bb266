"""Trying again a little later: one backoff schedule and one retry loop for every caller.

A :class:`Backoff` says how long to wait after each failed try and when to give up;
:func:`retrying` calls a function until it returns, retrying only the exceptions it is
told to and raising the last one as it is once the backoff gives up. Callers pass their
schedule in (a constructor or function argument), so a test picks its own timing instead
of patching a module constant, and can pass ``sleep`` / ``clock`` to run without waiting.

Used by blob reads (a replica that is behind), result storing (a blob store in a leader
election), waiting for the JetStream layout, and a client's quiet-period polling.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio

__all__ = ("Backoff", "retrying")

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits of ``first`` seconds, times ``factor`` after each failed try, at most ``cap``.

    ``tries`` (the first one included) and ``within`` (seconds since the first try) bound
    the whole; ``0`` leaves that bound off. ``Backoff(0.25, tries=5)`` tries five times,
    waiting 0.25, 0.5, 1 and 2 s in between; ``Backoff(1.0, factor=1.0, within=30)`` tries
    every second for 30 s.
    """

    first: float
    factor: float = 2.0
    cap: float = math.inf
    tries: int = 0
    within: float = 0.0

    def __post_init__(self) -> None:
        if self.first < 0 or self.factor < 1 or self.cap < 0 or self.tries < 0 or self.within < 0:
            raise ValueError(f"not a backoff: {self!r}")

    def delay(self, failed: int) -> float:
        """The wait after the ``failed``-th failed try in a row (1 for the first)."""
        try:
            wait = self.first * self.factor ** max(0, failed - 1)
        except OverflowError:  # thousands of failures in a row: long past any cap
            wait = math.inf
        return min(self.cap, wait)

    def gives_up(self, failed: int, elapsed: float) -> bool:
        """Whether to stop after ``failed`` failed tries, ``elapsed`` seconds after the first began."""
        return (self.tries > 0 and failed >= self.tries) or (self.within > 0 and elapsed >= self.within)


async def retrying(
    call: Callable[[], Awaitable[_T]],
    backoff: Backoff,
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    on_retry: Callable[[BaseException, float], object] | None = None,
    sleep: Callable[[float], Awaitable[object]] = anyio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> _T:
    """``await call()`` until it returns.

    An exception of a ``retry_on`` type is retried after :meth:`Backoff.delay` (``on_retry(exc,
    wait)`` is called first, to log it), and raised as it is once the backoff gives up. Any
    other exception — cancellation included — is raised at once.
    """
    started = clock()
    failed = 0
    wait = 0.0
    while True:
        try:
            return await call()
        except retry_on as exc:
            failed += 1
            if backoff.gives_up(failed, clock() - started):
                raise
            wait = backoff.delay(failed)
            if on_retry is not None:
                on_retry(exc, wait)
        await sleep(wait)
