"""Connection to NATS and the JetStream layout aiimg needs, created idempotently.

Layout (names from :class:`messages.Names`):

* stream ``AIIMG_JOBS`` on ``aiimg.job.>``: every job event, ``max_age`` = retention;
* durable pull consumers: ``router`` (requests, cancels, attempt results) and
  ``provider-<alias>`` (that provider's dispatch subject), created for every known
  alias so no work item is published before its consumer exists;
* object store ``aiimg_blobs`` (images, videos) and KV ``aiimg_state`` (small shared state).
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass, field
from typing import Any

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import APIError, BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from messages import Event, JobEvent, Names, decode_event, encode
from messages._codec import DecodeError

from .config import CAPABILITIES, Config, NatsConfig
from .errors import BusError

__all__ = ("MSG_ID", "Bus", "connect", "event_subject")

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
ROUTER_FILTERS = ("requested", "cancel", "attempt")

log = structlog.get_logger("aiimg.bus")


def connect_options(cfg: NatsConfig) -> dict[str, Any]:
    """nats-py ``connect`` keyword arguments for ``cfg`` (auth and TLS)."""
    opts: dict[str, Any] = {
        "servers": [s.strip() for s in cfg.url.split(",") if s.strip()],
        "name": cfg.name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "allow_reconnect": True,
    }
    if cfg.user:
        opts["user"] = cfg.user
        opts["password"] = cfg.password
    if cfg.token:
        opts["token"] = cfg.token
    if cfg.creds:
        opts["user_credentials"] = cfg.creds
    if cfg.nkey_seed:
        opts["nkeys_seed"] = cfg.nkey_seed
    if cfg.tls_ca or cfg.tls_cert:
        ctx = ssl.create_default_context(cafile=cfg.tls_ca or None)
        if cfg.tls_cert:
            ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key or None)
        opts["tls"] = ctx
    return opts


def event_subject(names: Names, event: Event) -> str:
    """The subject an event is stored on (see ``messages._subjects``)."""
    from messages import (
        AttemptDispatched,
        AttemptFailed,
        AttemptSucceeded,
        CancelRequested,
        JobRequested,
    )

    if isinstance(event, JobRequested):
        return names.subject("requested", event.job_id)
    if isinstance(event, CancelRequested):
        return names.subject("cancel", event.job_id)
    if isinstance(event, AttemptDispatched):
        return names.subject("dispatch", event.job_id, event.provider)
    if isinstance(event, (AttemptSucceeded, AttemptFailed)):
        return names.subject("attempt", event.job_id)
    return names.subject("done", event.job_id)


def msg_id(event: Event) -> str:
    """Deduplication id: one requested, one dispatch and one result per attempt, one terminal per job."""
    from messages import (
        AttemptDispatched,
        AttemptFailed,
        AttemptSucceeded,
        CancelRequested,
        JobRequested,
    )

    j = event.job_id
    if isinstance(event, JobRequested):
        return f"{j}:requested"
    if isinstance(event, CancelRequested):
        return f"{j}:cancel"
    if isinstance(event, AttemptDispatched):
        return f"{j}:{event.attempt}:dispatch"
    if isinstance(event, (AttemptSucceeded, AttemptFailed)):
        return f"{j}:{event.attempt}:result"
    return f"{j}:done"


@dataclass
class Bus:
    """A connected NATS client plus the names and handles aiimg uses."""

    nc: NATS
    js: JetStreamContext
    names: Names
    config: Config
    embedded_here: bool = False
    """True when this process started the embedded nats-server this bus talks to."""
    _kv: KeyValue | None = field(default=None, repr=False)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.nc.drain()
        with contextlib.suppress(Exception):
            await self.nc.close()

    # ---- layout -------------------------------------------------------------

    async def ensure_layout(self) -> None:
        """Create or update the stream, consumers and buckets. Safe to call from every process."""
        n = self.names
        cfg = self.config
        stream = js_api.StreamConfig(
            name=n.jobs_stream,
            subjects=[f"{n.prefix}.job.>"],
            retention=js_api.RetentionPolicy.LIMITS,
            storage=js_api.StorageType.FILE,
            max_age=cfg.retention.job_max_age,
            duplicate_window=120.0,
            num_replicas=cfg.nats.replicas,
            allow_direct=True,
            discard=js_api.DiscardPolicy.OLD,
        )
        try:
            await self.js.add_stream(stream)
        except BadRequestError:
            await self.js.update_stream(stream)
        except APIError as exc:
            if exc.err_code == 10058:  # stream name already in use with a different configuration
                await self.js.update_stream(stream)
            else:
                raise BusError(f"cannot create stream {n.jobs_stream}: {exc}") from exc

        await self._ensure_consumer(
            js_api.ConsumerConfig(
                durable_name=n.router_consumer,
                ack_policy=js_api.AckPolicy.EXPLICIT,
                deliver_policy=js_api.DeliverPolicy.ALL,
                ack_wait=10.0,
                max_deliver=-1,
                max_ack_pending=100_000,
                filter_subjects=[n.subject(k) for k in ROUTER_FILTERS],  # type: ignore[arg-type]
            )
        )
        for alias in CAPABILITIES:
            await self._ensure_consumer(
                js_api.ConsumerConfig(
                    durable_name=n.provider_consumer(alias),
                    ack_policy=js_api.AckPolicy.EXPLICIT,
                    deliver_policy=js_api.DeliverPolicy.ALL,
                    ack_wait=cfg.actors.ack_wait,
                    max_deliver=-1,
                    max_ack_pending=100_000,
                    filter_subject=n.subject("dispatch", provider=alias),
                )
            )
        with contextlib.suppress(APIError):
            await self.js.create_object_store(
                n.blob_bucket,
                config=js_api.ObjectStoreConfig(ttl=cfg.retention.blob_max_age, replicas=cfg.nats.replicas),
            )
        with contextlib.suppress(APIError):
            await self.js.create_key_value(
                config=js_api.KeyValueConfig(bucket=n.kv_bucket, history=5, replicas=cfg.nats.replicas)
            )

    async def _ensure_consumer(self, config: js_api.ConsumerConfig) -> None:
        try:
            await self.js.add_consumer(self.names.jobs_stream, config)
        except APIError as exc:
            # 10148: exists with another config. Keep the live one (it holds delivery state).
            log.warning("consumer_config_differs", consumer=config.durable_name, error=str(exc))

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(self.names.kv_bucket)
        return self._kv

    # ---- events -------------------------------------------------------------

    async def publish(self, event: Event) -> int:
        """Append ``event`` to its job's history; returns the stream sequence.

        Deduplicated by ``Nats-Msg-Id`` (see :func:`msg_id`), so a retried publish of
        the same logical event is stored once; the duplicate's ack names the original seq.
        """
        return (await self.publish_checked(event))[0]

    async def publish_checked(self, event: Event) -> tuple[int, bool]:
        """Like :meth:`publish`, also telling whether the server dropped it as a duplicate.

        A ``JobRequested`` is only accepted as the first request of its job id
        (``Nats-Expected-Last-Subject-Sequence: 0``), so reusing an old job id after the
        dedupe window is refused instead of re-running a finished job.
        """
        from messages import JobRequested

        headers = {MSG_ID: msg_id(event)}
        if isinstance(event, JobRequested):
            headers[EXPECTED_LAST_SUBJECT_SEQ] = "0"
        try:
            ack = await self.js.publish(
                event_subject(self.names, event),
                encode(event),
                headers=headers,
                stream=self.names.jobs_stream,
            )
        except APIError as exc:
            if exc.err_code == 10071 and isinstance(event, JobRequested):
                raise BusError(f"job id {event.job_id} was already used") from None
            raise BusError(f"publish refused: {exc}") from exc
        return int(ack.seq), bool(ack.duplicate)

    async def last_seq(self, job_id: str) -> int:
        """Stream sequence of the job's newest event (0 when it has none). One round trip."""
        try:
            raw = await self.js.get_msg(
                self.names.jobs_stream, subject=self.names.subject("history", job_id), direct=True
            )
        except NotFoundError:
            return 0
        return int(raw.seq or 0)

    async def history(self, job_id: str) -> list[tuple[int, JobEvent]]:
        """Every decodable event of ``job_id`` with its stream sequence, oldest first."""
        out: list[tuple[int, JobEvent]] = []
        subj = self.names.subject("history", job_id)
        seq = 1
        while True:
            try:
                raw = await self.js.get_msg(self.names.jobs_stream, seq=seq, subject=subj, next=True, direct=True)
            except NotFoundError:
                return out
            assert raw.seq is not None
            seq = raw.seq + 1
            try:
                out.append((raw.seq, decode_event(raw.data or b"")))
            except DecodeError as exc:
                log.warning("history_undecodable_event", job_id=job_id, seq=raw.seq, error=str(exc))


async def connect(config: Config, url: str | None = None) -> Bus:
    """Connect to ``url`` (or ``config.nats.url``) and return a :class:`Bus`. Does not create the layout."""
    cfg = config.nats
    opts = connect_options(cfg)
    if url:
        opts["servers"] = [url]
    if not opts["servers"]:
        raise BusError("no NATS url: set nats.url, or use the embedded stack")
    try:
        nc = await nats.connect(**opts, connect_timeout=5, error_cb=_on_error)
    except Exception as exc:  # nats-py raises several unrelated types here
        raise BusError(f"cannot connect to NATS: {type(exc).__name__}: {exc}") from None
    return Bus(nc=nc, js=nc.jetstream(timeout=10), names=Names(cfg.prefix), config=config)


async def _on_error(exc: Exception) -> None:
    log.warning("nats_error", error=f"{type(exc).__name__}: {exc}")
