"""The one place that builds and parses subject, stream, bucket and key names.

Layout (prefix ``aiimg`` by default)::

    aiimg.job.<job_id>.requested.<client>     JobRequested            (client <client>)
    aiimg.job.<job_id>.cancel.<client>        CancelRequested         (client <client>)
    aiimg.job.<job_id>.dispatch.<provider>    AttemptDispatched       (router; provider work item)
    aiimg.job.<job_id>.attempt.<provider>     AttemptSucceeded/Failed (provider <provider>, or router on timeout)
    aiimg.job.<job_id>.done.<client>          JobCompleted/Failed/Cancelled/Rejected (router, for client <client>)

All of them live in one stream (``AIIMG_JOBS``), so ``aiimg.job.<job_id>.>`` is a
job's complete, ordered history, ``aiimg.job.*.dispatch.<provider>`` is the
provider's work queue (a durable consumer filtered on that subject), and
``aiimg.job.*.done.<client>`` is every result of one client (its durable consumer
``deliver-<client>`` delivers them to the last hop, e.g. the AstrBot chat).

The last token of a ``requested``/``cancel``/``attempt`` subject names the writer. NATS
permissions decide who may publish where (``deploy/permissions.py``), so that token is
an identity the router can trust: a client may only submit under its own name, and a
provider may only answer attempts as itself. The last token of ``done`` is the client
that requested the job (the router copies it from the ``requested`` subject).
"""

from __future__ import annotations

import base64
import re
from typing import Literal, NamedTuple, TypeAlias

__all__ = (
    "DEFAULT_PREFIX",
    "Kind",
    "Names",
    "ParsedSubject",
    "subject",
)

DEFAULT_PREFIX = "aiimg"
"""Subject prefix; change it to run several independent deployments on one NATS."""

Kind: TypeAlias = Literal["requested", "cancel", "dispatch", "attempt", "done", "history"]

WRITER_KINDS: frozenset[str] = frozenset({"requested", "cancel", "dispatch", "attempt"})
"""Kinds whose subject ends in a writer token: the client (requested, cancel) or the provider."""

TOKEN_KINDS: frozenset[str] = WRITER_KINDS | {"done"}
"""Kinds whose subject ends in a token: the writers', and ``done`` (the job's client)."""

CLIENT_KINDS: frozenset[str] = frozenset({"requested", "cancel", "done"})
"""Kinds whose token is a client id."""

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_WILD = "*"


def _token(value: str, what: str) -> str:
    if value == _WILD or _TOKEN.match(value):
        return value
    raise ValueError(f"invalid {what} for a subject token: {value!r}")


def subject(kind: Kind, job_id: str = _WILD, token: str = _WILD, *, prefix: str = DEFAULT_PREFIX) -> str:
    """Build a job subject. ``job_id`` / ``token`` default to ``*`` for consumer filters.

    ``token`` is the client (``requested``, ``cancel``, and ``done``: the client that
    requested the job) or the provider (``dispatch``, ``attempt``); ``history`` has none.
    ``kind="history"`` gives ``<prefix>.job.<job_id>.>``, every event of one job (or all jobs).
    """
    job = _token(job_id, "job id")
    base = f"{prefix}.job.{job}"
    if kind in TOKEN_KINDS:
        what = "client id" if kind in CLIENT_KINDS else "provider alias"
        return f"{base}.{kind}.{_token(token, what)}"
    if kind == "history":
        return f"{base}.>"
    raise ValueError(f"unknown subject kind {kind!r}")


class ParsedSubject(NamedTuple):
    """A job subject taken apart: ``<prefix>.job.<job_id>.<kind>[.<token>]``."""

    job_id: str
    kind: str
    token: str
    """The client or provider the subject names (for ``done``: the client that requested the job)."""


