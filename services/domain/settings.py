"""Per-provider settings blocks, with the old plugin's v3 keys and defaults.

Each block appears under ``draw.<alias>`` and/or ``edit.<alias>``; the provider actor
uses the block of the operation it serves. Unknown keys fail at start (``forbid_unknown_fields``).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = (
    "ArkSettings",
    "Block",
    "GeminiNativeSettings",
    "GeminiOpenAISettings",
    "GiteeAsyncSettings",
    "GiteeSettings",
    "GrokSettings",
    "JimengSettings",
    "LocalSettings",
    "OpenAICompatSettings",
    "ProviderSettings",
    "VideoSettings",
)


class Block(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of every config block: strict, keyword-only."""


class ProviderSettings(Block, kw_only=True):
    """Keys every provider block has."""

    timeout: float = 120.0
    """Seconds one upstream call may take; the router adds a grace before it counts a timeout."""
    max_retries: int = 2
    """Retries on the same provider for retryable reasons (see ``policy``)."""
    supports_edit: bool = True

    def configured(self) -> bool:
        """True when the block has what it needs to make a call (keys, URLs)."""
        return True


class _OpenAIStyle(ProviderSettings, kw_only=True):
    base_url: str = ""
    api_mode: Literal["chat", "images"] = "images"
    api_keys: list[str] = msgspec.field(default_factory=list)
    model: str = ""
    size: str = "4096x4096"
    extra_body: dict[str, Any] = msgspec.field(default_factory=dict)
    edit_image_field: Literal["auto", "image", "image[]"] = "auto"
    """Multipart name of the input files on ``images/edits``. ``auto``: ``image`` for one file,
    ``image[]`` for several (what OpenAI takes; it rejects repeated ``image`` parts with
    ``duplicate_parameter``). ``image``: always repeat ``image`` (Gitee-style gateways).
    ``image[]``: always ``image[]``. Ignored by xAI (JSON edits) and chat mode."""
    not_found_cooldown: float = 600.0
    """Seconds an operation stays parked after the upstream answered 404 for it."""

    def configured(self) -> bool:
        return bool(self.base_url.strip() and self.api_keys)


class GrokSettings(_OpenAIStyle, kw_only=True):
    base_url: str = "https://api.x.ai/v1"
    api_mode: Literal["chat", "images"] = "chat"


class GeminiOpenAISettings(_OpenAIStyle, kw_only=True):
    pass


class OpenAICompatSettings(_OpenAIStyle, kw_only=True):
    pass


class GeminiNativeSettings(ProviderSettings, kw_only=True):
    api_url: str = "https://generativelanguage.googleapis.com"
    api_keys: list[str] = msgspec.field(default_factory=list)
    model: str = "gemini-3-pro-image-preview"
    resolution: Literal["1K", "2K", "4K"] = "4K"
    use_proxy: bool = False
    proxy_url: str = ""

    def configured(self) -> bool:
        return bool(self.api_url.strip() and self.api_keys)


class JimengSettings(ProviderSettings, kw_only=True):
    api_url: str = ""
    apikey: str = ""
    cookie_list: list[str] = msgspec.field(default_factory=list)
    default_style: str = "真实"
    default_ratio: str = "1:1"
    default_model: str = "Seedream 4.0"
    supports_edit: bool = False
    """The aggregator takes an edit's input only as a public ``url``; aiimg hosts no files, so
    edits are off unless a deployment sets this (the provider then answers ``unsupported``)."""

    def configured(self) -> bool:
        return bool(self.api_url.strip() and self.apikey and self.cookie_list)


