"""``gemini_native``: Google Gemini image output over ``models/{model}:generateContent``.

Auth is the ``x-goog-api-key`` header and nothing else: an extra ``Authorization``
header made the old plugin's calls fail with 401 (issue #25). Keys rotate round-robin
and a rejected key hands the attempt to the next one (``each_key``).

Gemini reports most outcomes inside HTTP 200: a blocked prompt (``promptFeedback``),
a blocked image (``finishReason``), a text-only refusal, even ``{"error": …}`` from
some relays. Each becomes a typed failure here, so the router can tell a policy
block (try another provider) from a quota hit (retry after ``RetryInfo.retryDelay``).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal
from urllib.parse import quote

import httpx
import msgspec

from ..domain.config import ConfigBase
from ..domain.errors import ProviderFailure
from ..domain.settings import ProviderSettings
from ..domain.sizes import SizeIntent, parse_output
from ..infra.http import upstream_client
from ._common import KeyRing, b64_text, decode_base64, each_key, join, normalize_gemini_base
from ._errors import Codes, Meaning, Said, classify, error_body, retry_after_seconds, scrub, short
from ._json import parse_json
from .base import AttemptContext, Output, Provider

__all__ = ("GeminiNativeProvider", "GeminiNativeSettings", "build_body", "image_config")

LABEL = "gemini_native"

ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
"""Ratios every Gemini image model takes; another ratio is sent as the closest of these."""

SAFETY_CATEGORIES = (
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
)

POLICY_FINISH = frozenset(
    {
        "SAFETY",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
"""``finishReason`` values that mean the output was withheld by a policy filter."""

_RETRY_IN = re.compile(r"retry in\s+(\d+(?:\.\d+)?)\s*s", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


class GeminiNativeSettings(ProviderSettings, kw_only=True):
    api_url: str = "https://generativelanguage.googleapis.com"
    api_keys: list[str] = msgspec.field(default_factory=list)
    model: str = "gemini-3-pro-image-preview"
    resolution: Literal["1K", "2K", "4K"] = "4K"
    use_proxy: bool = False
    proxy_url: str = ""

    def configured(self) -> bool:
        return bool(self.api_url.strip() and self.api_keys)


class GeminiNativeProvider(Provider):
    alias = "gemini_native"
    operations = frozenset({"draw", "edit", "selfie"})
    settings_type = GeminiNativeSettings
    short_names = ("gemini",)
    menu_order = 20
    block_order = 20

    def __init__(self, config: ConfigBase) -> None:
        super().__init__(config)
        self._rings: dict[tuple[str, ...], KeyRing] = {}
        self._proxied: dict[str, httpx.AsyncClient] = {}

    async def run(self, ctx: AttemptContext) -> Output:
        settings = ctx.settings
        assert isinstance(settings, GeminiNativeSettings)
        if ctx.op == "video":
            raise ProviderFailure("unsupported", f"{LABEL} does not make videos")
        if ctx.op in ("edit", "selfie") and not ctx.inputs:
            raise ProviderFailure("bad_request", f"{LABEL}: an edit needs at least one input image")
        model = settings.model.strip()
        if not model:
            raise ProviderFailure("bad_request", f"{LABEL}: no model configured")
        config = image_config(ctx.output, settings.resolution, model)
        body = build_body(ctx, config)
        url = join(normalize_gemini_base(settings.api_url), f"models/{quote(model, safe='')}:generateContent")
        http = self._http(settings, ctx.http)
        ring = self._ring(settings.api_keys)

        async def call(position: int, key: str) -> Output:
            resp = await http.post(url, json=body, headers={"x-goog-api-key": key})
            if resp.status_code >= 400:
                raise _http_failure(resp, position, key)
            data = parse_json(LABEL, resp)
            if not isinstance(data, dict):
                raise ProviderFailure("invalid_response", f"{LABEL}: reply is not a JSON object")
            error = data.get("error")
            if error:
                raise _api_failure(error, resp.status_code, resp.headers, position, key)
            return Output(data=extract_image(data))

        return await each_key(ring, call)

    async def aclose(self) -> None:
        for client in self._proxied.values():
            await client.aclose()
        self._proxied.clear()

    def _ring(self, keys: list[str]) -> KeyRing:
        # One ring per key list: draw and edit blocks may hold different keys.
        ident = tuple(keys)
        ring = self._rings.get(ident)
        if ring is None:
            ring = self._rings[ident] = KeyRing(keys)
        return ring

    def _http(self, settings: GeminiNativeSettings, shared: httpx.AsyncClient) -> httpx.AsyncClient:
        """The shared client, or (``use_proxy`` with a ``proxy_url``) a client of our own through that proxy.

        ``use_proxy`` without a ``proxy_url`` keeps the shared client, which already goes
        through ``network.proxy`` when that is set.
        """
        proxy = settings.proxy_url.strip()
        if not (settings.use_proxy and proxy):
            return shared
        client = self._proxied.get(proxy)
        if client is None:
            # Built like the shared client: same transport, timeouts and response cap.
            client = upstream_client(self.config, self.config.actors.concurrency, proxy=proxy)
            self._proxied[proxy] = client
        return client


# ---- request ---------------------------------------------------------------------------


def image_config(output: str, default_resolution: str, model: str) -> dict[str, str]:
    """``generationConfig.imageConfig`` for an output intent.

    ``imageSize`` is the intent's ``1K``/``2K``/``4K`` (a ``WxH`` counts by its long edge),
    else the block's ``resolution``. It is left out for Gemini 2.x models, which only
    make 1K images and whose handling of the field is not documented. ``aspectRatio``
    is sent only when the intent has a ratio (or a ``WxH``); without one Gemini follows
    the input image, or makes a square.
    """
    try:
        intent = parse_output(output) if output.strip() else SizeIntent()
    except ValueError as exc:
        raise ProviderFailure("bad_request", f"{LABEL}: {exc}") from None
    resolution = intent.resolution
    ratio = intent.ratio
    if intent.width and intent.height:
        edge = max(intent.width, intent.height)
        resolution = resolution or ("1K" if edge <= 1024 else "2K" if edge <= 2048 else "4K")
        ratio = ratio or f"{intent.width}:{intent.height}"
    config: dict[str, str] = {}
    if not re.search(r"gemini-2(\.|-|$)", model.lower()):
        config["imageSize"] = resolution or default_resolution
    if ratio:
        config["aspectRatio"] = closest_ratio(ratio)
    return config


def closest_ratio(ratio: str) -> str:
    """The supported aspect ratio closest to ``W:H`` (compared on a log scale)."""
    a, b = (float(x) for x in ratio.split(":"))
    want = math.log(a / b)
    return min(ASPECT_RATIOS, key=lambda r: abs(math.log(_value(r)) - want))


def _value(ratio: str) -> float:
    a, b = ratio.split(":")
    return int(a) / int(b)


def build_body(ctx: AttemptContext, image_config: dict[str, str]) -> dict[str, Any]:
    """The ``generateContent`` body: the old plugin's instruction texts, inputs as ``inlineData``."""
    resolution = image_config.get("imageSize", "high")
    parts: list[dict[str, Any]]
    if ctx.op in ("edit", "selfie"):
        text = (
            f"Re-imagine the attached image based on this instruction: {ctx.prompt}. "
            f"Generate a high quality {resolution} resolution image. Output the transformed image directly."
        )
        parts = [{"text": text}]
        parts += [{"inlineData": {"mimeType": img.mime, "data": _b64(img.data)}} for img in ctx.inputs]
    else:
        text = (
            f"Generate a high quality {resolution} resolution image. "
            f"Follow this instruction: {ctx.prompt}. Output the image directly."
        )
        parts = [{"text": text}]
    generation: dict[str, Any] = {"responseModalities": ["TEXT", "IMAGE"]}
    if image_config:
        generation["imageConfig"] = image_config
    return {
        "contents": [{"role": "user", "parts": parts}],
        "generationConfig": generation,
        "safetySettings": [{"category": c, "threshold": "BLOCK_NONE"} for c in SAFETY_CATEGORIES],
    }


