"""``local``: an offline Pillow renderer for demos, tests and CI. **Not AI.**

It draws a deterministic picture (a gradient derived from the prompt, with the prompt
as a caption) at the requested size; for an edit it draws the caption onto the first
input image. The same prompt and size always give the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import textwrap

import anyio
from PIL import Image, ImageDraw, ImageFont

from ..domain.errors import MediaError, ProviderFailure
from ..domain.settings import ProviderSettings
from ..domain.sizes import parse_output
from ..infra.media import MAX_PIXELS, MediaInfo, open_image
from .base import AttemptContext, Output, Provider

__all__ = ("LocalProvider", "LocalSettings", "fit", "render")

MAX_EDGE = 4096


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


class LocalProvider(Provider):
    alias = "local"
    operations = frozenset({"draw", "edit", "selfie"})
    settings_type = LocalSettings
    menu_order = 0
    block_order = 90

    async def run(self, ctx: AttemptContext) -> Output:
        settings = ctx.settings
        assert isinstance(settings, LocalSettings)
        if settings.delay > 0:
            await anyio.sleep(settings.delay)
        try:
            intent = parse_output(ctx.output or settings.size)
        except ValueError as exc:
            raise ProviderFailure("bad_request", str(exc)) from None
        base = ctx.inputs[0].data if ctx.op in ("edit", "selfie") and ctx.inputs else None
        if ctx.op in ("edit", "selfie") and base is None:
            raise ProviderFailure("bad_request", "an edit needs an input image")
        width, height = intent.pixels(default_long_edge=1024) if not intent.empty else _default(settings.size)
        call = functools.partial(render, max_pixels=ctx.config.limits.max_pixels)
        data, w, h = await anyio.to_thread.run_sync(call, ctx.prompt, width, height, base)
        return Output(data=data, info=MediaInfo("image/png", w, h))


def fit(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """``width``×``height`` scaled down (ratio kept, at least 1×1) to at most ``max_pixels`` pixels."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    w, h = max(1, int(width * scale)), max(1, int(height * scale))
    while w * h > max_pixels and (w > 1 or h > 1):
        w, h = (w - 1, h) if w >= h else (w, h - 1)
    return w, h


def _default(size: str) -> tuple[int, int]:
    return parse_output(size).pixels(default_long_edge=1024)


def render(
    prompt: str, width: int, height: int, base: bytes | None = None, *, max_pixels: int = MAX_PIXELS
) -> tuple[bytes, int, int]:
    """PNG bytes of the caption drawn on a gradient (or on ``base``). Deterministic.

    Nothing over ``max_pixels`` (``limits.max_pixels``) is decoded or drawn: ``base`` is
    refused by its header, and a drawing is scaled down, keeping its ratio, to fit.
    """
    width, height = fit(max(64, min(MAX_EDGE, width)), max(64, min(MAX_EDGE, height)), max_pixels)
    if base is not None:
        try:
            with open_image(base, max_pixels=max_pixels) as src:
                img = src.convert("RGB")
        except MediaError as exc:  # the input image: the request's fault
            raise ProviderFailure("bad_request", exc.message) from None
        except Exception:  # Pillow's decoders raise many types for broken pixel data
            raise ProviderFailure("bad_request", "input image cannot be decoded") from None
        width, height = img.size
    else:
        digest = hashlib.sha256(prompt.encode()).digest()
        c1, c2 = digest[:3], digest[3:6]
        # A vertical gradient built from a 1-pixel-wide column, then stretched: fast at 4K.
        column = Image.new("RGB", (1, 256))
        for y in range(256):
            t = y / 255
            column.putpixel((0, y), tuple(int(a + (b - a) * t) for a, b in zip(c1, c2, strict=True)))
        img = column.resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    size = max(12, min(width, height) // 16)
    try:
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont = ImageFont.load_default(size=size)
    except TypeError:  # very old Pillow
        font = ImageFont.load_default()
    chars = max(8, int(width / (size * 0.6)))
    text = "\n".join(textwrap.wrap(prompt or "(empty prompt)", chars)[:8])
    box = draw.multiline_textbbox((0, 0), text, font=font)
    tw, th = box[2] - box[0], box[3] - box[1]
    x = int((width - tw) // 2)
    y = int(size) if base is not None else int(height - th - size)  # edits caption the top, so both show
    pad = size // 3
    draw.rectangle((x - pad, y - pad, x + tw + pad, y + th + pad), fill=(0, 0, 0))
    draw.multiline_text((x, y), text, font=font, fill=(255, 255, 255))
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=False, compress_level=1)
    return out.getvalue(), width, height
