"""Per-user pacing (debounce, concurrency caps) and QQ reactions.

Pacing is plain bookkeeping, no AstrBot import: :class:`Debouncer` rejects a request
that comes within ``debounce_interval`` seconds of the last *accepted* one (a rejected
hit does not extend the window); :class:`UserSlots` caps how many jobs one user has
running. Reactions use OneBot's ``set_msg_emoji_like`` where the platform has it and
are skipped silently everywhere else.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import structlog

__all__ = ("FAILED", "PROCESSING", "SUCCEEDED", "Debouncer", "UserSlots", "react")

log = structlog.get_logger("aiimg.bridge.feedback")

PROCESSING: Final = 125
SUCCEEDED: Final = 79
FAILED: Final = 106
"""QQ emoji ids the old plugin used: processing, success, failure."""


class Debouncer:
    """Accept at most one hit per key per ``interval`` seconds, measured from the last accepted hit."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = max(0.0, interval)
        self._clock = clock
        self._last: dict[str, float] = {}

    def hit(self, key: str) -> bool:
        """True if accepted (and the window restarts), False if too soon (the window is unchanged)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self._last[key] = now
        if len(self._last) > 4096:  # forget windows that have long expired
            self._last = {k: v for k, v in self._last.items() if now - v < self.interval}
        return True


class UserSlots:
    """At most ``limit`` running jobs per user (``limit <= 0``: no cap)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._running: dict[str, int] = {}

    def running(self, user: str) -> int:
        return self._running.get(user, 0)

    def try_acquire(self, user: str) -> bool:
        if self.limit > 0 and self.running(user) >= self.limit:
            return False
        self._running[user] = self.running(user) + 1
        return True

    def release(self, user: str) -> None:
        n = self.running(user) - 1
        if n > 0:
            self._running[user] = n
        else:
            self._running.pop(user, None)

    @contextlib.contextmanager
    def held(self, user: str) -> Iterator[None]:
        """Release the slot taken by :meth:`try_acquire` when the block ends, however it ends."""
        try:
            yield
        finally:
            self.release(user)


async def react(event: Any, emoji_id: int) -> bool:
    """Put reaction ``emoji_id`` on the user's message (QQ via OneBot); False where unsupported.

    Never raises: a platform without reactions, an old NapCat, or a failed call all just
    return False, and the text feedback carries the information anyway.
    """
    try:
        if event.get_platform_name() != "aiocqhttp":
            return False
        bot = getattr(event, "bot", None)
        call = getattr(bot, "call_action", None)
        message_id = event.message_obj.message_id
        if call is None or not str(message_id).isdigit():
            return False
        await call(
            "set_msg_emoji_like",
            message_id=int(message_id),
            emoji_id=str(emoji_id),
            emoji_type="1",
            set=True,
        )
        return True
    except Exception as exc:  # a platform without reactions or an old NapCat: the text says it anyway
        log.debug("reaction_not_set", emoji=emoji_id, error=f"{type(exc).__name__}: {exc}")
        return False
