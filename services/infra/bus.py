"""Connection to NATS and the JetStream layout aiimg needs, created idempotently.

Layout (names from :class:`messages.Names`):

* stream ``AIIMG_JOBS`` on the layout's job subjects (``Names.jobs_subjects``): every job event, ``max_age`` = retention;
* durable pull consumers: ``router`` (requests, cancels, attempt results) and
  ``provider-<alias>`` (that provider's dispatch subject), created for every known
  alias so no work item is published before its consumer exists;
* object store ``aiimg_blobs`` (images, videos) and KV ``aiimg_state`` (small shared state).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import anyio
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import APIError, BadRequestError, NoStreamResponseError, NotFoundError
from nats.js.kv import KeyValue

from ...messages import (
    DecodeError,
    Event,
    JobEvent,
    JobRequested,
    Names,
    decode_event,
    encode,
    event_subject,
    placed,
)
from ...messages._subjects import Kind
from ..domain.config import ConfigBase, NatsConfig
from ..domain.errors import BusError, StaleView
from ..domain.state import JobState, fold
from .blobs import BlobStore
from .embedded import Credentials
from .health import KvHealth
from .pull import Handler, PullConsumer
from .retry import Backoff, retrying

__all__ = (
    "MSG_ID",
    "PUBLISH_RETRY",
    "Bus",
    "ConsumerLoad",
    "JobLog",
    "Logged",
    "Subscription",
    "connect",
    "consumer_configs",
    "consumer_drift",
    "results_consumer_config",
    "unsubscribe",
)

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SUBJECT_SEQ_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
"""nats-server 2.11+: compare the last seq of a wildcard subject (a whole job), not one subject."""


ROUTER_FILTERS: tuple[Kind, ...] = ("requested", "cancel", "attempt")

log = structlog.get_logger("aiimg.bus")

INITIAL_CONNECT_ATTEMPTS = 2
"""Retries per server before the first connection fails (later reconnects never give up)."""

CONSUMER_MAX_ACK_PENDING = 100_000
CONSUMER_MAX_WAITING = 512
"""Pull requests a consumer holds open at once (the server's default, set explicitly so a
live value can be compared with it)."""


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


class Logged(NamedTuple):
    """One stored event of a job: its stream seq, the writer its subject names, the event."""

    seq: int
    writer: str
    """The token of the subject: the client (requests, cancels; for terminal events the client
    that requested the job) or the provider (dispatches, results)."""
    event: JobEvent


@dataclass(frozen=True, slots=True)
class JobLog:
    """A job's stored history as read from the stream."""

    entries: list[Logged]
    last_seq: int
    """Stream seq of the job's newest stored message, counting messages skipped as
    undecodable or misplaced: the value ``Nats-Expected-Last-Subject-Sequence`` compares with."""

    def folded(self, job_id: str) -> JobState:
        return fold(job_id, ((e.writer, e.event) for e in self.entries))


PUBLISH_RETRY = Backoff(0.1, cap=1.0, within=15.0)
"""How long a write to the job stream waits out a stream without a leader (a JetStream cluster
electing one after a node loss takes a few seconds): 0.1 s doubling to 1 s, for 15 s."""

_NO_STREAM = (NoStreamResponseError, NoRespondersError)


class ConsumerLoad(NamedTuple):
    """A durable consumer's backlog, as the server counts it."""

    pending: int
    """Messages not yet delivered (queued work)."""
    in_flight: int
    """Delivered and not yet acknowledged (running, or waiting on a durable timer)."""
    redelivered: int
    pulls_waiting: int
    """Pull requests waiting for work: roughly, idle actor capacity that is connected."""


class _LayoutMissing(Exception):
    """What of the layout is still missing: a signal inside :meth:`Bus.ensure_layout`, which
    raises ``BusError`` once it stops waiting."""


