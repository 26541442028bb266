"""Per-user pacing under a burst: one user flooding the bot cannot starve the others.

The pacing primitives have no AstrBot import, so this runs on every Python; the bridge's
end-to-end tests (tests/bridge) cover the same rules through real AstrBot events.
"""

from __future__ import annotations

import anyio
import pytest

from aiimg.astrbot_bridge.feedback import Debouncer, UserSlots

pytestmark = pytest.mark.anyio


def test_a_burst_is_admitted_once_per_window_and_rejections_do_not_extend_it() -> None:
    now = 0.0
    d = Debouncer(10.0, clock=lambda: now)
    assert [d.hit("flooder") for _ in range(500)].count(True) == 1
    assert d.hit("quiet-user")  # another user is unaffected by the flood
    now = 9.9
    assert not d.hit("flooder")
    now = 10.0  # measured from the accepted hit at 0.0, not from the rejected ones
    assert d.hit("flooder")


async def test_concurrency_cap_holds_under_a_concurrent_burst() -> None:
    slots = UserSlots(2)
    peak: dict[str, int] = {}
    admitted: dict[str, int] = {}
    release = anyio.Event()

    async def request(user: str) -> None:
        if not slots.try_acquire(user):
            return
        with slots.held(user):
            admitted[user] = admitted.get(user, 0) + 1
            peak[user] = max(peak.get(user, 0), slots.running(user))
            await release.wait()

    async with anyio.create_task_group() as tg:
        for _ in range(200):
            tg.start_soon(request, "flooder")
        tg.start_soon(request, "quiet-user")
        await anyio.wait_all_tasks_blocked()
        assert slots.running("flooder") == 2 and slots.running("quiet-user") == 1
        release.set()
    assert peak == {"flooder": 2, "quiet-user": 1}
    assert admitted == {"flooder": 2, "quiet-user": 1}
    assert slots.running("flooder") == 0  # every slot given back
