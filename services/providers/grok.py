"""xAI Grok images: ``api_mode = "images"`` (xAI Images API) or ``"chat"`` (chat image mode).

xAI differs from OpenAI in ways that matter here (provider-wire-formats §3):

* generations take ``aspect_ratio`` and ``resolution`` (``1k``/``2k``) instead of ``size``,
  which xAI does not support, so ``size`` is never sent;
* edits are **JSON only**: ``image: {url, type}`` for one input, ``images: [...]`` for
  up to three (multipart ``images.edit()`` is rejected);
* moderation is silent: HTTP 200 with ``data: []`` or items with ``respect_moderation:
  false``, which become ``content_policy`` (or ``no_image`` when nothing says why).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import httpx
import structlog

from ..domain.errors import ProviderFailure
from ._common import b64_text
from ._errors import short
from ._images_api import Caller, image_from_response
from .base import AttemptContext, InputImage, Output
from .openai_compat import OpenAICompatBase, OpenAIStyleSettings, size_intent

__all__ = ("XAI_RATIOS", "GrokProvider", "GrokSettings", "xai_size_fields")

log = structlog.get_logger("aiimg.provider.grok")

XAI_RATIOS = (
    "1:1",
    "3:4",
    "4:3",
    "9:16",
    "16:9",
    "2:3",
    "3:2",
    "9:19.5",
    "19.5:9",
    "9:20",
    "20:9",
    "1:2",
    "2:1",
)
"""Aspect ratios the grok-imagine models take (``auto`` too, which is what omitting it means)."""

MAX_EDIT_IMAGES = 3


def _nearest_ratio(width: int, height: int) -> str:
    target = math.log(width / height)

    def distance(r: str) -> float:
        a, b = (float(x) for x in r.split(":"))
        return abs(math.log(a / b) - target)

    return min(XAI_RATIOS, key=distance)


def xai_size_fields(output: str, model: str) -> dict[str, str]:
    """``aspect_ratio`` / ``resolution`` for an output intent; none for legacy grok-2-image models."""
    intent = size_intent(output)
    if intent is None or model.lower().startswith("grok-2"):
        return {}
    fields: dict[str, str] = {}
    if intent.ratio:
        fields["aspect_ratio"] = intent.ratio if intent.ratio in XAI_RATIOS else _nearest_ratio(*intent.pixels(1024))
    elif intent.width and intent.height:
        fields["aspect_ratio"] = _nearest_ratio(intent.width, intent.height)
    if intent.resolution:
        fields["resolution"] = "1k" if intent.resolution == "1K" else "2k"
    elif intent.width and intent.height:
        fields["resolution"] = "1k" if max(intent.width, intent.height) <= 1024 else "2k"
    return fields


def _image_part(img: InputImage) -> dict[str, str]:
    data = b64_text(img.data)
    return {"url": f"data:{img.mime or 'image/png'};base64,{data}", "type": "image_url"}


def _moderation_hint(body: dict[str, Any]) -> str:
    """A top-level field in which xAI may explain an input-moderation block."""
    for key, value in body.items():
        if key in ("data", "usage"):
            continue
        if isinstance(value, str) and value.strip():
            return f"{key}: {value}"
    return ""


class GrokSettings(OpenAIStyleSettings, kw_only=True):
    base_url: str = "https://api.x.ai/v1"
    api_mode: Literal["chat", "images"] = "chat"


class GrokProvider(OpenAICompatBase):
    alias = "grok"
    settings_type = GrokSettings
    menu_order = 10
    block_order = 10
    default_model = "grok-imagine-image"

    async def images_generate(self, ctx: AttemptContext, caller: Caller, s: OpenAIStyleSettings, model: str) -> Output:
        body: dict[str, Any] = {"model": model, "prompt": ctx.prompt}
        body.update(xai_size_fields(ctx.output or s.size, model))
        body.update(s.extra_body)
        return await self._call(ctx, caller, "images.generate", "images/generations", body)

    async def images_edit(self, ctx: AttemptContext, caller: Caller, s: OpenAIStyleSettings, model: str) -> Output:
        images = list(ctx.inputs)
        if len(images) > MAX_EDIT_IMAGES:
            log.info("edit_inputs_truncated", provider=self.alias, given=len(images), sent=MAX_EDIT_IMAGES)
            images = images[:MAX_EDIT_IMAGES]
        body: dict[str, Any] = {"model": model, "prompt": ctx.prompt}
        if len(images) == 1:
            body["image"] = _image_part(images[0])
        else:
            body["images"] = [_image_part(img) for img in images]
        # Without an explicit intent the output follows the first input image.
        body.update(xai_size_fields(ctx.output, model))
        body.update(s.extra_body)
        return await self._call(ctx, caller, "images.edit", "images/edits", body)

    async def _call(
        self, ctx: AttemptContext, caller: Caller, operation: str, path: str, body: dict[str, Any]
    ) -> Output:
        async def send(_: str) -> httpx.Response:
            return await caller.post(ctx, path, json=body)

        reply = await self.images.exchange(ctx, caller, operation, send)
        if isinstance(reply, dict):
            self._check_moderation(caller, reply)
        return await image_from_response(ctx, caller, reply)

    def _check_moderation(self, caller: Caller, reply: dict[str, Any]) -> None:
        data = reply.get("data")
        if not isinstance(data, list):
            return
        if any(isinstance(item, dict) and item.get("respect_moderation") is False for item in data):
            raise ProviderFailure("content_policy", f"{caller.label}: image withheld by xAI moderation")
        if not data:
            hint = _moderation_hint(reply)
            if hint:
                raise ProviderFailure("content_policy", f"{caller.label}: no image ({short(caller.scrub(hint), 120)})")
            raise ProviderFailure("no_image", f"{caller.label}: empty data (xAI filters silently; likely moderation)")
