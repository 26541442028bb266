"""Sending results back to the chat: images that fit the platform, big ones as preview + file, videos by URL.

Every send goes through a :data:`Sink` (``event.send`` inside a handler, or
``context.send_message`` for results delivered later). Each step has a fallback so a
command is never silent: an image too large for the platform (QQ: about 5 MB, or a long
edge over 4096 px) goes as a compressed JPEG preview plus the original as a file, and if
a send fails the next, smaller form is tried, ending with a text. Videos are never
base64: by URL, else as a file, else as a plain link.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astrbot.api import logger
from astrbot.api import message_components as Comp
from astrbot.api.event import MessageChain
from PIL import Image as PILImage

from . import texts

__all__ = (
    "Limits",
    "ResultCache",
    "Sink",
    "fits",
    "limits_for",
    "preview_jpeg",
    "send_image",
    "send_text",
    "send_video",
)

Sink = Callable[[MessageChain], Awaitable[Any]]
"""Sends one message chain now; raises when the platform refuses it."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int
    max_edge: int


QQ_LIMITS = Limits(5 * 1024 * 1024, 4096)
PLATFORM_LIMITS: dict[str, Limits] = {"aiocqhttp": QQ_LIMITS, "telegram": Limits(10 * 1024 * 1024, 10000)}
"""Practical image limits per AstrBot platform; others use QQ's, the strictest common case."""

PREVIEW_EDGE = 2048
PREVIEW_MAX_BYTES = int(3.5 * 1024 * 1024)


def limits_for(platform: str) -> Limits:
    return PLATFORM_LIMITS.get(platform, QQ_LIMITS)


def _size(data: bytes) -> tuple[int, int]:
    with PILImage.open(io.BytesIO(data)) as img:
        return img.size


def fits(data: bytes, limits: Limits) -> bool:
    if len(data) > limits.max_bytes:
        return False
    try:
        w, h = _size(data)
    except Exception as exc:  # Pillow raises many types; the actor checked the result already
        logger.info(f"aiimg: result size unreadable here ({type(exc).__name__}); the platform judges it")
        return True
    return max(w, h) <= limits.max_edge


def preview_jpeg(data: bytes, edge: int = PREVIEW_EDGE, max_bytes: int = PREVIEW_MAX_BYTES) -> bytes:
    """A JPEG no larger than ``edge`` px on its long side and (best effort) ``max_bytes``."""
    with PILImage.open(io.BytesIO(data)) as src:
        img = src.convert("RGB")
    img.thumbnail((edge, edge), PILImage.Resampling.LANCZOS)
    out = b""
    for quality in (85, 72, 60, 45):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality, optimize=True)
        out = buf.getvalue()
        if len(out) <= max_bytes:
            break
    return out


class ResultCache:
    """Result files under the plugin's data dir, oldest removed past ``max_files`` (≤ 0: keep all)."""

    def __init__(self, directory: Path, max_files: int) -> None:
        self.directory = directory
        self.max_files = max_files

    def save(self, name: str, data: bytes) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / name
        path.write_bytes(data)
        self._prune(keep=path)
        return path

    def _prune(self, keep: Path) -> None:
        if self.max_files <= 0:
            return
        files = sorted((p for p in self.directory.iterdir() if p.is_file()), key=lambda p: p.stat().st_mtime)
        for old in files[: max(0, len(files) - self.max_files)]:
            if old != keep:
                old.unlink(missing_ok=True)


_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif", "video/mp4": "mp4"}


def extension(mime: str) -> str:
    return _EXT.get(mime, mime.split("/")[-1] or "bin")


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


async def _try(sink: Sink, chain: Sequence[Any], timeout: float | None = None) -> str | None:
    """Send ``chain``; the error text if it failed, else None."""
    try:
        if timeout:
            await asyncio.wait_for(sink(MessageChain(list(chain))), timeout)
        else:
            await sink(MessageChain(list(chain)))
    except Exception as exc:
        logger.warning(f"aiimg: send failed: {type(exc).__name__}: {exc}")
        return f"{type(exc).__name__}: {exc}"[:200] or type(exc).__name__
    return None


async def send_text(sink: Sink, text: str) -> None:
    await _try(sink, [Comp.Plain(text)])


async def send_image(
    sink: Sink,
    data: bytes,
    *,
    mime: str,
    name: str,
    cache: ResultCache,
    limits: Limits,
    caption: str = "",
) -> bool:
    """Send an image result with its fallbacks; True if an image (or preview) reached the chat."""
    path = cache.save(f"{name}.{extension(mime)}", data)
    head: list[Any] = [Comp.Plain(caption)] if caption else []
    if fits(data, limits):
        if await _try(sink, [*head, Comp.Image.fromFileSystem(str(path))]) is None:
            return True
    # Too large for the platform, or the platform refused it: a preview the platform takes, plus the file.
    small = preview_jpeg(data, min(PREVIEW_EDGE, limits.max_edge), min(PREVIEW_MAX_BYTES, limits.max_bytes))
    preview = cache.save(f"{name}_preview.jpg", small)
    note = texts.PREVIEW_NOTE.format(size=_mb(len(data)))
    error = await _try(sink, [*head, Comp.Plain(note), Comp.Image.fromFileSystem(str(preview))])
    if error is None:
        await _try(sink, [Comp.File(name=path.name, file=str(path))])
        return True
    await send_text(sink, texts.SEND_FAILED.format(reason=error))
    return False


async def send_video(
    sink: Sink,
    data: bytes | None,
    *,
    source_url: str,
    name: str,
    cache: ResultCache,
    mode: str = "auto",
    timeout: float | None = None,
) -> bool:
    """Send a video result: by URL, then as a file, then as a link (``mode`` narrows the first two)."""
    if source_url and mode in ("auto", "url"):
        if await _try(sink, [Comp.Video.fromURL(source_url)], timeout) is None:
            return True
    if data and mode in ("auto", "file"):
        path = cache.save(f"{name}.mp4", data)
        if await _try(sink, [Comp.Video.fromFileSystem(str(path))], timeout) is None:
            return True
    if source_url:
        return await _try(sink, [Comp.Plain(texts.VIDEO_LINK.format(url=source_url))]) is None
    await send_text(sink, texts.VIDEO_NO_LINK)
    return False