def _b64(data: bytes) -> str:
    return b64_text(data)


# ---- response ---------------------------------------------------------------------------


def extract_image(data: dict[str, Any]) -> bytes:
    """The last image of every candidate's parts (thought images skipped), or a typed failure."""
    feedback = data.get("promptFeedback") or {}
    blocked = feedback.get("blockReason") if isinstance(feedback, dict) else None
    candidates = data.get("candidates") or []
    images: list[str] = []
    texts: list[str] = []
    finishes: list[str] = []
    for cand in candidates if isinstance(candidates, list) else []:
        if not isinstance(cand, dict):
            continue
        if isinstance(cand.get("finishReason"), str):
            finishes.append(cand["finishReason"])
        content = cand.get("content") or {}
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else []:
            if not isinstance(part, dict) or part.get("thought"):
                continue
            inline = part.get("inlineData") or part.get("inline_data")
            if isinstance(inline, dict) and isinstance(inline.get("data"), str) and inline["data"]:
                mime = str(inline.get("mimeType") or inline.get("mime_type") or "image/")
                if mime.startswith("image/"):
                    images.append(inline["data"])
            elif isinstance(part.get("text"), str):
                texts.append(part["text"])
    if images:
        return decode_base64(images[-1])
    if blocked:
        raise ProviderFailure("content_policy", f"{LABEL}: prompt blocked ({blocked})")
    policy = [f for f in finishes if f in POLICY_FINISH]
    if policy:
        raise ProviderFailure("content_policy", f"{LABEL}: image withheld ({policy[0]})")
    said = short(" ".join(texts), 160)
    finish = next((f for f in finishes if f != "STOP"), "")
    detail = f" ({finish})" if finish else ""
    raise ProviderFailure("no_image", f"{LABEL}: no image in the reply{detail}" + (f": {said}" if said else ""))


