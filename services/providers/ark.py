"""``ark``: Volcengine Ark Seedream (Doubao / Jimeng models) through the official API.

One endpoint does both operations: ``POST {base}/images/generations`` with Bearer keys;
an edit adds ``image`` (data URLs). Ark has no ``n`` and defaults ``watermark`` to true,
so the body always says ``watermark`` explicitly (false unless configured). Sizes are a
preset (``1K``/``2K``/``4K``, which presets a model takes varies) or ``WxH`` within the
model's pixel range; an intent outside that range is scaled into it rather than
rejected. Errors follow Ark's official ``{"error":{"code","message","param","type"}}``
table, where every ``*SensitiveContentDetected`` / ``*RiskDetection`` code is a policy block.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import httpx
import msgspec

from ..domain.config import ConfigBase
from ..domain.errors import ProviderFailure
from ..domain.settings import ProviderSettings
from ..domain.sizes import parse_output
from ..infra.media import sniff_mime
from ._common import KeyRing, b64_text, each_key, image_from_item, join
from ._errors import Codes, Meaning, Said, classify, error_body, retry_after_seconds, scrub
from ._json import parse_json
from .base import AttemptContext, Output, Provider

__all__ = ("ArkProvider", "ArkSettings", "ark_base", "build_body", "pick_size")

LABEL = "ark"

MAX_INPUTS = 14
MAX_INPUT_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 16_777_216
_RES_EDGE = {"1K": 1024, "2K": 2048, "3K": 3072, "4K": 4096}


def ark_base(url: str) -> str:
    """The API root (``…/api/v3``) from the configured value, tolerating a pasted endpoint URL."""
    value = url.strip().rstrip("/")
    for suffix in ("/images/generations", "/images"):
        if value.lower().endswith(suffix):
            value = value[: -len(suffix)].rstrip("/")
            break
    return value


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


class ArkProvider(Provider):
    alias = "ark"
    operations = frozenset({"draw", "edit", "selfie"})
    settings_type = ArkSettings
    menu_order = 50
    block_order = 80

    def __init__(self, config: ConfigBase) -> None:
        super().__init__(config)
        self._rings: dict[tuple[str, ...], KeyRing] = {}

    async def run(self, ctx: AttemptContext) -> Output:
        settings = ctx.settings
        assert isinstance(settings, ArkSettings)
        if ctx.op == "video":
            raise ProviderFailure("unsupported", f"{LABEL} does not make videos")
        if ctx.op in ("edit", "selfie") and not ctx.inputs:
            raise ProviderFailure("bad_request", f"{LABEL}: an edit needs at least one input image")
        if not settings.model.strip():
            raise ProviderFailure("bad_request", f"{LABEL}: no model configured")
        body = build_body(ctx, settings)
        url = join(ark_base(settings.base_url), "images/generations")
        ring = self._rings.setdefault(tuple(settings.api_keys), KeyRing(settings.api_keys))

        async def call(position: int, key: str) -> Output:
            resp = await ctx.http.post(url, json=body, headers={"Authorization": f"Bearer {key}"})
            if resp.status_code >= 400:
                raise _http_failure(resp, position, key)
            return await _image(ctx, parse_json(LABEL, resp), key)

        return await each_key(ring, call)


# ---- request -------------------------------------------------------------------------------


def build_body(ctx: AttemptContext, settings: ArkSettings) -> dict[str, Any]:
    """The request body. ``extra_body`` adds fields (e.g. ``optimize_prompt_options``); it cannot
    replace the ones below."""
    model = settings.model.strip()
    body: dict[str, Any] = dict(settings.extra_body)
    body.update(
        model=model,
        prompt=ctx.prompt,
        size=pick_size(ctx.output, settings.size, model),
        response_format=settings.response_format,
        watermark=settings.watermark,
    )
    if ctx.op in ("edit", "selfie"):
        if len(ctx.inputs) > MAX_INPUTS:
            raise ProviderFailure(
                "bad_request", f"{LABEL}: at most {MAX_INPUTS} input images ({len(ctx.inputs)} given)"
            )
        urls = []
        for i, img in enumerate(ctx.inputs, 1):
            if len(img.data) > MAX_INPUT_BYTES:
                raise ProviderFailure("bad_request", f"{LABEL}: input image {i} is over 10 MB")
            mime = (sniff_mime(img.data) or img.mime or "image/png").lower()
            urls.append(f"data:{mime};base64,{b64_text(img.data)}")
        # The legacy SeedEdit 3.0 model takes one image as a string; Seedream 4+ take a list.
        body["image"] = urls[0] if "seededit" in model.lower() else urls
    return body


def _model_limits(model: str) -> tuple[tuple[str, ...], int, int]:
    """(presets, min pixels, max pixels) per model family, from Ark's size table."""
    m = model.lower()
    if "seededit" in m or "seedream-3" in m:
        return (), 512 * 512, 2048 * 2048
    if "seedream-4-5" in m:
        return ("2K", "4K"), 3_686_400, MAX_PIXELS
    if "seedream-5" in m:
        return ("2K", "3K", "4K"), 3_686_400, MAX_PIXELS
    return ("1K", "2K", "4K"), 921_600, MAX_PIXELS


