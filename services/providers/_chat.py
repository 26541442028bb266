"""Chat-completions image mode: ask a chat model for one image and find it in the reply.

Gateways return images in many shapes (markdown with a data URL or an http URL,
``image_url`` content parts, dict content, ``tool_calls`` arguments, OpenRouter's
``message.images[]``). :func:`image_refs` collects every reference in reply order and
the **last** usable one wins. Data URLs are decoded whole and strictly (the old plugin's
regex stopped at the first ``s`` of the base64 text); placeholders (≤128 bytes, 1×1)
and video URLs are skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from ..domain.errors import ProviderFailure
from ..infra.media import image_size
from ._common import b64_text, download
from ._errors import short
from ._images_api import Caller, ImagesAPI, decode_image, openai_failure
from .base import AttemptContext, InputImage, Output

__all__ = (
    "EDIT_TEMPLATE",
    "GENERATE_TEMPLATE",
    "ChatImages",
    "Ref",
    "build_content",
    "image_refs",
    "is_placeholder",
    "size_hint",
)

GENERATE_TEMPLATE = "{prompt}\n\nReturn ONLY one markdown image in the format:\n![](data:image/png;base64,...)"
EDIT_TEMPLATE = (
    "{prompt}\n\nEdit the attached image(s). Return ONLY one markdown image in the format:\n"
    "![](data:image/png;base64,...)"
)
"""The old plugin's prompt templates (seed-plugin-behaviour §2.2); a hint follows each."""

PLACEHOLDER_BYTES = 128

