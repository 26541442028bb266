"""One message handed to an actor by a durable consumer, whatever carries it.

Actors never see a transport's message type: they get a :class:`Delivery` — the stored
subject and bytes, the stream sequence, how often it was delivered, and the four answers
a consumer understands. :class:`NatsDelivery` wraps a JetStream message; the in-memory bus
(:mod:`services.infra.memory`) has its own, so the same actor code runs on both.
"""

from __future__ import annotations

from typing import Any, Protocol

import structlog
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from .retry import Backoff

__all__ = ("CRASH_RETRY", "Delivery", "NatsDelivery", "crash_delay", "settle")

log = structlog.get_logger("aiimg.delivery")

CRASH_RETRY = Backoff(5.0, cap=300.0)
"""When a message whose handler crashed comes back: 5 s, doubling per delivery, at most 5 min
(a message that always crashes its handler costs a log line every 5 minutes)."""


class Delivery(Protocol):
    """A message from a durable consumer, and how to answer it."""

    @property
    def subject(self) -> str: ...

    @property
    def data(self) -> bytes: ...

    @property
    def seq(self) -> int:
        """Stream sequence of the message."""
        ...

    @property
    def delivered(self) -> int:
        """How many times it has been delivered (1 the first time)."""
        ...

    async def ack(self) -> None: ...

    async def nak(self, delay: float | None = None) -> None:
        """Hand it back, to be delivered again after ``delay`` seconds (at once when ``None``)."""
        ...

    async def term(self) -> None:
        """Never deliver it again (it can never be handled)."""
        ...

    async def in_progress(self) -> None:
        """Still working on it: restart its ``ack_wait``."""
        ...

    def describe(self) -> dict[str, Any]:
        """Subject, seq and deliveries, for log lines."""
        ...


class NatsDelivery:
    """A JetStream message as a :class:`Delivery`."""

    __slots__ = ("_delivered", "_msg", "_seq")

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        md = msg.metadata
        self._seq = int(md.sequence.stream)
        self._delivered = int(md.num_delivered)

    @property
    def subject(self) -> str:
        return self._msg.subject

    @property
    def data(self) -> bytes:
        return self._msg.data

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def delivered(self) -> int:
        return self._delivered

    async def ack(self) -> None:
        await self._msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        await self._msg.nak(delay=delay)

    async def term(self) -> None:
        await self._msg.term()

    async def in_progress(self) -> None:
        await self._msg.in_progress()

    def describe(self) -> dict[str, Any]:
        return {"subject": self.subject, "seq": self._seq, "delivered": self._delivered}


def crash_delay(delivered: int) -> float:
    """How long to hand back a message whose handler crashed: exponential in its deliveries."""
    return CRASH_RETRY.delay(delivered)


async def settle(delivery: Delivery, answer: str, delay: float | None = None) -> None:
    """Answer ``delivery`` where no caller is left to handle a failure (shutdown, a crashed
    handler): a lost connection only means the server redelivers it after ``ack_wait``."""
    try:
        if answer == "nak":
            await delivery.nak(delay)
        elif answer == "ack":
            await delivery.ack()
        else:
            await delivery.term()
    except (NatsError, OSError) as exc:
        log.info("answer_not_sent", answer=answer, error=type(exc).__name__, **delivery.describe())
