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
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
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
EXPECTED_LAST_SUBJECT_SEQ_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
"""nats-server 2.11+: compare the last seq of a wildcard subject (a whole job), not one subject."""


class StaleView(BusError):
    """Raised when an optimistic write finds the job has events the writer has not seen."""


ROUTER_FILTERS = ("requested", "cancel", "attempt")

log = structlog.get_logger("aiimg.bus")

INITIAL_CONNECT_ATTEMPTS = 2
"""Retries per server before the first connection fails (later reconnects never give up)."""


def connect_options(cfg: NatsConfig) -> dict[str, Any]:
    """nats-py ``connect`` keyword arguments for ``cfg`` (auth and TLS)."""
    opts: dict[str, Any] = {
        "servers": [s.strip() for s in cfg.url.split(",") if s.strip()],
        "name": cfg.name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "allow_reconnect": True,
        "inbox_prefix": cfg.inbox_prefix or "_INBOX",
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

    async def ensure_layout(self, *, wait: float = 30.0) -> None:
        """Create or update the stream, consumers and buckets. Safe to call from every process.

        Reads first and writes only what is missing or changed, so an actor whose NATS
        user may not manage streams (``deploy/nats/auth.conf``: only the router may)
        starts as soon as the layout exists. Creation is checked by reading the layout
        back: on a JetStream cluster a create can fail transiently (no meta leader yet, a
        peer restarting), and such a failure used to be swallowed, leaving a process
        running without its blob bucket. Retries for up to ``wait`` seconds, then raises
        :class:`BusError` saying what is missing.
        """
        deadline = time.monotonic() + wait
        while True:
            missing = await self._layout_missing()
            if not missing:
                return
            try:
                await self._create_layout()
            except NatsTimeoutError:
                missing = f"{missing}, and creating it got no answer (may this NATS user manage streams?)"
            except BusError as exc:
                missing = f"{missing}: {exc}"
            else:
                if not await self._layout_missing():
                    return
            if time.monotonic() >= deadline:
                raise BusError(
                    f"JetStream layout not ready: {missing}. Is JetStream enabled? With per-actor "
                    "permissions the router creates the layout: start it first"
                )
            log.info("layout_not_ready", missing=missing)
            await anyio.sleep(1.0)

    async def _layout_missing(self) -> str:
        """What of the layout is missing or differs from this config ('' when complete)."""
        n = self.names
        cfg = self.config
        try:
            c = (await self.js.stream_info(n.jobs_stream)).config
        except NotFoundError:
            return f"stream {n.jobs_stream} missing"
        if (
            list(c.subjects or []) != [f"{n.prefix}.job.>"]
            or abs((c.max_age or 0.0) - cfg.retention.job_max_age) > 1e-3
            or (c.num_replicas or 1) != cfg.nats.replicas
            or not c.allow_direct
        ):
            return f"stream {n.jobs_stream} differs from this config (subjects, retention.job_max_age or nats.replicas)"
        for durable in (n.router_consumer, *(n.provider_consumer(a) for a in CAPABILITIES)):
            try:
                await self.js.consumer_info(n.jobs_stream, durable)
            except NotFoundError:
                return f"consumer {durable} missing"
        for bucket_stream in (f"OBJ_{n.blob_bucket}", f"KV_{n.kv_bucket}"):
            try:
                await self.js.stream_info(bucket_stream)
            except NotFoundError:
                return f"bucket stream {bucket_stream} missing"
        return ""

    async def _create_layout(self) -> None:
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

    async def publish_checked(self, event: Event, *, expect_last: int | None = None) -> tuple[int, bool]:
        """Like :meth:`publish`, also telling whether the server dropped it as a duplicate.

        A ``JobRequested`` is only accepted as the first request of its job id
        (``Nats-Expected-Last-Subject-Sequence: 0``), so reusing an old job id after the
        dedupe window is refused instead of re-running a finished job.

        ``expect_last`` is optimistic concurrency over the whole job: the write is accepted
        only if the job's newest event (any subject of ``<prefix>.job.<id>.>``) has that
        stream seq; otherwise :class:`StaleView` is raised and nothing is written.
        """
        from messages import JobRequested

        headers = {MSG_ID: msg_id(event)}
        if isinstance(event, JobRequested):
            headers[EXPECTED_LAST_SUBJECT_SEQ] = "0"
        elif expect_last is not None:
            headers[EXPECTED_LAST_SUBJECT_SEQ] = str(expect_last)
            headers[EXPECTED_LAST_SUBJECT_SEQ_SUBJECT] = self.names.subject("history", event.job_id)
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
            if exc.err_code == 10071 and expect_last is not None:
                raise StaleView(f"job {event.job_id} has events newer than seq {expect_last}") from None
            raise BusError(f"publish refused: {exc}") from exc
        return int(ack.seq), bool(ack.duplicate)

    async def history(self, job_id: str) -> list[tuple[int, JobEvent]]:
        """Every decodable event of ``job_id`` with its stream sequence, oldest first."""
        return (await self.history_and_last(job_id))[0]

    async def history_and_last(self, job_id: str) -> tuple[list[tuple[int, JobEvent]], int]:
        """:meth:`history`, plus the stream seq of the job's newest stored message (0 if none),
        counting messages that were skipped as undecodable or misplaced — the value the
        server compares ``Nats-Expected-Last-Subject-Sequence`` against."""
        out: list[tuple[int, JobEvent]] = []
        subj = self.names.subject("history", job_id)
        seq = 1
        last = 0
        while True:
            try:
                raw = await self.js.get_msg(self.names.jobs_stream, seq=seq, subject=subj, next=True, direct=True)
            except NotFoundError:
                return out, last
            assert raw.seq is not None
            seq = raw.seq + 1
            last = raw.seq
            try:
                event = decode_event(raw.data or b"")
            except DecodeError as exc:
                log.warning("history_undecodable_event", job_id=job_id, seq=raw.seq, error=str(exc))
                continue
            if raw.subject and event_subject(self.names, event) != raw.subject:
                # Stored where it does not belong (a forged terminal event on the attempt
                # subject, say): not part of the job's history.
                log.warning("history_misplaced_event", job_id=job_id, seq=raw.seq, subject=raw.subject)
                continue
            out.append((raw.seq, event))


_READ_SIZE = 256 * 1024


def _widen_socket_reads() -> None:
    """Read the socket 256 KiB at a time instead of nats-py's 32 KiB.

    nats-py has no connect option for it (``nats.aio.client.DEFAULT_BUFFER_SIZE`` is read
    at each socket read); blobs arrive as 256 KiB chunks, so 32 KiB reads cost eight parser
    passes per chunk. Measured: 40 MB blob get ~20 % faster (docs/benchmarks.md). Only ever
    raises the value, so it cannot hurt another nats-py user in the same process.
    """
    import nats.aio.client as nats_client

    if getattr(nats_client, "DEFAULT_BUFFER_SIZE", _READ_SIZE) < _READ_SIZE:
        nats_client.DEFAULT_BUFFER_SIZE = _READ_SIZE


async def connect(config: Config, url: str | None = None) -> Bus:
    """Connect to ``url`` (or ``config.nats.url``) and return a :class:`Bus`. Does not create the layout."""
    _widen_socket_reads()
    cfg = config.nats
    opts = connect_options(cfg)
    if url:
        opts["servers"] = [url]
    if not opts["servers"]:
        raise BusError("no NATS url: set nats.url, or use the embedded stack")
    seen: list[str] = []

    async def on_error(exc: Exception) -> None:
        seen.append(f"{type(exc).__name__}: {exc}")
        await _on_error(exc)

    # nats-py applies max_reconnect_attempts=-1 to the first connection too, so a wrong
    # password or an unreachable server used to retry forever without a word to the caller.
    # Try each server a few times first; once connected, reconnect forever.
    # (A failed TLS handshake can also leave nats-py's first connect waiting: bound it whole.)
    opts["max_reconnect_attempts"] = INITIAL_CONNECT_ATTEMPTS
    nc = NATS()
    try:
        with anyio.fail_after(10.0 + 5.0 * len(opts["servers"])):
            await nc.connect(**opts, connect_timeout=5, error_cb=on_error)
    except Exception as exc:  # nats-py raises several unrelated types here
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await nc.close()
        why = seen[-1] if seen else f"{type(exc).__name__}: {exc}"
        raise BusError(f"cannot connect to NATS: {why}") from None
    nc.options["max_reconnect_attempts"] = -1
    return Bus(nc=nc, js=nc.jetstream(timeout=10), names=Names(cfg.prefix), config=config)


async def _on_error(exc: Exception) -> None:
    log.warning("nats_error", error=f"{type(exc).__name__}: {exc}")
