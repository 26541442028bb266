"""OpenAI-compatible gateways: ``openai_compat`` and ``gemini_openai`` (Gemini behind an OpenAI relay).

``api_mode = "images"`` speaks the Images API (:mod:`._images_api`); ``api_mode = "chat"``
asks a chat model for a markdown image (:mod:`._chat`). Keys rotate per attempt.
The size comes from the job's output intent, else the block's ``size`` (honoured,
unlike the old ``/aiimg`` that always sent 256x256).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec

from ...messages import Operation
from ..domain.config import ConfigBase
from ..domain.errors import ProviderFailure
from ..domain.settings import ProviderSettings
from ..domain.sizes import SizeIntent, parse_output
from ._chat import ChatImages, size_hint
from ._common import KeyRing, each_key, normalize_openai_base
from ._images_api import Caller, ImagesAPI
from .base import AttemptContext, Output, Provider

__all__ = (
    "GeminiOpenAIProvider",
    "GeminiOpenAISettings",
    "OpenAICompatBase",
    "OpenAICompatProvider",
    "OpenAICompatSettings",
    "OpenAIStyleSettings",
    "resolve_size",
    "size_intent",
)


class OpenAIStyleSettings(ProviderSettings, kw_only=True):
    """Keys of every block in the OpenAI family (``openai_compat``, ``gemini_openai``, ``grok``)."""

    base_url: str = ""
    base_url_exact: bool = False
    """Use ``base_url`` exactly as given (no ``/v1`` appended, no endpoint suffix removed); off:
    ``/v1`` is appended only when the path names no version (``/v1``, ``/v1beta/openai``, ``/api/paas/v4``)."""
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


class OpenAICompatSettings(OpenAIStyleSettings, kw_only=True):
    pass


class GeminiOpenAISettings(OpenAIStyleSettings, kw_only=True):
    pass


def size_intent(text: str) -> SizeIntent | None:
    try:
        intent = parse_output(text)
    except ValueError:
        return None
    return None if intent.empty else intent


def resolve_size(output: str, default: str) -> str:
    """A concrete ``WxH``: ``4K/2K/1K`` → square, ``WxH`` as given, a ratio at the default's long edge.

    Without an output intent the block's ``size`` is used (mapped the same way when it is
    ``4K``-style; passed through verbatim when it is a gateway keyword such as ``auto``).
    Raises ``ProviderFailure(bad_request)`` for an output that is not a size.
    """
    base = size_intent(default)
    edge = max(base.pixels(1024)) if base is not None else 1024
    text = output.strip()
    if text:
        intent = size_intent(text)
        if intent is None:
            raise ProviderFailure("bad_request", f"cannot use output size {text!r}")
        width, height = intent.pixels(default_long_edge=edge)
        return f"{width}x{height}"
    if base is not None:
        width, height = base.pixels(default_long_edge=edge)
        return f"{width}x{height}"
    return default.strip()


class OpenAICompatBase(Provider):
    """Shared flow of the OpenAI family: checks, key rotation, chat or images mode."""

    operations: ClassVar[frozenset[Operation]] = frozenset({"draw", "edit", "selfie"})
    default_model: ClassVar[str] = ""
    """Model used when the block leaves ``model`` empty ('' = the block must name one)."""

    def __init__(self, config: ConfigBase) -> None:
        super().__init__(config)
        self.images = ImagesAPI()
        self.chat = ChatImages(self.images)
        self._rings: dict[tuple[str, ...], KeyRing] = {}

    def _ring(self, keys: list[str]) -> KeyRing:
        """One ring per distinct key list (draw and edit blocks may hold different keys)."""
        return self._rings.setdefault(tuple(keys), KeyRing(keys))

    def settings_of(self, ctx: AttemptContext) -> OpenAIStyleSettings:
        s = ctx.settings
        if not isinstance(s, OpenAIStyleSettings):
            raise ProviderFailure("unsupported", f"{self.alias} got a {type(s).__name__} block")
        return s

    def model_of(self, s: OpenAIStyleSettings) -> str:
        model = s.model.strip() or (self.default_model if s.api_mode == "images" else "")
        if not model:
            raise ProviderFailure("bad_request", f"{self.alias}: no model configured ({s.api_mode} mode)")
        return model

    async def run(self, ctx: AttemptContext) -> Output:
        s = self.settings_of(ctx)
        if ctx.op == "video":
            raise ProviderFailure("unsupported", f"{self.alias} does not make videos")
        editing = ctx.op in ("edit", "selfie")
        if editing and not s.supports_edit:
            raise ProviderFailure("unsupported", f"{self.alias}: edits are off for this block (supports_edit=false)")
        if editing and not ctx.inputs:
            raise ProviderFailure("bad_request", f"{self.alias}: an edit needs an input image")
        if not s.base_url.strip():
            raise ProviderFailure("bad_request", f"{self.alias}: no base_url configured")
        model = self.model_of(s)
        base = normalize_openai_base(s.base_url, exact=s.base_url_exact)
        self.images.cooldown.seconds = s.not_found_cooldown

        async def attempt(index: int, key: str) -> Output:
            return await self.call(ctx, Caller(self.alias, base, key, index, s.timeout), s, model, editing)

        # Keys rotate per attempt; a rejected key hands over to the next one within the attempt.
        return await each_key(self._ring(s.api_keys), attempt)

    async def call(
        self, ctx: AttemptContext, caller: Caller, s: OpenAIStyleSettings, model: str, editing: bool
    ) -> Output:
        """One upstream call with one key, in the block's ``api_mode``."""
        if s.api_mode == "chat":
            return await self.chat.run(
                ctx,
                caller,
                model=model,
                hint=self.chat_hint(ctx, s),
                extra=s.extra_body,
                images=ctx.inputs if editing else (),
            )
        if editing:
            return await self.images_edit(ctx, caller, s, model)
        return await self.images_generate(ctx, caller, s, model)

    def chat_hint(self, ctx: AttemptContext, s: OpenAIStyleSettings) -> str:
        """A resolution-only output stays a resolution hint (``4K``); anything else becomes a size."""
        intent = size_intent(ctx.output)
        if intent is not None and intent.resolution and not intent.ratio and not intent.width:
            return size_hint(resolution=intent.resolution)
        return size_hint(size=resolve_size(ctx.output, s.size))

    async def images_generate(self, ctx: AttemptContext, caller: Caller, s: OpenAIStyleSettings, model: str) -> Output:
        size = resolve_size(ctx.output, s.size)
        return await self.images.generate(ctx, caller, model=model, size=size, extra=s.extra_body)

    async def images_edit(self, ctx: AttemptContext, caller: Caller, s: OpenAIStyleSettings, model: str) -> Output:
        size = resolve_size(ctx.output, s.size)
        extra: dict[str, Any] = dict(s.extra_body)
        return await self.images.edit(
            ctx, caller, model=model, size=size, images=ctx.inputs, extra=extra, image_field=s.edit_image_field
        )


class OpenAICompatProvider(OpenAICompatBase):
    """Any OpenAI-compatible endpoint (OpenAI itself, new-api/one-api relays, gateways)."""

    alias = "openai_compat"
    settings_type = OpenAICompatSettings
    short_names = ("openai",)
    menu_order = 40
    block_order = 40


class GeminiOpenAIProvider(OpenAICompatBase):
    """Gemini image models behind an OpenAI-compatible relay (same wire, its own config block)."""

    alias = "gemini_openai"
    settings_type = GeminiOpenAISettings
    menu_order = 30
    block_order = 30
