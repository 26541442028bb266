"""``gitee``: Gitee AI / Moark text-to-image, ``POST {base}/images/generations`` (synchronous).

The request is the OpenAI-like JSON the old plugin sent, plus the model fields Gitee
takes: ``num_inference_steps`` always, ``negative_prompt`` only for models that use it
(z-image and FLUX.1 ignore guidance and reject or waste it). Sizes are mapped onto the
model's allowed list instead of being sent blind: an unlisted size gets a 400
``参数无效 'size'``. A 404 parks the endpoint for ``not_found_cooldown`` seconds; a
call refused while parked does not extend the wait.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from ..domain.config import ConfigBase
from ..domain.errors import ProviderFailure
from ..domain.settings import ProviderSettings
from ..domain.sizes import SizeIntent, parse_output
from ._common import Cooldown, KeyRing, each_key, image_from_item, join, normalize_openai_base
from ._errors import scrub
from ._gitee import gitee_failure, gitee_headers, gitee_message, gitee_said
from ._json import parse_json
from .base import AttemptContext, Output, Provider

__all__ = ("NO_NEGATIVE_PROMPT", "GiteeProvider", "GiteeSettings", "build_body", "pick_size")

LABEL = "gitee"
OPERATION = "images.generate"

NO_NEGATIVE_PROMPT = frozenset({"z-image-turbo", "z-image-base", "flux.1-dev", "flux.1-schnell"})
"""Models (lower-case) that get no ``negative_prompt``, as in the old plugin."""

_WXH = re.compile(r"^(\d{2,5})x(\d{2,5})$")


class GiteeSettings(ProviderSettings, kw_only=True):
    base_url: str = "https://ai.gitee.com/v1"
    base_url_exact: bool = False
    """Use ``base_url`` exactly as given (no ``/v1`` appended, no endpoint suffix removed); off:
    ``/v1`` is appended only when the path names no version (``/v1``, ``/v1beta/openai``, ``/api/paas/v4``)."""
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


class GiteeProvider(Provider):
    alias = "gitee"
    operations = frozenset({"draw"})
    settings_type = GiteeSettings
    menu_order = 70
    block_order = 60

    def __init__(self, config: ConfigBase) -> None:
        super().__init__(config)
        self._rings: dict[tuple[str, ...], KeyRing] = {}
        self._cooldown = Cooldown()

    async def run(self, ctx: AttemptContext) -> Output:
        settings = ctx.settings
        assert isinstance(settings, GiteeSettings)
        if ctx.op != "draw":
            raise ProviderFailure("unsupported", f"{LABEL} only draws; edits go to gitee_async")
        if not settings.model.strip():
            raise ProviderFailure("bad_request", f"{LABEL}: no model configured")
        self._cooldown.check(LABEL, OPERATION)
        body = build_body(ctx.prompt, settings, pick_size(ctx.output, settings.size, settings.allowed_sizes))
        url = join(normalize_openai_base(settings.base_url, exact=settings.base_url_exact), "images/generations")
        ring = self._rings.setdefault(tuple(settings.api_keys), KeyRing(settings.api_keys))

        async def call(position: int, key: str) -> Output:
            resp = await ctx.http.post(url, json=body, headers=gitee_headers(key))
            if resp.status_code == 404:
                self._cooldown.seconds = settings.not_found_cooldown
                self._cooldown.park(OPERATION)
            if resp.status_code >= 400:
                raise gitee_failure(LABEL, resp, position=position, key=key)
            self._cooldown.clear(OPERATION)
            data = parse_json(LABEL, resp)
            return await _image(ctx, data, position, key)

        return await each_key(ring, call)


def build_body(prompt: str, settings: GiteeSettings, size: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": settings.model.strip(),
        "prompt": prompt,
        "size": size,
        "num_inference_steps": settings.num_inference_steps,
    }
    if settings.negative_prompt.strip() and settings.model.strip().lower() not in NO_NEGATIVE_PROMPT:
        body["negative_prompt"] = settings.negative_prompt.strip()
    return body


async def _image(ctx: AttemptContext, data: Any, position: int, key: str) -> Output:
    if isinstance(data, dict) and data.get("error"):
        raise gitee_said(LABEL, scrub(gitee_message(data), key), position=position, status=200)
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ProviderFailure("no_image", f"{LABEL}: the reply has no image data")
    for item in items:
        found = await image_from_item(ctx.downloads, item, ctx.config.network, LABEL)
        if found is not None:
            return Output(data=found[0], source_url=found[1])
    raise ProviderFailure("no_image", f"{LABEL}: the reply has no image url or b64_json")


# ---- sizes -------------------------------------------------------------------------------


def pick_size(output: str, default: str, allowed: Sequence[str]) -> str:
    """The ``WxH`` to send for an output intent.

    The intent (or the block's ``size``) becomes pixels; with an ``allowed`` list, an
    unlisted size is replaced by the allowed size of the closest ratio and, among those,
    the closest area (so ``4K`` becomes ``2048x2048`` and ``16:9`` a 16:9 size near the
    default's area, never the smallest size on the list).
    """
    width, height = _wanted(output, default)
    sizes = [(int(m.group(1)), int(m.group(2))) for m in (_WXH.match(s.strip().lower()) for s in allowed) if m]
    if not sizes or (width, height) in sizes:
        return f"{width}x{height}"
    want_ratio = math.log(width / height)
    want_area = math.log(width * height)
    best = min(abs(math.log(w / h) - want_ratio) for w, h in sizes)
    same_ratio = [(w, h) for w, h in sizes if abs(math.log(w / h) - want_ratio) <= best + 0.03]
    w, h = min(same_ratio, key=lambda s: (abs(math.log(s[0] * s[1]) - want_area), -s[0] * s[1]))
    return f"{w}x{h}"


def _wanted(output: str, default: str) -> tuple[int, int]:
    try:
        fallback = parse_output(default) if default.strip() else SizeIntent(resolution="1K")
    except ValueError as exc:
        raise ProviderFailure("bad_request", f"{LABEL}: size setting: {exc}") from None
    try:
        intent = parse_output(output) if output.strip() else fallback
    except ValueError as exc:
        raise ProviderFailure("bad_request", f"{LABEL}: {exc}") from None
    if intent.empty:
        intent = fallback
    if intent.width and intent.height:
        return intent.width, intent.height
    if intent.ratio and not intent.resolution:
        # A bare ratio keeps the default's area.
        dw, dh = fallback.pixels(default_long_edge=1024)
        a, b = (int(x) for x in intent.ratio.split(":"))
        area = dw * dh
        return max(64, round(math.sqrt(area * a / b))), max(64, round(math.sqrt(area * b / a)))
    return intent.pixels(default_long_edge=1024)
