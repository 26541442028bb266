"""Checks on bytes that claim to be images or videos.

Content is identified by magic bytes (never by a file name or a header), images are
decoded with Pillow under a pixel limit so a decompression bomb is rejected, and
placeholders (tiny files, 1x1 pixels) are not accepted as results.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from .errors import ProviderFailure

__all__ = ("MAX_PIXELS", "MediaInfo", "inspect_image", "inspect_media", "sniff_mime")

MAX_PIXELS = 8192 * 8192
"""Largest image accepted (64 MP): a 4096x4096 result fits four times over."""


class MediaInfo:
    __slots__ = ("height", "mime", "width")

    def __init__(self, mime: str, width: int = 0, height: int = 0) -> None:
        self.mime = mime
        self.width = width
        self.height = height

    def __repr__(self) -> str:
        return f"MediaInfo({self.mime!r}, {self.width}x{self.height})"


def sniff_mime(data: bytes) -> str | None:
    """The MIME type implied by the first bytes, or None."""
    head = data[:32]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"qt  ",):
            return "video/quicktime"
        if brand in (b"avif", b"avis"):
            return "image/avif"
        if brand in (b"heic", b"heix", b"mif1"):
            return "image/heic"
        return "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    if head.startswith(b"BM"):
        return "image/bmp"
    return None


def inspect_image(data: bytes, *, max_pixels: int = MAX_PIXELS, min_bytes: int = 129) -> MediaInfo:
    """Validate image bytes; raise ``ProviderFailure`` (``no_image`` / ``invalid_response``) if unusable."""
    if len(data) < min_bytes:
        raise ProviderFailure("no_image", f"placeholder image ({len(data)} bytes)")
    mime = sniff_mime(data)
    if mime is None or not mime.startswith("image/"):
        raise ProviderFailure("invalid_response", "result is not a known image format")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ProviderFailure(
                        "invalid_response", f"image too large ({width}x{height} > {max_pixels} pixels)"
                    )
                if width <= 1 or height <= 1:
                    raise ProviderFailure("no_image", f"placeholder image ({width}x{height})")
                img.verify()
    except ProviderFailure:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ProviderFailure("invalid_response", "image exceeds the pixel limit") from None
    except Exception as exc:
        raise ProviderFailure("invalid_response", f"image cannot be decoded ({type(exc).__name__})") from None
    return MediaInfo(mime, width, height)


def inspect_media(data: bytes, *, video: bool = False, max_pixels: int = MAX_PIXELS) -> MediaInfo:
    """Validate a result: an image, or (``video=True``) an mp4/webm/mov file."""
    if not video:
        return inspect_image(data, max_pixels=max_pixels)
    mime = sniff_mime(data)
    if mime not in ("video/mp4", "video/webm", "video/quicktime"):
        raise ProviderFailure("invalid_response", "result is not an mp4/webm/mov video")
    if len(data) < 1024:
        raise ProviderFailure("no_image", f"video too small ({len(data)} bytes)")
    return MediaInfo(mime)