class GiteeSettings(ProviderSettings, kw_only=True):
    base_url: str = "https://ai.gitee.com/v1"
    api_keys: list[str] = msgspec.field(default_factory=list)
    model: str = "z-image-turbo"
    size: str = "1024x1024"
    negative_prompt: str = ""
    num_inference_steps: int = 9
    timeout: float = 300.0
    supports_edit: bool = False
    allowed_sizes: list[str] = msgspec.field(
        default_factory=lambda: [
            "256x256", "512x512", "1024x1024", "2048x2048",
            "1152x896", "2048x1536", "768x1024", "1536x2048",
            "2048x1360", "1360x2048", "1024x576", "2048x1152", "576x1024", "1152x2048",
        ]
    )  # fmt: skip
    """Sizes the model accepts (z-image-turbo's 14). Another size is mapped to the closest ratio,
    then the closest area. Empty: send any ``WxH`` as asked (e.g. for Qwen-Image's 1328x1328)."""
    not_found_cooldown: float = 600.0
    """Seconds ``images/generations`` stays parked after the upstream answered 404."""

    def configured(self) -> bool:
        return bool(self.base_url.strip() and self.api_keys)


class GiteeAsyncSettings(ProviderSettings, kw_only=True):
    base_url: str = "https://ai.gitee.com/v1"
    api_keys: list[str] = msgspec.field(default_factory=list)
    model: str = "Qwen-Image-Edit-2511"
    num_inference_steps: int = 4
    guidance_scale: float = 1.0
    poll_interval: float = 5.0
    poll_timeout: float = 300.0
    task_types: list[str] = msgspec.field(default_factory=lambda: ["id"])
    timeout: float = 330.0

    def configured(self) -> bool:
        return bool(self.base_url.strip() and self.api_keys)


class ArkSettings(ProviderSettings, kw_only=True):
    """Volcengine Ark Seedream (official API)."""

    base_url: str = "https://ark.cn-beijing.volces.com/api/v3"
    api_keys: list[str] = msgspec.field(default_factory=list)
    model: str = "doubao-seedream-4-0-250828"
    size: str = "4K"
    """``1K``/``2K``/``3K``/``4K`` preset or ``WxH``; a job's output intent wins."""
    watermark: bool = False
    response_format: Literal["b64_json", "url"] = "b64_json"
    """``b64_json`` saves a second download; ``url`` results are fetched (URLs live 24 h)."""
    extra_body: dict[str, Any] = msgspec.field(default_factory=dict)

    def configured(self) -> bool:
        return bool(self.base_url.strip() and self.api_keys)


class LocalSettings(ProviderSettings, kw_only=True):
    """The offline Pillow renderer (not AI): for demos, tests and CI."""

    enabled: bool = True
    size: str = "1024x1024"
    """Size used when a job asks for none (4K would be a 48 MB canvas for a demo)."""
    delay: float = 0.0
    """Seconds to wait before rendering, to simulate a slow upstream in demos and benchmarks."""
    timeout: float = 30.0
    max_retries: int = 0

    def configured(self) -> bool:
        return self.enabled


class VideoSettings(ProviderSettings, kw_only=True):
    """``video.*``: Grok Imagine video (``grok_video``)."""

    enabled: bool = True
    provider: str = "grok_video"
    server_url: str = "https://api.x.ai"
    api_key: str = ""
    api_mode: Literal["chat", "videos"] = "chat"
    model: str = "grok-imagine-0.9"
    timeout_seconds: float = msgspec.field(default=180.0)
    empty_response_retry: int = 2
    retry_delay: float = 2.0
    send_mode: Literal["auto", "url", "file"] = "auto"
    send_timeout_seconds: float = 90.0
    download_timeout_seconds: float = 300.0
    max_cached_videos: int = 20
    presets: list[str] = msgspec.field(default_factory=list)
    poll_interval: float = 5.0
    """``api_mode = "videos"``: seconds between ``GET /v1/videos/{id}`` polls."""
    max_bytes: int = 200 * 1024 * 1024
    timeout: float = 600.0
    """Whole attempt (request, polling, download). ``timeout_seconds`` bounds each HTTP call."""
    duration: int = 0
    """``api_mode = "videos"``: seconds of video (1-15); 0 leaves it to the upstream."""
    aspect_ratio: str = ""
    """``api_mode = "videos"``: e.g. ``16:9``; empty follows the input image. A job's ratio wins."""
    resolution: str = ""
    """``api_mode = "videos"``: ``480p`` | ``720p``; empty leaves it to the upstream."""

    def configured(self) -> bool:
        return self.enabled and bool(self.server_url.strip() and self.api_key)