def consumer_configs(names: Names, config: ConfigBase) -> list[js_api.ConsumerConfig]:
    """The durable consumers of the layout, exactly as the router creates (and repairs) them."""
    router = js_api.ConsumerConfig(
        name=names.router_consumer,
        durable_name=names.router_consumer,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_wait=10.0,
        max_deliver=-1,
        max_ack_pending=CONSUMER_MAX_ACK_PENDING,
        max_waiting=CONSUMER_MAX_WAITING,
        filter_subjects=[names.subject(k) for k in ROUTER_FILTERS],
    )
    providers = [
        js_api.ConsumerConfig(
            name=names.provider_consumer(alias),
            durable_name=names.provider_consumer(alias),
            ack_policy=js_api.AckPolicy.EXPLICIT,
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_wait=config.actors.ack_wait,
            max_deliver=-1,
            max_ack_pending=CONSUMER_MAX_ACK_PENDING,
            max_waiting=CONSUMER_MAX_WAITING,
            filter_subject=names.subject("dispatch", token=alias),
        )
        for alias in config.capabilities
    ]
    return [router, *providers]


RESULTS_ACK_WAIT = 120.0
"""Seconds a client has to deliver a result (fetch it, send it to the chat) before it comes back."""


def results_consumer_config(names: Names, client: str) -> js_api.ConsumerConfig:
    """Client ``client``'s durable consumer of its own results (``<prefix>.job.*.done.<client>``).

    Created by the client itself (its NATS user may create exactly this consumer), starting
    with the results written from then on; afterwards it keeps its place across restarts.
    """
    durable = names.deliver_consumer(client)
    return js_api.ConsumerConfig(
        name=durable,
        durable_name=durable,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        deliver_policy=js_api.DeliverPolicy.NEW,
        ack_wait=RESULTS_ACK_WAIT,
        max_deliver=-1,
        max_ack_pending=CONSUMER_MAX_ACK_PENDING,
        max_waiting=CONSUMER_MAX_WAITING,
        filter_subject=names.subject("done", token=client),
    )


def _unset(key: str, value: Any) -> bool:
    return value in (None, 0, "", False, [], {}, _ZERO_TIME) or (key == "priority_policy" and value == "none")


def _filters(many: Any, one: Any) -> set[str]:
    if isinstance(many, list) and many:
        return {str(f) for f in many}
    return {str(one)} if one else set()


_IGNORED_CONSUMER_KEYS = frozenset({"name", "durable_name", "description", "metadata", "num_replicas"})
"""Live consumer settings that do not change how work is delivered (``metadata`` holds the
server's own ``_nats.*`` keys; replicas follow the stream)."""

_ZERO_TIME = "0001-01-01T00:00:00Z"


def consumer_drift(expected: js_api.ConsumerConfig, live: Mapping[str, Any]) -> list[str]:
    """How a live consumer config (the server's JSON) differs from ``expected``; ``[]`` when it does not.

    Every setting we choose must match, and every other setting must be unset — a paused
    consumer, a ``headers_only`` one, an inactivity threshold that would delete it, a
    ``max_batch`` of 1, a push ``deliver_subject``, a ``backoff`` list or a priority policy
    all change how work flows, whoever set them.
    """
    # nats-py writes unset durations as 0: an unset setting is compared as "must be unset" below.
    want = {k: v for k, v in expected.as_dict().items() if not _unset(k, v)}
    for key in ("name", "durable_name", "filter_subject", "filter_subjects"):
        want.pop(key, None)
    filters = _filters(expected.filter_subjects, expected.filter_subject)
    live_filters = _filters(live.get("filter_subjects"), live.get("filter_subject"))
    drift: list[str] = []
    if live_filters != filters:
        drift.append(f"filter {sorted(live_filters)} (want {sorted(filters)})")
    for key, value in want.items():
        if live.get(key) != value:
            drift.append(f"{key}={live.get(key)!r} (want {value!r})")
    for key, value in live.items():
        if key in want or key in _IGNORED_CONSUMER_KEYS or key in ("filter_subject", "filter_subjects"):
            continue
        if _unset(key, value):
            continue
        drift.append(f"{key}={value!r} (want unset)")
    return drift


