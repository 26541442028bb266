"""The one typed configuration model, in the old plugin's v3 key tree.

Loads from TOML (``--config``, ``AIIMG_CONFIG``, ``./aiimg.toml``) or from a plain dict
(the AstrBot plugin's settings). Any string value written ``env:NAME`` is read from the
environment, so secrets need not live in files. An unknown key or a wrong type fails
at start with a :class:`~services.errors.ConfigError` that names the key.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote

import msgspec

from ...messages import Operation, Reason
from .errors import ConfigError
from .settings import (
    ArkSettings,
    Block,
    GeminiNativeSettings,
    GeminiOpenAISettings,
    GiteeAsyncSettings,
    GiteeSettings,
    GrokSettings,
    JimengSettings,
    LocalSettings,
    OpenAICompatSettings,
    ProviderSettings,
    VideoSettings,
)

__all__ = (
    "CAPABILITIES",
    "Config",
    "config_from_dict",
    "load_config",
    "secret_values",
)

CAPABILITIES: dict[str, frozenset[Operation]] = {
    "local": frozenset({"draw", "edit", "selfie"}),
    "grok": frozenset({"draw", "edit", "selfie"}),
    "gemini_native": frozenset({"draw", "edit", "selfie"}),
    "gemini_openai": frozenset({"draw", "edit", "selfie"}),
    "openai_compat": frozenset({"draw", "edit", "selfie"}),
    "ark": frozenset({"draw", "edit", "selfie"}),
    "jimeng": frozenset({"draw", "edit", "selfie"}),
    "gitee": frozenset({"draw"}),
    "gitee_async": frozenset({"edit", "selfie"}),
    "grok_video": frozenset({"video"}),
}
"""Which operations each provider alias can serve at all (config may narrow it further)."""

ALIASES: dict[str, dict[str, str]] = {
    "draw": {"gemini": "gemini_native", "openai": "openai_compat"},
    "edit": {"gemini": "gemini_native", "gitee": "gitee_async", "openai": "openai_compat"},
}
"""Short names users type (``/gedit``, ``backend="gemini"``), per operation."""


class _Fallbacks(Block, kw_only=True):
    provider: str = "local"
    fallback_1: str = ""
    fallback_2: str = ""
    fallback_3: str = ""
    fallback_providers: list[str] = msgspec.field(default_factory=list)
    """Legacy list form, read after ``fallback_1..3``."""

    def fallbacks(self) -> list[str]:
        return [self.fallback_1, self.fallback_2, self.fallback_3, *self.fallback_providers]


class DrawConfig(_Fallbacks, kw_only=True):
    grok: GrokSettings = msgspec.field(default_factory=GrokSettings)
    gemini_native: GeminiNativeSettings = msgspec.field(default_factory=GeminiNativeSettings)
    gemini_openai: GeminiOpenAISettings = msgspec.field(default_factory=GeminiOpenAISettings)
    openai_compat: OpenAICompatSettings = msgspec.field(default_factory=OpenAICompatSettings)
    jimeng: JimengSettings = msgspec.field(default_factory=JimengSettings)
    gitee: GiteeSettings = msgspec.field(default_factory=GiteeSettings)
    ark: ArkSettings = msgspec.field(default_factory=ArkSettings)
    local: LocalSettings = msgspec.field(default_factory=LocalSettings)


class EditFallbackPolicy(Block, kw_only=True):
    enabled: bool = True
    max_retries: int = 2
    retry_delay: float = 2.0


class EditConfig(_Fallbacks, kw_only=True):
    fallback: EditFallbackPolicy = msgspec.field(default_factory=EditFallbackPolicy)
    presets: list[str] = msgspec.field(default_factory=list)
    grok: GrokSettings = msgspec.field(default_factory=GrokSettings)
    gemini_native: GeminiNativeSettings = msgspec.field(default_factory=GeminiNativeSettings)
    gemini_openai: GeminiOpenAISettings = msgspec.field(default_factory=GeminiOpenAISettings)
    openai_compat: OpenAICompatSettings = msgspec.field(default_factory=OpenAICompatSettings)
    jimeng: JimengSettings = msgspec.field(default_factory=JimengSettings)
    gitee_async: GiteeAsyncSettings = msgspec.field(default_factory=GiteeAsyncSettings)
    ark: ArkSettings = msgspec.field(default_factory=ArkSettings)
    local: LocalSettings = msgspec.field(default_factory=LocalSettings)


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
    ``edit.fallback.max_retries``) with exponential backoff from ``backoff`` seconds;
    an upstream retry hint (``Retry-After``) replaces the backoff when it is longer,
    and a hint beyond ``max_retry_after`` escalates at once instead of waiting.
    """

    retry_reasons: list[Reason] = msgspec.field(default_factory=lambda: ["rate_limited", "network", "upstream_error"])
    backoff: float = 2.0
    max_backoff: float = 30.0
    max_retry_after: float = 60.0
    timeout_grace: float = 15.0
    """Seconds added to a provider's ``timeout`` before the router counts an attempt as timed out."""


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