# ---- errors ------------------------------------------------------------------------------


GOOGLE_CODES: Codes = {
    "API_KEY_INVALID": Meaning("auth"),
    401: Meaning("auth"),
    403: Meaning("auth"),
    "UNAUTHENTICATED": Meaning("auth"),
    "PERMISSION_DENIED": Meaning("auth"),
    402: Meaning("auth", "no prepaid credits left"),
    "RESOURCE_EXHAUSTED": Meaning("rate_limited"),
    "FAILED_PRECONDITION": Meaning("unsupported", "not available"),
    "NOT_FOUND": Meaning("unsupported", "model or endpoint not found"),
    "DEADLINE_EXCEEDED": Meaning("timeout", "upstream deadline exceeded"),
}
"""Google RPC statuses and error reasons, in the order they decide: a rejected key first,
then a payment (402), a quota, a region or billing precondition, a missing model."""


def _http_failure(resp: httpx.Response, position: int, key: str) -> ProviderFailure:
    body = error_body(LABEL, resp)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": body if isinstance(body, str) else str(body or resp.reason_phrase)}
    return _api_failure(error, resp.status_code, resp.headers, position, key)


def _api_failure(error: Any, http_status: int, headers: httpx.Headers, position: int, key: str) -> ProviderFailure:
    """Map a Google RPC error (``{"code","message","status","details"}``) to a typed failure."""
    if not isinstance(error, dict):
        error = {"message": str(error)}
    code = error.get("code") if isinstance(error.get("code"), int) else http_status
    message = scrub(str(error.get("message") or ""), key)
    details = error.get("details") if isinstance(error.get("details"), list) else []
    reasons = sorted({str(d.get("reason")) for d in details if isinstance(d, dict) and d.get("reason")})
    said = Said(
        LABEL,
        code,
        message,
        code=" ".join(x for x in (str(error.get("status") or ""), *reasons, _quota_id(details)) if x),
        retry_after=_retry_delay(details) or retry_after_seconds(headers) or _retry_in(message),
        credential=f"key #{position}",
    )
    return classify(said, codes=GOOGLE_CODES)


def _retry_delay(details: list[Any]) -> float:
    """Seconds from a ``google.rpc.RetryInfo`` detail (``"retryDelay": "16s"``), else 0."""
    for d in details:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
            m = _DURATION.match(str(d.get("retryDelay", "")))
            if m:
                return float(m.group(1))
    return 0.0


def _retry_in(message: str) -> float:
    m = _RETRY_IN.search(message)
    return float(m.group(1)) if m else 0.0


def _quota_id(details: list[Any]) -> str:
    for d in details:
        if isinstance(d, dict) and isinstance(d.get("violations"), list):
            for v in d["violations"]:
                if isinstance(v, dict) and v.get("quotaId"):
                    return str(v["quotaId"])
    return ""
