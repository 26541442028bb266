"""The provider actor: consumes ``provider-<alias>`` and runs each work item through a provider.

Pulling work, heartbeats, deadlines, loading and checking input blobs, checking and storing
the result, writing the attempt event and redelivery checks are done here, once, for every
upstream module in ``services/providers/``.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter

import anyio
import httpx
import structlog
from structlog.contextvars import bound_contextvars

from ...messages import (
    AttemptDispatched,
    AttemptFailed,
    AttemptSucceeded,
    BlobRef,
    JobEvent,
    ParsedSubject,
)
from ..domain.errors import BlobError, BusError, MediaError, ProviderFailure
from ..domain.settings import ProviderSettings
from ..infra.delivery import Delivery
from ..infra.http import DownloadClient, download_client, upstream_client
from ..infra.logging import REDACTOR, redact
from ..infra.media import MediaInfo, check_image, check_media
from ..infra.retry import Backoff, retrying
from ..providers._errors import MAX_RETRY_AFTER, failure_for
from ..providers.base import AttemptContext, InputImage, Provider
from .ports import JobBus
from .runtime import Heartbeats, Inbound, decoding

__all__ = ("MAX_RETRY_AFTER", "STORE_RETRY", "ProviderActor")

log = structlog.get_logger("aiimg.provider")

STORE_RETRY = Backoff(0.25, tries=5)
"""Storing a result while the blob store does not answer (a leader election): five tries,
0.25 s apart doubling, then the work item goes back to the queue (:meth:`ProviderActor._store`)."""


class ProviderActor:
    """Consumes ``provider-<alias>`` and runs each work item through a :class:`Provider`."""

    def __init__(
        self,
        bus: JobBus,
        provider: Provider,
        *,
        concurrency: int | None = None,
        http: httpx.AsyncClient | None = None,
        downloads: DownloadClient | None = None,
        store_retry: Backoff = STORE_RETRY,
    ) -> None:
        self.bus = bus
        self.store_retry = store_retry
        self.provider = provider
        self.alias = provider.alias
        cfg = bus.config
        self.concurrency = concurrency or cfg.actors.concurrency_per_provider.get(self.alias, cfg.actors.concurrency)
        # Results go to the shared results bucket, which this role may write but not purge.
        self.blobs = bus.blob_store(purge=False)
        self._own_http = http is None
        self.http = http or upstream_client(cfg, self.concurrency)
        # A second client for URLs upstreams name: its connector checks every address it connects to.
        self._own_downloads = downloads is None
        self.downloads = downloads or download_client(cfg, self.concurrency)
        self.consumer = bus.consumer(
            bus.names.provider_consumer(self.alias),
            decoding(bus.names, self.handle, accept=self._accept),
            concurrency=self.concurrency,
            name=self.alias,
        )
        self._running: dict[str, set[anyio.CancelScope]] = {}
        # Three heartbeats per ack_wait whatever its size (a 1 s floor used to equal a 1 s ack_wait).
        self.heartbeats = Heartbeats(max(0.05, cfg.actors.ack_wait / 3))
        self.counts: Counter[str] = Counter()
        """Attempts this process finished: ``succeeded`` and one key per failure reason (``nats micro stats``)."""
        # Image checks (inputs and results) run on worker threads, a few at a time: each may
        # decode up to limits.max_pixels, and more threads than cores only add memory.
        self._checks = anyio.CapacityLimiter(os.cpu_count() or 1)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # Terminal events of any job: a running attempt of a job that ended (cancelled,
        # or finished elsewhere) is stopped at once instead of holding an upstream slot.
        done_sub = await self.bus.on_done(self._on_done)
        log.info("provider_started", provider=self.alias, concurrency=self.concurrency)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.heartbeats.run)
                await self.consumer.run(task_status=task_status)
                tg.cancel_scope.cancel()
        finally:
            await done_sub.close()
            await self.provider.aclose()
            if self._own_http:
                await self.http.aclose()
            if self._own_downloads:
                await self.downloads.aclose()

    async def stop(self) -> None:
        await self.consumer.stop()

    def _accept(self, where: ParsedSubject, event: JobEvent) -> str | None:
        if not isinstance(event, AttemptDispatched) or event.provider != self.alias:
            return "not a dispatch for this provider"
        return None

    async def handle(self, inbound: Inbound) -> None:
        d = inbound.event
        assert isinstance(d, AttemptDispatched)  # see _accept
        with bound_contextvars(attempt=d.attempt, provider=self.alias):
            await self._attempt(inbound.delivery, d)

    async def _attempt(self, msg: Delivery, d: AttemptDispatched) -> None:
        now = time.time()
        if d.not_before > now + 0.01:
            await msg.nak(d.not_before - now)
            return
        if now >= d.deadline:
            log.info("attempt_stale", reason="past its deadline; the router counts it as a timeout")
            await msg.ack()
            return
        if msg.delivered > 1 and not await self._still_open(d):
            log.info("attempt_already_finished", delivered=msg.delivered)
            await msg.ack()
            return
        block = self.bus.config.block(d.op, self.alias)
        if block is None:
            await self._finish(msg, self._failed(d, "unsupported", f"{self.alias} has no settings for {d.op}", 0.0))
            return
        started = time.monotonic()
        # The attempt may use its whole budget up to the router's deadline, minus a margin
        # so our own failure event lands before the router counts a timeout.
        budget = max(1.0, min(block.timeout, d.deadline - now - 1.0))
        log.info("attempt_started", op=d.op, inputs=len(d.inputs))
        scope = anyio.CancelScope()
        self._running.setdefault(d.job_id, set()).add(scope)
        result: AttemptSucceeded | AttemptFailed | None = None
        try:
            with scope:
                with self.heartbeats.holding(msg):
                    result = await self._produce(d, block, started, budget)
        finally:
            scopes = self._running.get(d.job_id)
            if scopes is not None:
                scopes.discard(scope)
                if not scopes:
                    del self._running[d.job_id]
        if result is None:  # the job ended while we worked on it
            log.info("attempt_abandoned", reason="job already finished")
            await msg.ack()
            return
        await self._finish(msg, result)

    async def _on_done(self, job_id: str) -> None:
        for scope in self._running.get(job_id, ()):
            scope.cancel()

    async def _produce(
        self, d: AttemptDispatched, block: ProviderSettings, started: float, budget: float
    ) -> AttemptSucceeded | AttemptFailed:
        try:
            inputs = await self._load_inputs(d)
        except ProviderFailure as exc:
            return self._failed(d, exc.reason, exc.message, started)
        ctx = AttemptContext(
            dispatch=d,
            settings=block,
            config=self.bus.config,
            inputs=inputs,
            http=self.http,
            downloads=self.downloads,
            deadline=started + budget,
        )
        try:
            with anyio.fail_after(budget):
                out = await self.provider.run(ctx)
            # Every result is checked and decoded here, whatever the provider says about it:
            # ``Output.info`` is only a hint (a provider that trusted its own renderer used to
            # store images over the pixel limit unchecked).
            info = await check_media(
                out.data,
                video=self.provider.produces_video,
                max_pixels=self.bus.config.limits.max_pixels,
                limiter=self._checks,
            )
            if out.info is not None and out.info != info:
                log.warning("provider_info_mismatch", claimed=repr(out.info), actual=repr(info))
            if REDACTOR.embedded_in(out.data):  # e.g. a gateway echoing the request into a PNG text chunk
                raise ProviderFailure("invalid_response", "result embeds a credential")
            ref = await self._store(out.data, info)
        except TimeoutError:
            return self._failed(d, "timeout", f"no result within {budget:.0f}s", started)
        except BusError:
            raise  # the bus, not the upstream: the handler fails and the work item comes back
        except Exception as exc:
            # What the provider, the transport or the result check raised, as a typed reason:
            # mapped here, once (providers/_errors.py). Anything it does not know is our bug.
            failure = failure_for(exc)
            if failure is None:
                log.exception("provider_bug")
                return self._failed(d, "upstream_error", f"internal error: {type(exc).__name__}", started)
            return self._failed(
                d, failure.reason, failure.message, started, status=failure.status, retry_after=failure.retry_after
            )
        elapsed = int((time.monotonic() - started) * 1000)
        log.info("attempt_succeeded", blob=ref.name, bytes=ref.size, mime=ref.mime, elapsed_ms=elapsed)
        self.counts["succeeded"] += 1
        return AttemptSucceeded(
            job_id=d.job_id,
            attempt=d.attempt,
            provider=self.alias,
            result=ref,
            source_url=_screened_source_url(out.source_url),
            elapsed_ms=elapsed,
        )

    async def _load_inputs(self, d: AttemptDispatched) -> list[InputImage]:
        """The input images, within ``limits``, each checked as an image; else ``bad_request``.

        The count and the declared sizes are checked before any blob is read, so a request
        that repeats one large reference hundreds of times costs nothing; a repeated
        reference counts every time (it is sent upstream every time) but is read and held
        once. A blob whose stored size differs from its reference is refused by
        ``BlobStore.get``, so what is held never exceeds ``limits.max_input_bytes``.
        """
        limits = self.bus.config.limits
        if len(d.inputs) > limits.max_inputs:
            raise ProviderFailure(
                "bad_request", f"{len(d.inputs)} input images exceed limits.max_inputs={limits.max_inputs}"
            )
        total = sum(ref.size for ref in d.inputs)
        if total > limits.max_input_bytes:
            raise ProviderFailure(
                "bad_request", f"input images of {total} bytes exceed limits.max_input_bytes={limits.max_input_bytes}"
            )
        loaded: dict[BlobRef, InputImage] = {}
        inputs: list[InputImage] = []
        for n, ref in enumerate(d.inputs, 1):
            image = loaded.get(ref)
            if image is None:
                try:
                    data = await self.blobs.get(ref)
                    info = await check_image(data, max_pixels=limits.max_pixels, limiter=self._checks)
                except (BlobError, MediaError) as exc:
                    raise failure_for(exc, label=f"input #{n}", request=True) from None
                image = loaded[ref] = InputImage(data, info.mime)
            inputs.append(image)
        return inputs

    async def _store(self, data: bytes, info: MediaInfo) -> BlobRef:
        """Store a result. A blob store that does not answer (a JetStream leader election, a
        node restarting: ``status 503``) is retried and then raised as ``BusError`` — it used to
        become an ``invalid_response`` failure, blaming the upstream and failing jobs during
        a NATS node loss. Only a result too large to store is the result's fault."""
        if len(data) > self.blobs.max_bytes:
            raise ProviderFailure(
                "invalid_response",
                f"result of {len(data)} bytes exceeds retention.max_blob_bytes={self.blobs.max_bytes}",
            )

        def again(exc: BaseException, wait: float) -> None:
            log.warning("blob_store_unavailable", error=str(exc), retry_in=wait)

        try:
            return await retrying(
                lambda: self.blobs.put(data, info), self.store_retry, retry_on=BlobError, on_retry=again
            )
        except BlobError as exc:
            raise BusError(f"cannot store the result: {exc}") from None

    def _failed(
        self,
        d: AttemptDispatched,
        reason: str,
        message: str,
        started: float,
        *,
        status: int = 0,
        retry_after: float = 0.0,
    ) -> AttemptFailed:
        elapsed = max(0, int((time.monotonic() - started) * 1000)) if started else 0
        text = redact(message)[:500]
        # Whatever an upstream said (``Retry-After: inf``, ``retry-after-ms: 1e400``, status 7000),
        # the event holds numbers every reader can decode.
        retry_after = min(max(retry_after, 0.0), MAX_RETRY_AFTER) if math.isfinite(retry_after) else MAX_RETRY_AFTER
        status = status if 0 <= status <= 999 else 0
        log.info("attempt_failed", reason=reason, message=text, status=status, elapsed_ms=elapsed)
        self.counts[reason] += 1
        return AttemptFailed(
            job_id=d.job_id,
            attempt=d.attempt,
            provider=self.alias,
            reason=reason,  # type: ignore[arg-type]
            message=text,
            status=status,
            retry_after=retry_after,
            elapsed_ms=elapsed,
        )

    async def _finish(self, msg: Delivery, event: AttemptSucceeded | AttemptFailed) -> None:
        await self.bus.publish(event)
        await msg.ack()

    async def _still_open(self, d: AttemptDispatched) -> bool:
        """On a redelivery: is this attempt still waiting for a result?"""
        state = (await self.bus.read_job(d.job_id)).folded(d.job_id)
        view = state.attempt(d.attempt)
        return not state.done and view is not None and view.open and view.provider == self.alias


def _screened_source_url(url: str) -> str:
    """``url``, or ``""`` when it must not be stored in events: it holds one of our secrets in
    some form, or userinfo credentials. The result's bytes are in the blob store anyway."""
    why = REDACTOR.url_leak(url) if url else ""
    if why:
        log.warning("source_url_dropped", reason=why)
        return ""
    return url