class Config(Block, kw_only=True):
    draw: DrawConfig = msgspec.field(default_factory=DrawConfig)
    edit: EditConfig = msgspec.field(default_factory=EditConfig)
    selfie: SelfieConfig = msgspec.field(default_factory=SelfieConfig)
    video: VideoSettings = msgspec.field(default_factory=VideoSettings)
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
        if alias == "grok_video" or op == "video":
            return self.video if alias == self.video.provider else None
        section: Block = self.draw if op == "draw" else self.edit
        value = getattr(section, alias, None)
        return value if isinstance(value, ProviderSettings) else None

    def canonical(self, op: Operation, name: str) -> str:
        """Resolve a user-facing alias (``gemini``) to a provider alias (``gemini_native``)."""
        name = name.strip().lower()
        table = ALIASES["draw" if op == "draw" else "edit"]
        return table.get(name, name)

    def can_serve(self, op: Operation, alias: str) -> bool:
        """Whether ``alias`` exists, can do ``op``, is configured and (for edits) allows edits."""
        if op not in CAPABILITIES.get(alias, frozenset()):
            return False
        block = self.block(op, alias)
        if block is None or not block.configured():
            return False
        if op in ("edit", "selfie") and not block.supports_edit:
            return False
        return True

    def enabled_providers(self) -> list[str]:
        """Every alias that some operation can use with this config (what ``serve`` starts)."""
        ops: tuple[Operation, ...] = ("draw", "edit", "video")
        return sorted({a for a in CAPABILITIES for op in ops if self.can_serve(op, a)})

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


# ---- loading ----------------------------------------------------------------------

_ENV = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)$")


def _resolve_env(value: Any, path: str) -> Any:
    if isinstance(value, str):
        m = _ENV.match(value.strip())
        if m:
            name = m.group(1)
            if name not in os.environ:
                raise ConfigError(f"{path}: environment variable {name} is not set")
            return os.environ[name]
        return value
    if isinstance(value, Mapping):
        return {k: _resolve_env(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


_PATH = re.compile(r"`\$((?:\.[A-Za-z0-9_]+|\[\d+\])*)`")


def _explain(err: msgspec.ValidationError, source: str) -> ConfigError:
    text = str(err)
    m = re.match(r"Object contains unknown field `([^`]+)` - at `\$((?:\.[A-Za-z0-9_]+|\[\d+\])*)`", text)
    if m:
        key = (m.group(2).lstrip(".") + "." + m.group(1)).lstrip(".")
        return ConfigError(f"{source}: unknown key {key}")
    m2 = re.search(r" - at `\$((?:\.[A-Za-z0-9_]+|\[\d+\])*)`", text)
    if m2:
        key = m2.group(1).lstrip(".")
        head = text[: m2.start()]
        return ConfigError(f"{source}: {key}: {head}")
    return ConfigError(f"{source}: {text}")


def config_from_dict(data: Mapping[str, Any], *, source: str = "config") -> Config:
    """Build a :class:`Config` from a plain dict (e.g. AstrBot plugin settings)."""
    resolved = _resolve_env(dict(data), "")
    try:
        config = msgspec.convert(resolved, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise _explain(exc, source) from None
    _check_finite(config, "", source)
    return config


def _check_finite(value: Any, path: str, source: str) -> None:
    """TOML allows ``inf`` and ``nan``; no duration, size or limit here means anything with them."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{source}: {path}: must be a finite number, not {value}")
    if isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            _check_finite(getattr(value, name), f"{path}.{name}".lstrip("."), source)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{path}.{key}", source)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite(item, f"{path}[{i}]", source)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load config from ``path``, else ``$AIIMG_CONFIG``, else ``./aiimg.toml``, else defaults."""
    chosen: Path | None = None
    if path:
        chosen = Path(path)
        if not chosen.is_file():
            raise ConfigError(f"config file not found: {chosen}")
    elif os.environ.get("AIIMG_CONFIG"):
        chosen = Path(os.environ["AIIMG_CONFIG"])
        if not chosen.is_file():
            raise ConfigError(f"AIIMG_CONFIG points to a missing file: {chosen}")
    elif Path("aiimg.toml").is_file():
        chosen = Path("aiimg.toml")
    if chosen is None:
        return Config()
    try:
        data = tomllib.loads(chosen.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{chosen}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{chosen}: invalid TOML: {exc}") from None
    return config_from_dict(data, source=str(chosen))


_SECRET_KEYS = frozenset({"api_keys", "api_key", "apikey", "cookie_list", "password", "token"})
_USERINFO = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://([^\s/?#@,]+)@")


def _cookie_values(cookie: str) -> Iterator[str]:
    """``a=1; b=2`` → ``1``, ``2`` (upstreams echo a cookie's value without its name)."""
    for part in cookie.split(";"):
        _, eq, value = part.partition("=")
        if eq and len(value.strip()) >= 8:
            yield value.strip()


def _walk(value: Any, key: str = "") -> Iterator[str]:
    if isinstance(value, msgspec.Struct):
        for f in value.__struct_fields__:
            yield from _walk(getattr(value, f), f)
    elif isinstance(value, dict):  # extra_body and other free-form tables
        for k, v in value.items():
            yield from _walk(v, str(k))
    elif key in _SECRET_KEYS:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, str) and item:
                yield item
                if key == "cookie_list" and ":" in item:
                    cookie = item.split(":", 1)[1]
                    yield cookie
                    yield from _cookie_values(cookie)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item, key)
    elif isinstance(value, str) and "@" in value:
        # Credentials in a URL (``nats.url``, ``network.proxy``, a gateway ``base_url``):
        # ``user:password`` and the password alone.
        for userinfo in _USERINFO.findall(value):
            _, colon, password = userinfo.partition(":")
            if colon:
                yield unquote(userinfo)
                yield unquote(password)
            elif len(userinfo) >= 16:  # ``https://<token>@host``; a plain user name is no secret
                yield unquote(userinfo)


def secret_values(config: Config) -> set[str]:
    """Every secret string in ``config`` (keys, cookies and their values, passwords, URL
    credentials), for log redaction."""
    return {s for s in _walk(config) if len(s) >= 4}
