"""The configuration model's provider-independent part, and its lookups.

:class:`ConfigBase` is the old plugin's v3 key tree (``draw.*``, ``edit.*``, ``selfie.*``,
``video.*``) plus ``nats.*``, ``retention.*``, ``policy.*``, ``actors.*``, ``network.*``,
``limits.*``, ``log.*``, with the lookups every layer uses (:meth:`ConfigBase.block`,
:meth:`ConfigBase.can_serve`, …) and the class-level table of what each provider can do
(:attr:`ConfigBase.capabilities`, empty here). The loadable ``Config`` — one typed block per
provider under ``draw.<alias>`` / ``edit.<alias>``, the video provider's ``video`` block and
the capabilities filled in — is a subclass built from the provider catalog
(``services.providers.catalog``); it is loaded by ``services.config``. Code below the
providers layer takes a :class:`ConfigBase` and reads ``config.capabilities``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, ClassVar, Literal, TypeAlias

import msgspec

from ...messages import Operation, Reason
from .settings import Block, ProviderSettings, VideoSection

__all__ = (
    "ActorsConfig",
    "Capabilities",
    "ConfigBase",
    "DrawSection",
    "EditFallbackPolicy",
    "EditSection",
    "LimitsConfig",
    "LogConfig",
    "NatsConfig",
    "NetworkConfig",
    "PolicyConfig",
    "RetentionConfig",
    "Section",
    "SelfieConfig",
    "ShortNames",
)

Capabilities: TypeAlias = Mapping[str, frozenset[Operation]]
"""Provider alias → the operations it can serve at all (config may narrow it further)."""

ShortNames: TypeAlias = Mapping[str, Mapping[str, str]]
"""``"draw"`` / ``"edit"`` → short name users type (``/gedit``, ``backend="gemini"``) → provider alias."""


class Section(Block, kw_only=True):
    """``draw`` / ``edit``: the primary provider and its fallbacks (the provider blocks are added
    per provider by the catalog)."""

    provider: str = "local"
    fallback_1: str = ""
    fallback_2: str = ""
    fallback_3: str = ""
    fallback_providers: list[str] = msgspec.field(default_factory=list)
    """Legacy list form, read after ``fallback_1..3``."""

    def fallbacks(self) -> list[str]:
        return [self.fallback_1, self.fallback_2, self.fallback_3, *self.fallback_providers]


class DrawSection(Section, kw_only=True):
    """``draw.*`` without its provider blocks."""


class EditFallbackPolicy(Block, kw_only=True):
    enabled: bool = True
    max_retries: int = 2
    """Retries of an edit or selfie on the same provider (in place of the block's ``max_retries``)."""
    retry_delay: float = 2.0
    """Seconds before an edit's first retry on the same provider, doubling after each (in place of
    ``policy.backoff``), capped at ``policy.max_backoff``."""


class EditSection(Section, kw_only=True):
    """``edit.*`` without its provider blocks."""

    fallback: EditFallbackPolicy = msgspec.field(default_factory=EditFallbackPolicy)
    presets: list[str] = msgspec.field(default_factory=list)


class SelfieConfig(Block, kw_only=True):
    enabled: bool = True
    reference_images: list[str] = msgspec.field(default_factory=list)
    prefer_provider: str = "auto"
    gitee_task_types: list[str] = msgspec.field(default_factory=lambda: ["id", "background", "style"])
    prompt_prefix: str = ""
    max_references: int = 8


class NatsConfig(Block, kw_only=True):
    url: str = ""
    """Empty: start an embedded nats-server in ``data_dir``. Otherwise a comma-separated server list."""
    user: str = ""
    password: str = ""
    token: str = ""
    creds: str = ""
    """Path to a ``.creds`` file (JWT + nkey seed)."""
    nkey_seed: str = ""
    """Path to an nkey seed file."""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    prefix: str = "aiimg"
    inbox_prefix: str = "_INBOX"
    """Prefix of this client's reply subjects. With per-actor permissions (``deploy/nats/auth.conf``)
    each user may subscribe only below its own, ``_INBOX_<user>``, so no actor reads another's replies."""
    replicas: int = 1
    """Replicas of the stream and buckets (3 on a JetStream cluster)."""
    client_id: Annotated[str, msgspec.Meta(pattern=r"^([A-Za-z0-9_-]{1,32})?$")] = ""
    """The name this process submits jobs under: a subject token (``<prefix>.job.<id>.requested.<client_id>``)
    that the router counts admission limits by. With the shipped permissions a client's NATS user may
    publish only under its own name. Empty: the NATS user's name without ``aiimg-`` (``bridge`` for
    ``aiimg-bridge``), else ``local``."""

    def client(self) -> str:
        """The effective client id (see :attr:`client_id`)."""
        if self.client_id:
            return self.client_id
        user = self.user.strip()
        if user.startswith("aiimg-") and re.fullmatch(r"[A-Za-z0-9_-]{1,32}", user[6:]):
            return user[6:]
        return "local"

    name: str = "aiimg"


class RetentionConfig(Block, kw_only=True):
    job_max_age: float = 7 * 86400.0
    """Seconds a job's events are kept."""
    blob_max_age: float = 7 * 86400.0
    """Seconds images and videos are kept in the blob bucket."""
    max_blob_bytes: int = 256 * 1024 * 1024
    """Largest blob accepted (video included)."""


class PolicyConfig(Block, kw_only=True):
    """Which failure reasons are retried on the same provider, and how long to wait.

    A reason not in ``retry_reasons`` escalates to the next provider at once. A retried
    reason is retried up to the provider block's ``max_retries`` (for edits,
    ``edit.fallback.max_retries``) with exponential backoff from ``backoff`` seconds (for
    edits, ``edit.fallback.retry_delay``);
    an upstream retry hint (``Retry-After``) replaces the backoff when it is longer,
    and a hint beyond ``max_retry_after`` escalates at once instead of waiting.
    """

    retry_reasons: list[Reason] = msgspec.field(default_factory=lambda: ["rate_limited", "network", "upstream_error"])
    backoff: float = 2.0
    max_backoff: float = 30.0
    max_retry_after: float = 60.0
    timeout_grace: float = 15.0
    """Seconds added to a provider's ``timeout`` before the router counts an attempt as timed out."""
    breaker_reasons: list[Reason] = msgspec.field(
        default_factory=lambda: ["auth", "quota_exhausted", "unsupported", "rate_limited"]
    )
    """Failure reasons that count towards a provider's circuit breaker (shared by every router)."""
    breaker_threshold: Annotated[int, msgspec.Meta(ge=1)] = 3
    """Consecutive counted failures that open a breaker (one with an upstream retry hint opens it at once)."""
    breaker_cooldown: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    """Seconds a breaker stays open without an upstream hint; doubles with each re-open."""
    breaker_max_cooldown: Annotated[float, msgspec.Meta(gt=0)] = 900.0
    """The longest a breaker stays open (and the longest upstream hint believed)."""


class ActorsConfig(Block, kw_only=True):
    concurrency: int = 64
    """Jobs one provider actor runs at once."""
    router_concurrency: int = 256
    ack_wait: float = 30.0
    """Seconds a provider may hold a work item without a heartbeat before it is redelivered."""
    concurrency_per_provider: dict[str, int] = msgspec.field(default_factory=dict)


class NetworkConfig(Block, kw_only=True):
    """Downloads of URLs named by upstreams or chat messages (not the configured API URLs)."""

    allow_private_downloads: bool = False
    """Allow downloads from loopback/private/link-local addresses (tests and LAN gateways)."""
    download_max_bytes: int = 50 * 1024 * 1024
    download_timeout: float = 60.0
    max_redirects: int = 3
    proxy: str = ""
    """HTTP(S) proxy for upstream calls, e.g. ``http://127.0.0.1:7890`` (empty: none)."""


class LimitsConfig(Block, kw_only=True):
    """What one request may ask of the service. Over a limit: the job ends ``rejected`` /
    ``bad_request`` at once, with a message naming the limit, before any upstream is called."""

    max_inputs: int = 16
    """Input images per job (references and the message's images together)."""
    max_input_bytes: int = 64 * 1024 * 1024
    """Total bytes of a job's input images."""
    max_pixels: int = 8192 * 8192
    """Largest image decoded anywhere (inputs, the local renderer, results): 64 MP."""
    max_jobs_per_client: int = 256
    """Jobs one client (one NATS identity, ``nats.client_id``) may have running at once; 0: no limit."""
    max_jobs_per_user: int = 8
    """Jobs one end user (``origin.user`` of one client) may have running at once; 0: no limit."""


class LogConfig(Block, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class ConfigBase(Block, kw_only=True):
    """Every key that does not belong to one provider, and the lookups.

    ``draw``, ``edit`` and ``video`` are redefined by the catalog-built ``Config`` with the
    provider blocks added (a field keeps its place when a subclass redefines it).
    """

    capabilities: ClassVar[Capabilities] = MappingProxyType({})
    """Alias → the operations it can serve, in the providers' menu order (set by the catalog)."""
    short_names: ClassVar[ShortNames] = MappingProxyType({"draw": {}, "edit": {}})
    """Short names per table: ``draw`` for drawing, ``edit`` for every other operation (set by the catalog)."""

    draw: DrawSection = msgspec.field(default_factory=DrawSection)
    edit: EditSection = msgspec.field(default_factory=EditSection)
    selfie: SelfieConfig = msgspec.field(default_factory=SelfieConfig)
    video: VideoSection = msgspec.field(default_factory=VideoSection)
    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    policy: PolicyConfig = msgspec.field(default_factory=PolicyConfig)
    actors: ActorsConfig = msgspec.field(default_factory=ActorsConfig)
    network: NetworkConfig = msgspec.field(default_factory=NetworkConfig)
    limits: LimitsConfig = msgspec.field(default_factory=LimitsConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    data_dir: str = ""
    """Where the embedded nats-server keeps JetStream data; default ``$XDG_DATA_HOME/aiimg``."""
    max_cached_images: int = 50
    debounce_interval: float = 10.0
    max_user_concurrency: int = 2

    # ---- lookups -------------------------------------------------------------

    def data_path(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(base) / "aiimg"

    def block(self, op: Operation, alias: str) -> ProviderSettings | None:
        """The settings block a provider uses for ``op`` (selfie uses the edit blocks)."""
        if op == "video" or "video" in self.capabilities.get(alias, ()):
            return self.video if alias == self.video.provider else None
        section: Block = self.draw if op == "draw" else self.edit
        value = getattr(section, alias, None)
        return value if isinstance(value, ProviderSettings) else None

    def canonical(self, op: Operation, name: str) -> str:
        """Resolve a user-facing alias (``gemini``) to a provider alias (``gemini_native``)."""
        name = name.strip().lower()
        table = self.short_names.get("draw" if op == "draw" else "edit", {})
        return table.get(name, name)

    def can_serve(self, op: Operation, alias: str) -> bool:
        """Whether ``alias`` exists, can do ``op``, is configured and (for edits) allows edits."""
        if op not in self.capabilities.get(alias, frozenset()):
            return False
        block = self.block(op, alias)
        if block is None or not block.configured():
            return False
        if op in ("edit", "selfie") and not block.supports_edit:
            return False
        return True

    def selected_providers(self) -> dict[str, list[tuple[str, Operation]]]:
        """Alias → where the settings choose it (``draw.provider``, ``edit.fallback_1``, …) and for which
        operation: the primaries and fallbacks that ``plan_chain`` would try, in that order."""
        picks: list[tuple[str, Operation, str]] = []
        sections: tuple[tuple[Operation, Section], ...] = (("draw", self.draw), ("edit", self.edit))
        for op, section in sections:
            picks.append((f"{op}.provider", op, section.provider))
            if op == "draw" or self.edit.fallback.enabled:
                for n, name in enumerate(section.fallbacks()):
                    where = f"{op}.fallback_{n + 1}" if n < 3 else f"{op}.fallback_providers"
                    picks.append((where, op, name))
        prefer = self.selfie.prefer_provider.strip()
        if self.selfie.enabled and prefer and prefer.lower() != "auto":
            picks.append(("selfie.prefer_provider", "selfie", prefer))
        if self.video.enabled:
            picks.append(("video.provider", "video", self.video.provider))
        out: dict[str, list[tuple[str, Operation]]] = {}
        for where, op, name in picks:
            alias = self.canonical(op, name) if name.strip() else ""
            if alias:
                out.setdefault(alias, []).append((where, op))
        return out

    def missing_credentials(self) -> dict[str, tuple[list[str], list[str]]]:
        """Alias → (where it is selected, its empty credential keys) for each selected provider
        whose block for that operation has no API key / cookie: ``plan_chain`` skips it as not
        configured, so its jobs go to the next provider or fail."""
        out: dict[str, tuple[list[str], list[str]]] = {}
        for alias, uses in self.selected_providers().items():
            wheres: list[str] = []
            keys: list[str] = []
            for where, op in uses:
                block = self.block(op, alias)
                if block is None or op not in self.capabilities.get(alias, ()):
                    continue  # unknown, or cannot do op: plan_chain says so
                missing = block.missing_credentials()
                if not missing:
                    continue
                wheres.append(where)
                prefix = "video" if op == "video" else f"{'draw' if op == 'draw' else 'edit'}.{alias}"
                keys += [f"{prefix}.{k}" for k in missing if f"{prefix}.{k}" not in keys]
            if keys:
                out[alias] = (wheres, keys)
        return out

    def enabled_providers(self) -> list[str]:
        """Every alias that some operation can use with this config (what ``serve`` starts)."""
        ops: tuple[Operation, ...] = ("draw", "edit", "video")
        return sorted({a for a in self.capabilities for op in ops if self.can_serve(op, a)})

    def presets(self) -> dict[str, str]:
        """``edit.presets`` parsed from ``name:prompt`` lines (first ``:`` splits; full-width ``：`` too)."""
        return _parse_presets(self.edit.presets)

    def video_presets(self) -> dict[str, str]:
        return _parse_presets(self.video.presets)


def _parse_presets(lines: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        name, sep, prompt = line.replace("：", ":").partition(":")
        if sep and name.strip() and prompt.strip():
            out[name.strip()] = prompt.strip()
    return out
