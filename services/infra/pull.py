"""The NATS pull protocol: a durable pull consumer with bounded concurrency, on anyio.

nats-py runs a subscription's callback one message at a time, and its ``fetch(n)``
waits for the whole batch, so neither fits a service whose handlers take seconds.
:class:`PullConsumer` keeps its own pull requests open on the consumer, asks for
exactly as many messages as it has free slots, and runs every message in its own
task: a slow upstream call never holds another job (no head-of-line blocking).
Handlers get a :class:`~services.infra.delivery.Delivery`, never a nats-py message.

Graceful shutdown: stop asking for messages, hand back (nak) the ones not yet
started, let running handlers finish within ``drain_timeout``, then cancel.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import structlog
from anyio.abc import TaskStatus
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from .delivery import Delivery, NatsDelivery, crash_delay, settle

if TYPE_CHECKING:  # the bus builds these; a runtime import would be a cycle
    from .bus import Bus

__all__ = ("Handler", "PullConsumer")

log = structlog.get_logger("aiimg.runtime")

Handler = Callable[[Delivery], Awaitable[None]]

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
        next_subject = self.bus.names.consumer_next_subject(self.durable)
        sub = None
        try:
            async with anyio.create_task_group() as tg:

                async def on_msg(msg: Msg) -> None:
                    # Runs in nats-py's delivery task: start the handler from here, so a
                    # message is one task switch away from its handler, not two.
                    if self._on_status(msg):
                        return
                    delivery = NatsDelivery(msg)
                    if self._stopping.is_set():
                        await settle(delivery, "nak")  # not started: back to the stream at once
                        return
                    self._delivered()
                    self.in_flight += 1
                    tg.start_soon(self._run_one, delivery)

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
                try:
                    await sub.unsubscribe()
                except NatsError as exc:  # the connection is already gone: so is the subscription
                    log.debug("pull_inbox_not_unsubscribed", consumer=self.name, error=type(exc).__name__)
            self._stopped.set()

    async def stop(self) -> None:
        """Ask the loop to finish gracefully and wait until it has."""
        self._stopping.set()
        self._wake.set()
        await self._stopped.wait()

    # ---- internals ----------------------------------------------------------

    async def _run_one(self, delivery: Delivery) -> None:
        try:
            await self.handler(delivery)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await settle(delivery, "nak")  # stopped mid-way: whoever runs next takes it
            raise
        except Exception:
            delay = crash_delay(delivery.delivered)
            log.exception("handler_crashed", consumer=self.name, retry_in=delay, **delivery.describe())
            await settle(delivery, "nak", delay)
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
                except (NatsError, OSError) as exc:  # disconnected: retry shortly
                    log.warning("pull_request_failed", consumer=self.name, error=f"{type(exc).__name__}: {exc}")
                    await anyio.sleep(0.5)
                    continue
            wait = (self._requests[0][1] - time.monotonic() + 1.0) if self._requests else 1.0
            with anyio.move_on_after(max(0.05, wait)):
                await self._wake.wait()