_IMAGE_EXT = re.compile(r"\.(png|jpe?g|webp|gif|bmp|avif)$", re.IGNORECASE)
_VIDEO_EXT = re.compile(r"\.(mp4|webm|mov|m3u8|mkv|avi)$", re.IGNORECASE)
_TEXT_REF = re.compile(
    r"!\[[^\]]*\]\(\s*<?(?P<md>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)"
    r"|(?P<data>data:[\w.+-]+/[\w.+-]+(?:;[\w-]+=[\w.-]+)*;base64,[A-Za-z0-9+/=_-]+)"
    r"|(?P<url>https?://[^\s<>\"'()\[\]{}]+)",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Ref:
    """One image reference found in a reply."""

    kind: Literal["data", "url"]
    value: str

    @property
    def is_video(self) -> bool:
        if self.kind == "data":
            return self.value[5:].lower().startswith("video/")
        return bool(_VIDEO_EXT.search(urlsplit(self.value).path))


def size_hint(size: str = "", resolution: str = "") -> str:
    """`` Output size target: {size}.`` or `` Output resolution target: {res}.`` (old plugin)."""
    if size:
        return f" Output size target: {size}."
    if resolution:
        return f" Output resolution target: {resolution}."
    return ""


def _data_url(img: InputImage) -> str:
    return f"data:{img.mime or 'image/png'};base64,{b64_text(img.data)}"


def build_content(prompt: str, images: Sequence[InputImage], hint: str) -> str | list[dict[str, Any]]:
    """The user message content: the generate text, or an edit text part plus one ``image_url`` per image."""
    if not images:
        return GENERATE_TEMPLATE.format(prompt=prompt) + hint
    parts: list[dict[str, Any]] = [{"type": "text", "text": EDIT_TEMPLATE.format(prompt=prompt) + hint}]
    parts += [{"type": "image_url", "image_url": {"url": _data_url(img)}} for img in images]
    return parts


# ---- finding references -------------------------------------------------------------------


def _as_ref(value: str, *, declared: bool) -> Ref | None:
    """``value`` as a reference: data URLs and http(s) URLs. ``declared`` (the field says it is an
    image) accepts any http URL; free text needs an image extension or the whole text to be a URL."""
    v = value.strip()
    low = v.lower()
    if low.startswith("data:") and ";base64," in low:
        return Ref("data", v)
    if low.startswith(("http://", "https://")):
        if declared or _IMAGE_EXT.search(urlsplit(v).path) or _VIDEO_EXT.search(urlsplit(v).path):
            return Ref("url", v)
    return None


def _refs_in_text(text: str) -> Iterator[Ref]:
    whole = text.strip()
    for m in _TEXT_REF.finditer(text):
        if m.group("md"):
            ref = _as_ref(m.group("md"), declared=True)
        elif m.group("data"):
            ref = Ref("data", m.group("data"))
        else:
            url = m.group("url").rstrip(".,;:!?")
            ref = _as_ref(url, declared=url == whole)
        if ref is not None:
            yield ref


def _refs_in(value: Any, depth: int = 0) -> Iterator[Ref]:
    """Every reference inside ``value`` (str, list, dict), in document order."""
    if depth > 8:
        return
    if isinstance(value, str):
        yield from _refs_in_text(value)
    elif isinstance(value, list):
        for item in value:
            yield from _refs_in(item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key in ("url", "image", "image_url", "data") and isinstance(item, str):
                ref = _as_ref(item, declared=True)
                if ref is not None:
                    yield ref
                    continue
            if key == "b64_json" and isinstance(item, str) and item.strip():
                yield Ref("data", "data:image/png;base64," + item.strip())
                continue
            if key == "arguments" and isinstance(item, str):
                try:
                    item = json.loads(item)
                except (ValueError, RecursionError):  # not JSON, or nested too deeply to walk
                    pass
            yield from _refs_in(item, depth + 1)


def image_refs(reply: Any) -> list[Ref]:
    """Image references in a chat-completions reply, in order: ``content``, ``images[]``,
    ``tool_calls``; when the message holds none, anywhere in the reply (Responses-API relays)."""
    message: Mapping[str, Any] = {}
    if isinstance(reply, dict):
        choices = reply.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            msg = choices[0].get("message") or choices[0].get("delta") or {}
            message = msg if isinstance(msg, dict) else {}
    refs: list[Ref] = []
    for key in ("content", "images", "tool_calls"):
        refs += _refs_in(message.get(key))
    if not refs:
        refs += _refs_in(reply)
    return refs


def is_placeholder(data: bytes) -> bool:
    """Tiny files and 1×1 images that gateways return instead of a real result."""
    if len(data) <= PLACEHOLDER_BYTES:
        return True
    size = image_size(data)  # the header only, whatever its size claims
    if size is None:
        return False  # not for us to judge here; the actor validates the bytes
    return size[0] <= 1 and size[1] <= 1


def reply_text(reply: Any) -> str:
    """The text of a chat completion's first choice (string content, or its text parts joined)."""
    try:
        content = reply["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _blocked(reply: Any) -> str:
    """A policy refusal signalled in the reply's structure (not guessed from prose), else ''."""
    try:
        choice = reply["choices"][0]
    except (KeyError, IndexError, TypeError):
        return ""
    if not isinstance(choice, dict):
        return ""
    if choice.get("finish_reason") == "content_filter":
        return "finish_reason=content_filter"
    message = choice.get("message")
    refusal = message.get("refusal") if isinstance(message, dict) else None
    return f"refusal: {refusal}" if isinstance(refusal, str) and refusal.strip() else ""


# ---- the call -----------------------------------------------------------------------------------


class ChatImages:
    """``POST {base}/chat/completions`` in image mode, sharing the provider's 404 cool-down."""

    def __init__(self, images: ImagesAPI) -> None:
        self.images = images

    async def run(
        self,
        ctx: AttemptContext,
        caller: Caller,
        *,
        model: str,
        hint: str,
        extra: Mapping[str, Any],
        images: Sequence[InputImage] = (),
    ) -> Output:
        content = build_content(ctx.prompt, images, hint)
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
        body.update(extra)

        async def send(_: str) -> httpx.Response:
            return await caller.post(ctx, "chat/completions", json=body)

        operation = "chat.edit" if images else "chat.generate"
        reply = await self.images.exchange(ctx, caller, operation, send)
        return await self.pick(ctx, caller, reply)

    async def pick(self, ctx: AttemptContext, caller: Caller, reply: Any) -> Output:
        """The last usable image of ``reply``, decoded or downloaded."""
        if isinstance(reply, dict) and reply.get("error") and "choices" not in reply:
            raise openai_failure(caller, httpx.Response(200), reply)
        refs = image_refs(reply)
        images = [r for r in refs if not r.is_video]
        if not images:
            blocked = _blocked(reply)
            if blocked:
                raise ProviderFailure("content_policy", f"{caller.label}: chat reply blocked ({short(blocked, 120)})")
            if refs:
                raise ProviderFailure("no_image", f"{caller.label}: chat reply holds a video URL, not an image")
            excerpt = short(caller.scrub(reply_text(reply)), 120) or "(empty)"
            raise ProviderFailure("no_image", f"{caller.label}: chat reply has no image: {excerpt}")
        placeholders = 0
        for ref in reversed(images):
            if ref.kind == "data":
                data, source = decode_image(caller, ref.value), ""
            else:
                data, source = await download(
                    ctx.downloads, ref.value, ctx.config.network, label=f"{caller.label} image download"
                )
            if is_placeholder(data):
                placeholders += 1
                continue
            return Output(data=data, source_url=source)
        raise ProviderFailure("no_image", f"{caller.label}: chat reply holds only placeholder images ({placeholders})")