@dataclass
class Bus:
    """A connected NATS client plus the names and handles aiimg uses."""

    nc: NATS
    js: JetStreamContext
    names: Names
    config: ConfigBase
    embedded_here: bool = False
    """True when this process started the embedded nats-server this bus talks to."""
    publish_retry: Backoff = PUBLISH_RETRY
    """How long a job-stream write waits out a stream without a leader (:data:`PUBLISH_RETRY`)."""
    _kv: KeyValue | None = field(default=None, repr=False)

    async def close(self) -> None:
        """Drain the connection (pending writes flushed, subscriptions ended), then close it.

        Closing runs on every way out, failures included, so it never raises over the caller's
        own exit: a connection that is already closed, draining or broken is logged and left.
        """
        for step, call in (("drain", self.nc.drain), ("close", self.nc.close)):
            try:
                await call()
            except Exception as exc:  # nats-py raises its own errors, OSError or TimeoutError here
                log.info("nats_close_step_failed", step=step, error=f"{type(exc).__name__}: {exc}")

    # ---- layout -------------------------------------------------------------

    async def ensure_layout(self, *, wait: float = 30.0, every: float = 1.0) -> None:
        """Create or update the stream, consumers and buckets. Safe to call from every process.

        Reads first and writes only what is missing or changed, so an actor whose NATS
        user may not manage streams (``deploy/nats/auth.conf``: only the router may)
        starts as soon as the layout exists. Creation is checked by reading the layout
        back: on a JetStream cluster a create can fail transiently (no meta leader yet, a
        peer restarting), and such a failure used to be swallowed, leaving a process
        running without its blob bucket. Looks again ``every`` second for up to ``wait`` seconds,
        then raises :class:`BusError` saying what is missing.
        """

        async def once() -> None:
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
            raise _LayoutMissing(missing)

        def again(exc: BaseException, wait: float) -> None:
            log.info("layout_not_ready", missing=str(exc), retry_in=wait)

        try:
            await retrying(once, Backoff(every, factor=1.0, within=wait), retry_on=_LayoutMissing, on_retry=again)
        except _LayoutMissing as exc:
            raise BusError(
                f"JetStream layout not ready: {exc}. Is JetStream enabled? With per-actor "
                "permissions the router creates the layout: start it first"
            ) from None

    async def _layout_missing(self) -> str:
        """What of the layout is missing or differs from this config ('' when complete)."""
        n = self.names
        cfg = self.config
        try:
            c = (await self.js.stream_info(n.jobs_stream)).config
        except NotFoundError:
            return f"stream {n.jobs_stream} missing"
        if (
            sorted(c.subjects or []) != sorted(n.jobs_subjects)
            or abs((c.max_age or 0.0) - cfg.retention.job_max_age) > 1e-3
            or (c.num_replicas or 1) != cfg.nats.replicas
            or not c.allow_direct
        ):
            return f"stream {n.jobs_stream} differs from this config (subjects, retention.job_max_age or nats.replicas)"
        for consumer in consumer_configs(n, cfg):
            assert consumer.name is not None
            try:
                await self.js.consumer_info(n.jobs_stream, consumer.name)
            except NotFoundError:
                return f"consumer {consumer.name} missing"
        for bucket_stream in (f"OBJ_{n.blob_bucket}", f"KV_{n.kv_bucket}"):
            try:
                info = await self.js.stream_info(bucket_stream)
            except NotFoundError:
                return f"bucket stream {bucket_stream} missing"
            if bucket_stream.startswith("KV_") and not info.config.allow_direct:
                # Reads must be direct gets: their subject names the key, so a client's
                # permissions can limit it to its own keys (a STREAM.MSG.GET names none).
                return f"bucket stream {bucket_stream} without direct gets"
        return ""

    async def _create_layout(self) -> None:
        n = self.names
        cfg = self.config
        stream = js_api.StreamConfig(
            name=n.jobs_stream,
            subjects=n.jobs_subjects,
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
        for consumer in consumer_configs(n, cfg):
            try:
                await self.js.add_consumer(n.jobs_stream, consumer)
            except APIError as exc:
                # Exists with another config: check_consumers() (the router, at start and
                # every minute) repairs it; creating must not fail the start.
                log.warning("consumer_config_differs", consumer=consumer.name, error=str(exc))
        await self.ensure_object_bucket(n.blob_bucket, ttl=cfg.retention.blob_max_age)
        try:
            await self.js.create_key_value(
                config=js_api.KeyValueConfig(bucket=n.kv_bucket, history=5, replicas=cfg.nats.replicas, direct=True)
            )
        except APIError as exc:
            if exc.err_code != 10058:  # 10058: exists (with another config: kept)
                raise BusError(f"cannot create bucket {n.kv_bucket}: {exc}") from exc
            kv_stream = (await self.js.stream_info(f"KV_{n.kv_bucket}")).config
            if not kv_stream.allow_direct:  # made by an earlier version
                kv_stream.allow_direct = True
                await self.js.update_stream(kv_stream)

    async def ensure_object_bucket(self, bucket: str, *, ttl: float = 0.0) -> None:
        """Create object bucket ``bucket`` unless it exists (``ttl`` 0: kept until deleted)."""
        try:
            await self.js.stream_info(f"OBJ_{bucket}")
            return
        except NotFoundError:
            pass
        try:
            await self.js.create_object_store(
                bucket,
                config=js_api.ObjectStoreConfig(ttl=ttl or None, replicas=self.config.nats.replicas),
            )
        except APIError as exc:
            if exc.err_code != 10058:  # created meanwhile by another process
                raise BusError(f"cannot create bucket {bucket}: {exc}") from exc

    async def check_consumers(self, *, repair: bool) -> dict[str, list[str]]:
        """Compare every durable consumer with :func:`consumer_configs`; repair what differs.

        Returns ``{consumer: [differences]}`` for the consumers that differed (before any
        repair). A consumer is repaired by updating it in place (its delivery state is kept);
        a setting the server cannot update (the ack or deliver policy, pull vs push) is
        repaired by deleting the consumer and creating it again from its ack floor, so no
        unacknowledged message is skipped (already acknowledged ones above the floor come
        back, and every actor treats a redelivery as a no-op). Only the router may do this.
        """
        n = self.names
        found: dict[str, list[str]] = {}
        for expected in consumer_configs(n, self.config):
            assert expected.name is not None
            live = await self._consumer_info_raw(expected.name)
            if live is None:
                drift = ["missing"]
            else:
                drift = consumer_drift(expected, live.get("config", {}))
            if not drift:
                continue
            found[expected.name] = drift
            if not repair:
                continue
            if live is None:
                await self.js.add_consumer(n.jobs_stream, expected)
                log.error("consumer_recreated", consumer=expected.name, differences=drift)
                continue
            try:
                await self.js.add_consumer(n.jobs_stream, expected)
                log.error("consumer_config_repaired", consumer=expected.name, differences=drift)
            except APIError as exc:
                floor = int((live.get("ack_floor") or {}).get("stream_seq", 0) or 0)
                await self.js.delete_consumer(n.jobs_stream, expected.name)
                fresh = js_api.ConsumerConfig(
                    **{
                        **expected.__dict__,
                        "deliver_policy": js_api.DeliverPolicy.BY_START_SEQUENCE,
                        "opt_start_seq": floor + 1,
                    }
                )
                await self.js.add_consumer(n.jobs_stream, fresh)
                log.error(
                    "consumer_recreated",
                    consumer=expected.name,
                    differences=drift,
                    from_seq=floor + 1,
                    update_refused=str(exc),
                )
        return found

    async def consumer_load(self, name: str) -> ConsumerLoad | None:
        """How busy durable consumer ``name`` is (``None`` if it does not exist)."""
        doc = await self._consumer_info_raw(name)
        if doc is None:
            return None
        return ConsumerLoad(
            pending=int(doc.get("num_pending") or 0),
            in_flight=int(doc.get("num_ack_pending") or 0),
            redelivered=int(doc.get("num_redelivered") or 0),
            pulls_waiting=int(doc.get("num_waiting") or 0),
        )

    async def _consumer_info_raw(self, name: str) -> dict[str, Any] | None:
        """The server's JSON for consumer ``name`` (nats-py's model drops fields we must check)."""
        try:
            reply = await self.nc.request(self.names.consumer_info_subject(name), b"", timeout=10.0)
        except NatsTimeoutError:
            raise BusError(f"no answer reading consumer {name}") from None
        doc = json.loads(reply.data)
        if not isinstance(doc, dict):
            raise BusError(f"unreadable consumer info for {name}")
        err = doc.get("error")
        if isinstance(err, dict):
            if err.get("err_code") == 10014:  # consumer not found
                return None
            raise BusError(f"cannot read consumer {name}: {err.get('description', err)}")
        return doc

    async def ensure_results_consumer(self, client: str) -> str:
        """Create (or keep) client ``client``'s results consumer; returns its durable name.

        The create subject names the consumer and its filter, which is what a client's NATS
        user is allowed (``deploy/permissions.py``); a refusal is a :class:`BusError` saying so.
        """
        cfg = results_consumer_config(self.names, client)
        assert cfg.name is not None
        try:
            await self.js.add_consumer(self.names.jobs_stream, cfg)
        except NatsTimeoutError:
            raise BusError(
                f"creating consumer {cfg.name} got no answer (may this NATS user create it? "
                "regenerate deploy/nats/auth.conf)"
            ) from None
        except APIError as exc:
            raise BusError(f"cannot create consumer {cfg.name}: {exc}") from None
        return cfg.name

    # ---- what actors use (the NATS side of services.actors.ports.JobBus) -----------------

    def consumer(self, durable: str, handler: Handler, *, concurrency: int, name: str = "") -> PullConsumer:
        """Run ``handler`` for every message of durable consumer ``durable``, ``concurrency`` at a time."""
        return PullConsumer(self, durable, handler, concurrency=concurrency, name=name)

    async def on_done(self, callback: Callable[[str], Awaitable[None]]) -> Subscription:
        """Call ``callback(job_id)`` for every terminal event written from now on; close the result to stop."""

        async def on_subject(subj: str) -> None:
            try:
                job_id = self.names.parse(subj).job_id
            except ValueError:
                return
            await callback(job_id)

        return await self.notices(self.names.subject("done"), on_subject)

    async def notices(self, subject: str, callback: Callable[[str], Awaitable[None]]) -> Subscription:
        """Call ``callback(subject)`` for every message on ``subject`` (a plain subscription, from
        now on, nothing replayed); close the result to stop."""

        async def on_msg(msg: Msg) -> None:
            await callback(msg.subject)

        return _Subscription(await self.nc.subscribe(subject, cb=on_msg))

    def health(self) -> KvHealth:
        """The providers' circuit breakers in this deployment's KV bucket."""
        return KvHealth(self)

    def blob_store(self, bucket: str | None = None, *, purge: bool = True) -> BlobStore:
        """Blobs on this connection (see :class:`~services.infra.blobs.BlobStore`)."""
        return BlobStore(self, bucket, purge=purge)

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(self.names.kv_bucket)
        return self._kv

    # ---- events -------------------------------------------------------------

    async def publish(self, event: Event, *, client: str = "") -> int:
        """Append ``event`` to its job's history; returns the stream sequence."""
        return (await self.publish_checked(event, client=client))[0]

    async def publish_checked(
        self, event: Event, *, client: str = "", expect_last: int | None = None, msg_id: str = ""
    ) -> tuple[int, bool]:
        """Like :meth:`publish`, also telling whether the server dropped it as a duplicate.

        Requests and cancels are written under ``client`` (default: ``NatsConfig.client()``), and
        terminal events for it (the router passes the job's client). A
        ``JobRequested`` is only accepted while its job has no event at all
        (``Nats-Expected-Last-Subject-Sequence: 0`` over ``<prefix>.job.<id>.>``): a job id
        is used once. The router also checks this itself, for clients that do not say so.

        ``expect_last`` is optimistic concurrency over the whole job: the write is accepted
        only if the job's newest event (any subject of ``<prefix>.job.<id>.>``) has that
        stream seq; otherwise :class:`StaleView` is raised and nothing is written.

        ``msg_id`` (``Nats-Msg-Id``) makes a retried publish of the same write land once; give
        the same unguessable value to each retry of one write (never a value derived from
        the job id alone: any client could publish it first and have the real write dropped).
        """
        headers: dict[str, str] = {}
        if msg_id:
            headers[MSG_ID] = msg_id
        if isinstance(event, JobRequested):
            expect_last = 0
        if expect_last is not None:
            headers[EXPECTED_LAST_SUBJECT_SEQ] = str(expect_last)
            headers[EXPECTED_LAST_SUBJECT_SEQ_SUBJECT] = self.names.subject("history", event.job_id)
        subject = event_subject(self.names, event, client or self.config.nats.client())
        data = encode(event)
        try:
            decode_event(data)
        except DecodeError as exc:
            # Never store what no reader can decode (a limit broken in code, not on the wire).
            raise BusError(f"refusing to write an invalid {event.__struct_config__.tag}: {exc}") from None

        waits: list[float] = []

        def unavailable(exc: BaseException, wait: float) -> None:
            if not waits:  # one line per write that has to wait, not one per try
                log.warning(
                    "job_stream_unavailable", subject=subject, error=type(exc).__name__, retry_in=round(wait, 3)
                )
            waits.append(wait)

        async def once() -> Any:
            return await self.js.publish(subject, data, headers=headers or None, stream=self.names.jobs_stream)

        try:
            # No responder means nothing stored it (a leader election, a node restarting): the
            # same write is safe to send again, and far cheaper than failing the handler — a
            # provider's would run its upstream call (and bill it) again after the crash delay.
            ack = await retrying(once, self.publish_retry, retry_on=_NO_STREAM, on_retry=unavailable)
        except _NO_STREAM:
            raise BusError(
                f"job stream {self.names.jobs_stream} unavailable (no responders) for writing {subject}"
            ) from None
        except APIError as exc:
            if exc.err_code == 10071 and isinstance(event, JobRequested):
                # Our own earlier write whose ack was lost (a retry through a leader election)
                # is recognised by its content: the job's first message is exactly this request.
                first = await self._first_message(event.job_id)
                if first is not None and first[1] == subject and first[2] == data:
                    return first[0], True
                raise BusError(f"job id {event.job_id} was already used") from None
            if exc.err_code == 10071 and expect_last is not None:
                raise StaleView(f"job {event.job_id} has events newer than seq {expect_last}") from None
            raise BusError(f"publish refused: {exc}") from exc
        return int(ack.seq), bool(ack.duplicate)

    async def history(self, job_id: str) -> list[tuple[int, JobEvent]]:
        """Every event of ``job_id`` that is where it belongs, with its stream sequence, oldest first."""
        return [(e.seq, e.event) for e in (await self.read_job(job_id)).entries]

    async def history_and_last(self, job_id: str) -> tuple[list[tuple[int, JobEvent]], int]:
        """:meth:`history`, plus :attr:`JobLog.last_seq`."""
        job = await self.read_job(job_id)
        return [(e.seq, e.event) for e in job.entries], job.last_seq

    async def read_job(self, job_id: str, *, after: int = 0) -> JobLog:
        """The job's stored events after stream seq ``after`` (all by default), oldest first.

        Messages that do not decode, or are not where their kind and writer say they belong
        (a forged ``job.completed.v1`` on an attempt subject, a result that claims another
        provider's attempt), are skipped with a warning: they are not part of the history.
        """
        out: list[Logged] = []
        subj = self.names.subject("history", job_id)
        seq = after + 1
        last = 0
        while True:
            try:
                raw = await self.js.get_msg(self.names.jobs_stream, seq=seq, subject=subj, next=True, direct=True)
            except NotFoundError:
                return JobLog(out, last)
            assert raw.seq is not None
            seq = raw.seq + 1
            last = raw.seq
            try:
                event = decode_event(raw.data or b"")
            except DecodeError as exc:
                log.warning("history_undecodable_event", job_id=job_id, seq=raw.seq, error=str(exc))
                continue
            try:
                where = self.names.parse(raw.subject or "")
            except ValueError:
                where = None
            if where is None or not placed(where, event):
                log.warning("history_misplaced_event", job_id=job_id, seq=raw.seq, subject=raw.subject)
                continue
            out.append(Logged(raw.seq, where.token, event))

    async def first_seq(self, job_id: str) -> int:
        """Stream seq of the first stored message of ``job_id`` (any subject), 0 if it has none."""
        first = await self._first_message(job_id)
        return first[0] if first is not None else 0

    async def _first_message(self, job_id: str) -> tuple[int, str, bytes] | None:
        try:
            raw = await self.js.get_msg(
                self.names.jobs_stream, seq=1, subject=self.names.subject("history", job_id), next=True, direct=True
            )
        except NotFoundError:
            return None
        return int(raw.seq or 0), raw.subject or "", raw.data or b""


class Subscription:
    """Something that can be closed: a live subscription."""

    async def close(self) -> None:  # pragma: no cover - protocol
        raise NotImplementedError


class _Subscription(Subscription):
    def __init__(self, sub: NatsSubscription) -> None:
        self._sub = sub

    async def close(self) -> None:
        await unsubscribe(self._sub)


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


async def connect(config: ConfigBase, url: str | None = None, *, credentials: Credentials | None = None) -> Bus:
    """Connect to ``url`` (or ``config.nats.url``) and return a :class:`Bus`. Does not create the layout.

    ``credentials`` (an embedded server's user and password) replace the configured ones.
    """
    _widen_socket_reads()
    cfg = config.nats
    opts = connect_options(cfg)
    if url:
        opts["servers"] = [url]
    if credentials is not None:
        opts.pop("token", None)
        opts["user"] = credentials.user
        opts["password"] = credentials.password
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
        with anyio.CancelScope(shield=True):
            try:
                await nc.close()
            except Exception as close_exc:  # the connect failed already; that is the error raised below
                log.debug("nats_close_after_failed_connect", error=f"{type(close_exc).__name__}: {close_exc}")
        why = seen[-1] if seen else f"{type(exc).__name__}: {exc}"
        raise BusError(f"cannot connect to NATS: {why}") from None
    nc.options["max_reconnect_attempts"] = -1
    return Bus(nc=nc, js=nc.jetstream(timeout=10), names=Names(cfg.prefix), config=config)


async def unsubscribe(sub: NatsSubscription) -> None:
    """Drop ``sub`` on the way out. A connection that is closed, draining or gone took its
    subscriptions along: nats-py's refusal then is logged at debug level, not raised over
    whatever the caller is leaving with."""
    try:
        await sub.unsubscribe()
    except NatsError as exc:
        log.debug("unsubscribe_skipped", subject=sub.subject, error=type(exc).__name__)


async def _on_error(exc: Exception) -> None:
    log.warning("nats_error", error=f"{type(exc).__name__}: {exc}")
