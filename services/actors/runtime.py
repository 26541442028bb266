"""What every actor does with a delivery before its own logic: decode it once, check it belongs.

:func:`decoding` turns an actor's handler of :class:`Inbound` events into a handler of raw
deliveries. A message whose subject is not a job subject, whose body does not decode, or
whose event does not belong where it was written (``messages.placed``), or that the actor
does not accept, is logged once (``rejected_message``, with the reason) and terminated —
never redelivered, never seen by the actor. Every log line while the actor handles an
accepted event carries its ``job_id``.

:class:`Heartbeats` keeps held deliveries alive while long upstream calls run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import anyio
import structlog
from nats.errors import Error as NatsError
from structlog.contextvars import bound_contextvars

from ...messages import DecodeError, JobEvent, Names, ParsedSubject, decode_event, placed
from ..infra.delivery import Delivery
from .ports import Handler

__all__ = ("Heartbeats", "Inbound", "Refused", "decoding")

log = structlog.get_logger("aiimg.runtime")


@dataclass(frozen=True, slots=True)
class Inbound:
    """A delivered job event that decoded and is where it belongs."""

    delivery: Delivery
    where: ParsedSubject
    event: JobEvent

    @property
    def writer(self) -> str:
        """The client or provider its subject names (``""`` for terminal events)."""
        return self.where.token


Accept = Callable[[ParsedSubject, JobEvent], str | None]
"""An actor's own check: why it refuses an event that is otherwise well-formed, or ``None``."""


Refused = Callable[[Delivery, ParsedSubject, str], Awaitable[None]]
"""An actor's answer to a refused message whose subject names a job (after the log line, before
the ``term``): the router ends a request nobody can read with ``job.rejected.v1``."""


def decoding(
    names: Names,
    handler: Callable[[Inbound], Awaitable[None]],
    *,
    accept: Accept | None = None,
    refused: Refused | None = None,
) -> Handler:
    """A delivery handler that decodes and checks each message once, then calls ``handler``."""

    async def handle(delivery: Delivery) -> None:
        try:
            where = names.parse(delivery.subject)
        except ValueError as exc:
            await _reject(delivery, str(exc))
            return
        try:
            event = decode_event(delivery.data)
        except DecodeError as exc:
            await _reject(delivery, str(exc), where, refused)
            return
        why = None if placed(where, event) else f"{event.__struct_config__.tag} does not belong on this subject"
        if why is None and accept is not None:
            why = accept(where, event)
        if why is not None:
            await _reject(delivery, why, where, refused)
            return
        with bound_contextvars(job_id=where.job_id):
            await handler(Inbound(delivery, where, event))

    return handle


async def _reject(
    delivery: Delivery, reason: str, where: ParsedSubject | None = None, refused: Refused | None = None
) -> None:
    fields = {"job_id": where.job_id} if where is not None else {}
    log.warning("rejected_message", reason=reason, **fields, **delivery.describe())
    if where is not None and refused is not None:
        with bound_contextvars(job_id=where.job_id):
            await refused(delivery, where, reason)
    await delivery.term()


class Heartbeats:
    """Sends ``+WPI`` (in progress) for every held delivery, every ``interval`` seconds.

    Keeps a long upstream call from being redelivered to another replica while this
    process is healthy; if the process dies, heartbeats stop and ``ack_wait`` redelivers.
    One loop per actor instead of one task per message: holding a delivery costs a dict
    insertion, whatever the number of attempts in flight. A heartbeat that cannot be sent
    (the connection is down) is logged once per delivery: without it, the message may be
    redelivered to another replica and the upstream called twice.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._held: dict[int, Delivery] = {}
        self._failing: set[int] = set()

    def __len__(self) -> int:
        """Deliveries held now (attempts running in this process)."""
        return len(self._held)

    @contextlib.contextmanager
    def holding(self, delivery: Delivery) -> Iterator[None]:
        key = id(delivery)
        self._held[key] = delivery
        try:
            yield
        finally:
            self._held.pop(key, None)
            self._failing.discard(key)

    async def run(self) -> None:
        while True:
            await anyio.sleep(self.interval)
            await self.beat()

    async def beat(self) -> None:
        """One round: every held delivery gets its heartbeat."""
        for key, delivery in list(self._held.items()):
            try:
                await delivery.in_progress()
            except (NatsError, OSError) as exc:
                if key not in self._failing:
                    self._failing.add(key)
                    log.warning(
                        "heartbeat_failed",
                        error=type(exc).__name__,
                        note="may be redelivered to another replica after ack_wait",
                        **delivery.describe(),
                    )
            else:
                self._failing.discard(key)