class Names:
    """Stream, bucket, consumer and key names for one deployment prefix."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not re.match(r"^[a-z][a-z0-9_-]{0,31}$", prefix):
            raise ValueError(f"invalid subject prefix: {prefix!r}")
        self.prefix = prefix

    @property
    def _up(self) -> str:
        return self.prefix.upper().replace("-", "_")

    @property
    def _low(self) -> str:
        return self.prefix.replace("-", "_")

    # ---- the job stream ------------------------------------------------------------

    @property
    def jobs_stream(self) -> str:
        return f"{self._up}_JOBS"

    @property
    def jobs_subjects(self) -> list[str]:
        """The stream's subjects: exactly the layout's, so a publish on any other subject under
        ``<prefix>.job.`` (a job id with a dot, an unknown kind) is refused at once (no stream
        answers it) instead of being stored where no actor looks."""
        return [self.subject(kind) for kind in ("requested", "cancel", "dispatch", "attempt", "done")]

    @property
    def router_consumer(self) -> str:
        return "router"

    def provider_consumer(self, provider: str) -> str:
        return f"provider-{_token(provider, 'provider alias')}"

    def deliver_consumer(self, client: str) -> str:
        """The durable consumer that delivers client ``client``'s results (``<prefix>.job.*.done.<client>``)."""
        return f"deliver-{_token(client, 'client id')}"

    def consumer_create_subject(self, durable: str, filter_subject: str) -> str:
        """Where creating (or updating) durable ``durable`` with one filter goes: naming both,
        so a permission can allow exactly that consumer with exactly that filter."""
        return f"$JS.API.CONSUMER.CREATE.{self.jobs_stream}.{durable}.{filter_subject}"

    def subject(self, kind: Kind, job_id: str = _WILD, token: str = _WILD) -> str:
        return subject(kind, job_id, token, prefix=self.prefix)

    def parse(self, subj: str) -> ParsedSubject:
        """Take a job subject apart; ``ValueError`` if it is not one of the layout's subjects."""
        parts = subj.split(".")
        if len(parts) < 4 or parts[0] != self.prefix or parts[1] != "job":
            raise ValueError(f"not a job subject: {subj!r}")
        job_id, kind, rest = parts[2], parts[3], parts[4:]
        if not _TOKEN.match(job_id):
            raise ValueError(f"invalid job id in subject: {subj!r}")
        if kind == "done" and not rest:
            # A terminal event stored before terminal events named their client (aiimg 0.1.0
            # before ``done.<client>``): it still ends its job for every reader, so a router
            # upgraded over a stream that holds one never ends that job a second time.
            # Nothing writes this subject any more (the stream no longer takes it).
            return ParsedSubject(job_id, kind, "")
        if kind in TOKEN_KINDS:
            if len(rest) != 1 or not _TOKEN.match(rest[0]):
                raise ValueError(f"{kind} subject without its token: {subj!r}")
            return ParsedSubject(job_id, kind, rest[0])
        raise ValueError(f"not a job subject: {subj!r}")

    # ---- NATS micro services (``nats micro ls``) --------------------------------------------

    def service_name(self, actor: str) -> str:
        """The micro service name of an actor: ``aiimg-router``, ``aiimg-grok`` (prefix-dashed)."""
        return f"{self.prefix}-{_token(actor, 'actor name')}"

    def service_subject(self, actor: str, endpoint: str = "status") -> str:
        """Where an actor's micro endpoint listens: ``<prefix>.svc.<actor>.<endpoint>``."""
        return f"{self.prefix}.svc.{_token(actor, 'actor name')}.{_token(endpoint, 'endpoint')}"

    # ---- JetStream API subjects of the job stream ---------------------------------------

    def consumer_next_subject(self, durable: str) -> str:
        """Where a pull request for durable consumer ``durable`` goes."""
        return f"$JS.API.CONSUMER.MSG.NEXT.{self.jobs_stream}.{durable}"

    def consumer_info_subject(self, name: str) -> str:
        return f"$JS.API.CONSUMER.INFO.{self.jobs_stream}.{name}"

    def ack_subjects(self, durable: str) -> str:
        """The acks (and naks, terms, progress) of durable consumer ``durable``'s messages."""
        return f"$JS.ACK.{self.jobs_stream}.{durable}.>"

    @staticmethod
    def direct_get_subject(stream: str, subject: str = "") -> str:
        """A direct get on ``stream``: by request body, or the last message on ``subject``."""
        return f"$JS.API.DIRECT.GET.{stream}" + (f".{subject}" if subject else "")

    def job_id_of(self, subj: str) -> str:
        """The job id token of a job subject (``<prefix>.job.<id>.…``)."""
        return self.parse(subj).job_id

    # ---- buckets -----------------------------------------------------------------------

    @property
    def blob_bucket(self) -> str:
        """Results (images, videos): written by providers, read by everyone."""
        return f"{self._low}_blobs"

    def input_bucket(self, client: str) -> str:
        """Input images of one client's jobs: written only by that client."""
        return f"{self._low}_in_{_token(client, 'client id')}"

    def refs_bucket(self, client: str) -> str:
        """Selfie reference portraits of one client's bots (no TTL): written only by that client."""
        return f"{self._low}_refs_{_token(client, 'client id')}"

    @property
    def legacy_refs_bucket(self) -> str:
        """Where references lived before they were kept per client (read once, to migrate)."""
        return f"{self._low}_selfie"

    @property
    def kv_bucket(self) -> str:
        return f"{self._low}_state"

    def selfie_key(self, client: str, bot: str) -> str:
        """KV key of a bot's reference index, in its client's namespace ``selfie.<client>.<bot>``."""
        return f"selfie.{_token(client, 'client id')}.{_safe_key_token(bot)}"

    def health_key(self, provider: str = _WILD, op: str = _WILD) -> str:
        """KV key of the circuit breaker of ``provider`` for ``op`` (``health.<provider>.<op>``;
        ``*`` for watches)."""
        return f"health.{_token(provider, 'provider alias')}.{_token(op, 'operation')}"

    def legacy_selfie_key(self, bot: str) -> str:
        return f"selfie.refs.{_safe_key_token(bot)}"

    @staticmethod
    def object_stream(bucket: str) -> str:
        """The stream behind object store ``bucket`` (standard layout: ``OBJ_<bucket>``)."""
        return f"OBJ_{bucket}"

    @staticmethod
    def object_meta_subject(bucket: str, name: str) -> str:
        """The standard object-store metadata subject of object ``name``."""
        return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"

    @staticmethod
    def object_chunk_subject(bucket: str, nuid: str) -> str:
        return f"$O.{bucket}.C.{nuid}"


def _safe_key_token(value: str) -> str:
    """Any text as one KV key token (platform bot ids may contain anything)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", value.strip() or "default")[:64]
