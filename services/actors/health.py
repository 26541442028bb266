"""The router's view of every provider's circuit breaker, shared through the bus.

:class:`HealthBoard` keeps the records the router plans with (read at start, refreshed when
any router writes one and every ``refresh`` seconds), and updates them compare-and-set when
this router sees an attempt's outcome, so counts from several replicas add up.
The rules themselves are pure (:mod:`services.domain.health`).
"""

from __future__ import annotations

import anyio
import structlog

from ...messages import Names, Operation, ProviderHealth, Reason
from ..domain import health as rules
from ..domain.config import ConfigBase
from ..domain.errors import BusError
from .ports import Closeable, HealthPort

__all__ = ("HealthBoard",)

log = structlog.get_logger("aiimg.health")

WRITE_TRIES = 8
"""Compare-and-set rounds for one update before giving up (each round re-reads the record)."""

REFRESH = 30.0
"""Seconds between full re-reads (a missed change notice is corrected within this time)."""


class HealthBoard:
    def __init__(self, port: HealthPort, config: ConfigBase, *, refresh: float = REFRESH) -> None:
        self.port = port
        self.config = config
        self.refresh = refresh
        self._names = Names(config.nats.prefix)
        self._records: dict[str, tuple[ProviderHealth | None, int]] = {}
        self._notices: Closeable | None = None

    # ---- reading -------------------------------------------------------------------

    def record(self, provider: str, op: Operation) -> ProviderHealth | None:
        """The breaker as last read (``None``: never tripped, or not read yet)."""
        return self._records.get(self._key(provider, op), (None, 0))[0]

    def needs_probe(self, provider: str, op: Operation, now: float) -> bool:
        return rules.probe_due(self.record(provider, op), now)

    async def load(self) -> None:
        """Read the breaker of every provider this config can plan with (at start, then every
        ``refresh`` s); plans never name the others."""
        for provider, ops in self.config.capabilities.items():
            for op in ops:
                if self.config.can_serve(op, provider):
                    await self._reload(self._key(provider, op))

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow other routers' writes until cancelled."""
        self._notices = await self.port.on_change(self._reload)
        try:
            await self.load()
            task_status.started()
            while True:
                await anyio.sleep(self.refresh)
                try:
                    await self.load()
                except (BusError, OSError, TimeoutError) as exc:
                    log.warning("health_refresh_failed", error=str(exc)[:200])
        finally:
            with anyio.CancelScope(shield=True):
                await self._notices.close()

    async def _reload(self, key: str) -> None:
        self._records[key] = await self.port.read(key)

    # ---- writing -------------------------------------------------------------------

    async def failed(
        self, provider: str, op: Operation, reason: Reason, message: str, retry_after: float, now: float
    ) -> None:
        policy = self.config.policy
        await self._update(
            provider, op, lambda h: rules.record_failure(h, reason, message[:500], retry_after, policy, now)
        )

    async def succeeded(self, provider: str, op: Operation, now: float) -> None:
        await self._update(provider, op, lambda h: rules.record_success(h, now))

    async def claim_probe(self, provider: str, op: Operation, now: float, window: float) -> bool:
        """Make this router's dispatch the probe of an open breaker; ``False`` if another got it."""
        claimed = await self._update(provider, op, lambda h: rules.probe_claim(h, now, window))
        # Not claimed: the fresh record is closed (a probe succeeded: go) or blocked (someone
        # else's probe is out, or it opened again: skip).
        return claimed is not None or rules.blocked(self.record(provider, op), now) is None

    async def _update(self, provider: str, op: Operation, change: rules.Change) -> ProviderHealth | None:
        """Apply ``change`` compare-and-set; the record written, or ``None`` if nothing was."""
        key = self._key(provider, op)
        if key not in self._records:
            await self._reload(key)
        for _ in range(WRITE_TRIES):
            current, revision = self._records[key]
            new = change(current or rules.empty(provider, op))
            if new is None:
                return None
            written = await self.port.write(key, new, revision)
            if written is not None:
                self._records[key] = (new, written)
                _log_transition(current, new)
                return new
            await self._reload(key)
        log.warning("health_write_contended", provider=provider, op=op, tries=WRITE_TRIES)
        return None

    def _key(self, provider: str, op: Operation) -> str:
        return self._names.health_key(provider, op)


def _log_transition(before: ProviderHealth | None, after: ProviderHealth) -> None:
    state = before.state if before is not None else "closed"
    if after.state == state and not (after.state == "open" and before is not None and after.until != before.until):
        return
    if after.state == "open":
        log.warning(
            "breaker_opened",
            provider=after.provider,
            op=after.op,
            reason=after.reason,
            failures=after.failures,
            until=round(after.until, 3),
            message=after.message,
        )
    elif after.state == "half_open":
        log.info("breaker_probing", provider=after.provider, op=after.op)
    else:
        log.info("breaker_closed", provider=after.provider, op=after.op)
