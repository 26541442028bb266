"""Provider health records in the KV bucket (``health.<provider>.<op>``), read and written by key.

Writes are compare-and-set on the key's revision (``Nats-Expected-Last-Subject-Sequence``):
several routers update one breaker without losing each other's counts. Changes are announced
by the KV write itself: a plain subscription on ``$KV.<bucket>.health.>`` sees every write
attempt (a refused one too), so a listener treats it as "look again", never as the value.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec
import structlog
from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from ...messages import ProviderHealth
from ..domain.errors import BusError

if TYPE_CHECKING:
    from .bus import Bus, Subscription

__all__ = ("KvHealth", "decode_health")

log = structlog.get_logger("aiimg.health")


def decode_health(key: str, data: bytes) -> ProviderHealth | None:
    """A stored record, or ``None`` (logged) for one nobody can read: it is then overwritten."""
    try:
        return msgspec.json.decode(data, type=ProviderHealth)
    except (msgspec.DecodeError, ValueError) as exc:
        log.warning("health_record_unreadable", key=key, error=str(exc)[:200])
        return None


class KvHealth:
    """The breakers of one deployment in its KV bucket."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def read(self, key: str) -> tuple[ProviderHealth | None, int]:
        """The record under ``key`` and its revision (``(None, 0)`` if there is none)."""
        try:
            entry = await (await self.bus.kv()).get(key)
        except KeyNotFoundError:  # never written, or deleted (create() writes over a deleted key)
            return None, 0
        except NatsError as exc:
            raise BusError(f"cannot read {key}: {type(exc).__name__}: {exc}") from exc
        return decode_health(key, entry.value or b""), int(entry.revision or 0)

    async def write(self, key: str, health: ProviderHealth, revision: int) -> int | None:
        """Store ``health`` if ``key`` is still at ``revision`` (0: absent); its new revision, or
        ``None`` if someone wrote first."""
        data = msgspec.json.encode(health)
        try:
            kv = await self.bus.kv()
            if revision == 0:
                return int(await kv.create(key, data))
            return int(await kv.update(key, data, last=revision))
        except KeyWrongLastSequenceError:
            return None
        except NatsError as exc:
            raise BusError(f"cannot write {key}: {type(exc).__name__}: {exc}") from exc

    async def on_change(self, callback: Callable[[str], Awaitable[None]]) -> Subscription:
        """Call ``callback(key)`` when a health key may have changed; close the result to stop."""
        prefix = f"$KV.{self.bus.names.kv_bucket}."

        async def on_subject(subj: str) -> None:
            await callback(subj.removeprefix(prefix))

        return await self.bus.notices(prefix + self.bus.names.health_key(), on_subject)
