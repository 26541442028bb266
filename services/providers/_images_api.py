"""The OpenAI Images API (``images/generations`` JSON, ``images/edits`` multipart) and the
OpenAI error shape, shared by every provider that speaks it.

One :class:`ImagesAPI` lives on a provider instance, because it holds that instance's
404 cool-down. :class:`Caller` carries what one attempt calls with (label, API root,
one key by position) so messages can name the key by its position and strip its value
even when an upstream echoes it back.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import msgspec
import structlog

from ..domain.errors import ProviderFailure
from ..infra.http import send_read
from ..infra.redaction import mask_forms
from ._common import Cooldown, b64decode_strict, decode_base64, download, join
from ._errors import Codes, Meaning, Said, classify, error_body, error_text, retry_after_seconds
from ._json import check_json_reply, parse_json
from .base import AttemptContext, InputImage, Output

__all__ = (
    "Caller",
    "ImageField",
    "ImagesAPI",
    "decode_image",
    "form_value",
    "image_from_response",
    "openai_failure",
)

log = structlog.get_logger("aiimg.provider.images")

ImageField = Literal["auto", "image", "image[]"]

FULL_SIZE = "4096x4096"
FALLBACK_SIZE = "2048x2048"


def downgraded(size: str) -> str | None:
    """The 2K size to retry once with when ``size`` (long edge above 2048) is rejected.

    ``4096x4096`` → ``2048x2048`` (the old plugin's rule); a ratio size keeps its ratio
    (``4096x2304`` → ``2048x1152``). ``None`` for sizes that are already 2K or smaller.
    """
    m = re.fullmatch(r"(\d+)x(\d+)", size)
    if not m:
        return None
    w, h = int(m.group(1)), int(m.group(2))
    edge = max(w, h)
    if edge <= 2048:
        return None
    if w == h:
        return FALLBACK_SIZE
    scale = 2048 / edge
    return f"{max(16, round(w * scale / 16) * 16)}x{max(16, round(h * scale / 16) * 16)}"


_SIZE_REJECTED = re.compile(r"invalid|unsupported|not supported|allowed|must be|not one of", re.IGNORECASE)

OPENAI_CODES: Codes = {
    "moderation_blocked": Meaning("content_policy"),
    "content_policy_violation": Meaning("content_policy"),
    "content_filter": Meaning("content_policy"),
    "invalid_api_key": Meaning("auth"),
    "insufficient_quota": Meaning("quota_exhausted"),
}
"""OpenAI's error codes that say more than the status (a moderation block is a 400)."""
_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


@dataclass(frozen=True, slots=True)
class Caller:
    """What one attempt calls with. ``key`` is never put in a message; ``key_index`` is."""

    label: str
    base: str
    """API root, normalised (``…/v1``)."""
    key: str
    key_index: int
    timeout: float

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def scrub(self, text: str) -> str:
        """``text`` with the key's value replaced by its position (upstreams echo keys in errors)."""
        return mask_forms(text, (self.key,), f"key #{self.key_index}") if self.key else text

    async def post(self, ctx: AttemptContext, path: str, **kwargs: Any) -> httpx.Response:
        """POST ``{base}/{path}`` with the key, bounded by both the block timeout and the attempt deadline."""
        budget = max(1.0, min(self.timeout, ctx.remaining() or self.timeout))
        request = ctx.http.build_request(
            "POST",
            join(self.base, path),
            headers=self.headers(),
            timeout=httpx.Timeout(budget, connect=min(30.0, budget)),
            **kwargs,
        )
        return await send_read(ctx.http, request)


def openai_failure(caller: Caller, response: httpx.Response, body: Any = None, *, label: str = "") -> ProviderFailure:
    """Typed failure for an OpenAI-shaped error (``{"error":{"message","type","code"}}``, or xAI's
    ``{"code","error"}``), with the key's value stripped (:func:`._errors.classify`, OpenAI's codes)."""
    if body is None:
        body = error_body(caller.label, response)
    err = body.get("error") if isinstance(body, dict) else None
    details = err if isinstance(err, dict) else body if isinstance(body, dict) else {}
    code = details.get("code")
    said = Said(
        label or caller.label,
        response.status_code,
        caller.scrub(error_text(body)) or response.reason_phrase,
        code=caller.scrub(code) if isinstance(code, str) else "",
        retry_after=retry_after_seconds(response.headers),
        credential=f"key #{caller.key_index}",
    )
    return classify(said, codes=OPENAI_CODES)


def form_value(value: Any) -> str:
    """``extra_body`` values as multipart form fields: JSON for containers and booleans."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


async def image_from_response(ctx: AttemptContext, caller: Caller, body: Any) -> Output:
    """``data[0].b64_json`` decoded strictly, else ``data[0].url`` downloaded; ``no_image`` if neither."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        if isinstance(body, dict) and body.get("error"):
            raise openai_failure(caller, httpx.Response(200), body)
        raise ProviderFailure("invalid_response", f"{caller.label}: reply has no data list")
    first = data[0] if data else None
    if not isinstance(first, dict):
        raise ProviderFailure("no_image", f"{caller.label}: reply holds no image")
    b64 = first.get("b64_json")
    if isinstance(b64, str) and b64.strip():
        return Output(data=decode_image(caller, b64))
    url = first.get("url")
    if isinstance(url, str) and url.strip():
        raw, final = await download(
            ctx.downloads, url.strip(), ctx.config.network, label=f"{caller.label} image download"
        )
        return Output(data=raw, source_url=final)
    raise ProviderFailure("no_image", f"{caller.label}: reply item has neither b64_json nor url")


def decode_image(caller: Caller, value: str) -> bytes:
    """Strict base64 (or data URL) decoding, with the failure naming the provider."""
    return decode_base64(value, label=caller.label)


class _LeanItem(msgspec.Struct):
    b64_json: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


class _LeanReply(msgspec.Struct):
    data: list[_LeanItem] | None = None


_LEAN = msgspec.json.Decoder(_LeanReply)


class _Replied:
    """The parts of a response :func:`parse_json` reads, over content already read."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, content: bytes) -> None:
        self.content = content
        self.headers: dict[str, str] = {}
        self.status_code = 200


def _size_rejected(response: httpx.Response) -> bool:
    """The old plugin's test: the error mentions ``size`` and says it is not acceptable."""
    if not 400 <= response.status_code < 500:
        return False
    text = response.text
    return "size" in text.lower() and bool(_SIZE_REJECTED.search(text))


class ImagesAPI:
    """OpenAI Images calls for one provider instance, with its 404 cool-down."""

    def __init__(self, cooldown_seconds: float = 600.0) -> None:
        self.cooldown = Cooldown(cooldown_seconds)

    async def exchange_response(
        self,
        ctx: AttemptContext,
        caller: Caller,
        operation: str,
        send: Callable[[str], Awaitable[httpx.Response]],
        size: str = "",
    ) -> httpx.Response:
        """Send, handle the 4K→2K retry, the 404 parking and errors; return the JSON body of a 2xx.

        ``send(size)`` makes the HTTP call. When ``size`` is 4096x4096 and the upstream says
        that size is not acceptable, the call is repeated exactly once at 2048x2048, and
        whatever that second call answers is final.
        """
        self.cooldown.check(caller.label, operation)
        response = await send(size)
        smaller = downgraded(size)
        if smaller and _size_rejected(response):
            log.info("size_downgraded", provider=caller.label, operation=operation, size=smaller)
            response = await send(smaller)
        if response.status_code == 404:
            self.cooldown.park(operation)
            raise openai_failure(caller, response, label=f"{caller.label} {operation}")
        if not response.is_success:
            raise openai_failure(caller, response)
        self.cooldown.clear(operation)
        return response

    async def exchange(
        self,
        ctx: AttemptContext,
        caller: Caller,
        operation: str,
        send: Callable[[str], Awaitable[httpx.Response]],
        size: str = "",
    ) -> Any:
        """:meth:`exchange_response`, then the JSON body of the 2xx answer."""
        return parse_json(caller.label, await self.exchange_response(ctx, caller, operation, send, size))

    async def image(
        self,
        ctx: AttemptContext,
        caller: Caller,
        operation: str,
        send: Callable[[str], Awaitable[httpx.Response]],
        size: str = "",
    ) -> Output:
        """:meth:`exchange_response`, then the image of the answer.

        The common case (``data[0].b64_json``, no JSON escapes) is decoded straight from the
        reply's bytes: no str copy of a ~35 MB base64 text beside the ~26 MB image. Anything
        else goes through the general :func:`image_from_response`.
        """
        response = await self.exchange_response(ctx, caller, operation, send, size)
        content = response.content
        check_json_reply(caller.label, response)
        del response
        try:
            lean = _LEAN.decode(content)
        except (msgspec.DecodeError, UnicodeDecodeError, ValueError, RecursionError):
            lean = None  # the general path below reports what is wrong (RecursionError: nested too deeply)
        if lean is not None and lean.data:
            raw = memoryview(lean.data[0].b64_json)
            # A JSON string with an escape (``\/``) is not strict base64 and takes the general path.
            if len(raw) > 2 and raw[0] == 0x22:
                try:
                    return Output(data=b64decode_strict(raw[1:-1]))
                except (binascii.Error, ValueError):
                    pass  # not canonical base64: the general path cleans and reports it
        return await image_from_response(ctx, caller, parse_json(caller.label, _Replied(content)))

    async def generate(
        self, ctx: AttemptContext, caller: Caller, *, model: str, size: str, extra: Mapping[str, Any]
    ) -> Output:
        """``POST {base}/images/generations`` ``{model, prompt, size, **extra}`` (no ``n`` or
        ``response_format`` unless ``extra`` has them: gpt-image models reject ``response_format``)."""

        async def send(chosen: str) -> httpx.Response:
            body: dict[str, Any] = {"model": model, "prompt": ctx.prompt}
            if chosen:
                body["size"] = chosen
            body.update(extra)
            return await caller.post(ctx, "images/generations", json=body)

        return await self.image(ctx, caller, "images.generate", send, size)

    async def edit(
        self,
        ctx: AttemptContext,
        caller: Caller,
        *,
        model: str,
        size: str,
        images: Sequence[InputImage],
        extra: Mapping[str, Any],
        image_field: ImageField = "auto",
    ) -> Output:
        """``POST {base}/images/edits`` multipart: ``model``, ``prompt``, ``size``, the files
        (``image`` / ``image[]`` per ``image_field``) and ``extra`` as form fields."""
        if not images:
            raise ProviderFailure("bad_request", f"{caller.label}: an edit needs an input image")
        name = image_field if image_field != "auto" else ("image" if len(images) == 1 else "image[]")
        files = [
            (name, (f"input_{i + 1}.{_EXT.get(img.mime, 'png')}", img.data, img.mime or "application/octet-stream"))
            for i, img in enumerate(images)
        ]

        async def send(chosen: str) -> httpx.Response:
            form: dict[str, str] = {"model": model, "prompt": ctx.prompt}
            if chosen:
                form["size"] = chosen
            form.update({k: form_value(v) for k, v in extra.items()})
            return await caller.post(ctx, "images/edits", data=form, files=files)

        return await self.image(ctx, caller, "images.edit", send, size)
