"""The actor runtime: a durable pull consumer with bounded concurrency, on anyio.

nats-py runs a subscription's callback one message at a time, and its ``fetch(n)``
waits for the whole batch, so neither fits a service whose handlers take seconds.
:class:`PullConsumer` keeps its own pull requests open on the consumer, asks for
exactly as many messages as it has free slots, and runs every message in its own
task: a slow upstream call never holds another job (no head-of-line blocking).

Graceful shutdown: stop asking for messages, hand back (nak) the ones not yet
started, let running handlers finish within ``drain_timeout``, then cancel.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from nats.aio.msg import Msg

from ..infra.bus import Bus

__all__ = ("Heartbeats", "PullConsumer")

log = structlog.get_logger("aiimg.runtime")

Handler = Callable[[Msg], Awaitable[None]]

_EXPIRES = 5.0
"""Seconds each pull request stays open on the server; renewed continuously."""


class PullConsumer:
    """Runs ``handler`` for every message of a durable consumer, ``concurrency`` at a time."""

    def __init__(
        self,
        bus: Bus,
        durable: str,
        handler: Handler,
        *,
        concurrency: int = 64,
        name: str = "",
        drain_timeout: float = 30.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.bus = bus
        self.durable = durable
        self.handler = handler
        self.concurrency = concurrency
        self.name = name or durable
        self.drain_timeout = drain_timeout
        self.in_flight = 0
        self.handled = 0
        self._outstanding = 0
        self._requests: deque[list[float]] = deque()  # [remaining, expires_at]
        self._wake = anyio.Event()
        self._stopping = anyio.Event()
        self._stopped = anyio.Event()
        self._idle = anyio.Event()

    # ---- public -------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        nc = self.bus.nc
        inbox = nc.new_inbox()
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.bus.names.jobs_stream}.{self.durable}"
        sub = None
        try:
            async with anyio.create_task_group() as tg:

                async def on_msg(msg: Msg) -> None:
                    # Runs in nats-py's delivery task: start the handler from here, so a
                    # message is one task switch away from its handler, not two.
                    if self._on_status(msg):
                        return
                    if self._stopping.is_set():
                        with contextlib.suppress(Exception):
                            await msg.nak()
                        return
                    self._delivered()
                    self.in_flight += 1
                    tg.start_soon(self._run_one, msg)

                sub = await nc.subscribe(inbox, cb=on_msg)
                tg.start_soon(self._pull_loop, next_subject, inbox)
                task_status.started()
                await self._stopping.wait()
                # Drain: wait for running handlers, then cancel what is left.
                with anyio.move_on_after(self.drain_timeout):
                    while self.in_flight:
                        self._idle = anyio.Event()
                        await self._idle.wait()
                tg.cancel_scope.cancel()
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            self._stopped.set()

    async def stop(self) -> None:
        """Ask the loop to finish gracefully and wait until it has."""
        self._stopping.set()
        self._wake.set()
        await self._stopped.wait()

    # ---- internals ----------------------------------------------------------

    async def _run_one(self, msg: Msg) -> None:
        try:
            await self.handler(msg)
        except anyio.get_cancelled_exc_class():
            with contextlib.suppress(Exception):
                await msg.nak()
            raise
        except Exception:
            delay = crash_delay(msg)
            log.exception("handler_crashed", consumer=self.name, subject=msg.subject, retry_in=delay)
            with contextlib.suppress(Exception):
                await msg.nak(delay=delay)
        finally:
            self.in_flight -= 1
            self.handled += 1
            self._wake.set()
            self._idle.set()

    def _delivered(self) -> None:
        self._outstanding = max(0, self._outstanding - 1)
        if self._requests:
            self._requests[0][0] -= 1
            if self._requests[0][0] <= 0:
                self._requests.popleft()

    def _on_status(self, msg: Msg) -> bool:
        """Handle pull-request status messages (no data, ``Status`` header). True if it was one."""
        hdrs = msg.headers or {}
        status = hdrs.get("Status")
        if not status or msg.data:
            return False
        if status in ("408", "409", "404"):
            # The oldest request ended (expired, or the server cut it); what it still
            # owed us is in Nats-Pending-Messages.
            pending = int(hdrs.get("Nats-Pending-Messages", "0") or 0)
            if self._requests:
                req = self._requests.popleft()
                pending = pending or int(req[0])
            self._outstanding = max(0, self._outstanding - pending)
            if status == "409":
                log.debug("pull_request_ended", consumer=self.name, description=hdrs.get("Description", ""))
            self._wake.set()
        return True

    async def _pull_loop(self, subject: str, inbox: str) -> None:
        nc = self.bus.nc
        threshold = max(1, self.concurrency // 4)
        while not self._stopping.is_set():
            # A fresh event *before* reading the counters, so no wake-up is lost.
            self._wake = anyio.Event()
            now = time.monotonic()
            while self._requests and self._requests[0][1] < now - 1.0:
                # Lost status (e.g. across a reconnect): forget the request.
                req = self._requests.popleft()
                self._outstanding = max(0, self._outstanding - int(req[0]))
            free = self.concurrency - self.in_flight - self._outstanding
            if free >= threshold or (free > 0 and self._outstanding == 0):
                body = {"batch": free, "expires": int(_EXPIRES * 1e9)}
                try:
                    await nc.publish(subject, json.dumps(body).encode(), reply=inbox)
                    self._outstanding += free
                    self._requests.append([float(free), now + _EXPIRES])
                except Exception as exc:  # disconnected: retry shortly
                    log.warning("pull_request_failed", consumer=self.name, error=str(exc))
                    await anyio.sleep(0.5)
                    continue
            wait = (self._requests[0][1] - time.monotonic() + 1.0) if self._requests else 1.0
            with anyio.move_on_after(max(0.05, wait)):
                await self._wake.wait()


CRASH_DELAY = 5.0
"""Seconds before a message whose handler crashed comes back, doubling per delivery …"""
MAX_CRASH_DELAY = 300.0
"""… up to this: a message that always crashes its handler costs a log line every 5 minutes."""


def crash_delay(msg: Msg) -> float:
    """How long to hand back a message whose handler crashed: exponential in its deliveries."""
    try:
        delivered = max(1, int(msg.metadata.num_delivered))
    except Exception:  # no JetStream metadata (a plain message): the first delay
        delivered = 1
    return min(MAX_CRASH_DELAY, CRASH_DELAY * 2.0 ** min(delivered - 1, 16))


class Heartbeats:
    """Sends ``+WPI`` (in progress) for every held message, every ``interval`` seconds.

    Keeps a long upstream call from being redelivered to another replica while this
    process is healthy; if the process dies, heartbeats stop and ``ack_wait`` redelivers.
    One loop per actor instead of one task per message: holding a message costs a dict
    insertion, whatever the number of attempts in flight.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._held: dict[int, Msg] = {}

    @contextlib.contextmanager
    def holding(self, msg: Msg) -> Iterator[None]:
        key = id(msg)
        self._held[key] = msg
        try:
            yield
        finally:
            self._held.pop(key, None)

    async def run(self) -> None:
        while True:
            await anyio.sleep(self.interval)
            for msg in list(self._held.values()):
                with contextlib.suppress(Exception):
                    await msg.in_progress()


def describe(msg: Msg) -> dict[str, Any]:
    try:
        md = msg.metadata
        return {"subject": msg.subject, "seq": md.sequence.stream, "delivered": md.num_delivered}
    except Exception:
        return {"subject": msg.subject}