def pick_size(output: str, default: str, model: str) -> str:
    """``size`` for an intent: a preset the model takes, or ``WxH`` scaled into its pixel range."""
    text = output.strip() or default.strip() or "2K"
    presets, low, high = _model_limits(model)
    up = text.upper()
    if up not in _RES_EDGE:
        try:
            intent = parse_output(text)
        except ValueError as exc:
            raise ProviderFailure("bad_request", f"{LABEL}: {exc}") from None
        if intent.width and intent.height:
            return _fit(intent.width, intent.height, low, high)
        if intent.ratio:
            edge = _RES_EDGE.get(intent.resolution or "") or _default_edge(default)
            return _fit(*intent.pixels(default_long_edge=edge), low, high)
        up = intent.resolution or "2K"  # "4096" and friends
    if not presets:  # legacy models take WxH only
        edge = min(_RES_EDGE[up], 2048)
        return f"{edge}x{edge}"
    if up in presets:
        return up
    return next((p for p in presets if _RES_EDGE[p] >= _RES_EDGE[up]), presets[-1])


def _default_edge(default: str) -> int:
    up = default.strip().upper()
    if up in _RES_EDGE:
        return _RES_EDGE[up]
    try:
        intent = parse_output(default)
    except ValueError:
        return 2048
    if intent.width and intent.height:
        return max(intent.width, intent.height)
    return _RES_EDGE.get(intent.resolution or "", 2048)


def _fit(width: int, height: int, low: int, high: int) -> str:
    """``WxH`` as asked when Ark takes it; else ratio clamped to [1/16, 16], area scaled into [low, high]."""
    ratio = width / height
    if 1 / 16 <= ratio <= 16 and low <= width * height <= high:
        return f"{width}x{height}"
    ratio = min(16.0, max(1 / 16, ratio))
    area = min(high, max(low, width * height))
    w, h = math.sqrt(area * ratio), math.sqrt(area / ratio)
    # Round away from the violated bound so the result is inside the range.
    if width * height > high:
        return f"{math.floor(w)}x{math.floor(h)}"
    return f"{math.ceil(w)}x{math.ceil(h)}"


# ---- response ----------------------------------------------------------------------------


async def _image(ctx: AttemptContext, data: Any, key: str) -> Output:
    if not isinstance(data, dict):
        raise ProviderFailure("invalid_response", f"{LABEL}: reply is not a JSON object")
    if isinstance(data.get("error"), dict):
        raise _error_failure(data["error"], 200, key, 0, httpx.Headers())
    items = data.get("data")
    errors: list[dict[str, Any]] = []
    for item in items if isinstance(items, list) else []:
        found = await image_from_item(ctx.downloads, item, ctx.config.network, LABEL)
        if found is not None:
            return Output(data=found[0], source_url=found[1])
        if isinstance(item, dict) and isinstance(item.get("error"), dict):
            errors.append(item["error"])
    if errors:
        raise _error_failure(errors[0], 200, key, 0, httpx.Headers())
    raise ProviderFailure("no_image", f"{LABEL}: the reply has no image")


# ---- errors ------------------------------------------------------------------------------


ARK_CODES: Codes = {
    "SensitiveContentDetected": Meaning("content_policy", "blocked by moderation"),
    "RiskDetection": Meaning("content_policy", "blocked by moderation"),
    "AuthenticationError": Meaning("auth"),
    "AccountOverdueError": Meaning("quota_exhausted", "account overdue"),
    "AccessDenied": Meaning("auth", "access denied"),
    403: Meaning("auth", "access denied"),
    "RateLimitExceeded": Meaning("rate_limited"),
    "TooManyRequests": Meaning("rate_limited"),
    "QuotaExceeded": Meaning("quota_exhausted"),
    "InvalidEndpoint": Meaning("unsupported"),
    "ModelNotOpen": Meaning("unsupported"),
}
"""Ark's error codes (its official table): every ``*SensitiveContentDetected`` and
``*RiskDetection`` is a policy block, whatever the status."""


def _http_failure(resp: httpx.Response, position: int, key: str) -> ProviderFailure:
    body = error_body(LABEL, resp)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": body if isinstance(body, str) else str(body or resp.reason_phrase)}
    return _error_failure(error, resp.status_code, key, position, resp.headers)


def _error_failure(
    error: dict[str, Any], status: int, key: str, position: int, headers: httpx.Headers
) -> ProviderFailure:
    param = str(error.get("param") or "")
    said = Said(
        LABEL,
        status,
        scrub(str(error.get("message") or ""), key) + (f" (param {param})" if param else ""),
        code=scrub(str(error.get("code") or ""), key),
        retry_after=retry_after_seconds(headers),
        credential=f"key #{position}",
    )
    return classify(said, codes=ARK_CODES)
