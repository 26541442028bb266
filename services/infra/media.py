"""Checks on bytes that claim to be images or videos.

Content is identified by magic bytes (never by a file name or a header), and an image is
accepted only after it is read to the end:

* **One pixel limit, ours.** The format's own header is read (Pillow's format plugin, no
  pixel data) and its size compared with ``max_pixels`` (``limits.max_pixels``) before
  anything is decoded. Pillow's ``Image.open`` is not used: its decompression-bomb check
  applies ``Image.MAX_IMAGE_PIXELS`` (a process-wide global), which would be the effective
  limit whenever it is lower than ours and refuse valid images whenever it is higher.
* **Fully decoded.** ``verify()`` reads chunk structure only: a PNG whose zlib stream is
  garbage, a truncated JPEG and a WebP with a broken bitstream all pass it. Every image is
  therefore decoded, choosing per format the cheapest check that reads all of its data
  (measured with ``python -m bench.media_check``, see ``docs/operations.md``):

  - PNG: the IDAT zlib stream is inflated in 1 MiB pieces and checked — every chunk CRC,
    the stream ends, it inflates to exactly the scanlines the header declares (Adam7
    passes included), and every scanline has a valid filter type. That is everything
    libpng's decoder can fail on, without unfiltering or holding the pixels: faster than
    Pillow's ``load()`` and with constant memory instead of 4 bytes per pixel.
  - JPEG: libjpeg decodes at 1/8 scale (``draft``): every entropy-coded byte is read
    (truncation and corrupt scans fail), the IDCT and the image are 64× smaller.
  - WebP, GIF, BMP, AVIF: Pillow's full ``load()``.

Placeholders (tiny files, 1-pixel-wide images) are not accepted as results. The checks
are CPU work on up to hundreds of MB: async callers run them on a worker thread
(:func:`check_image`, :func:`check_media`).
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Callable

import anyio
from PIL import BmpImagePlugin, GifImagePlugin, ImageFile, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from ..domain.errors import MediaError

__all__ = (
    "MAX_PIXELS",
    "MediaInfo",
    "check_image",
    "check_media",
    "check_png_stream",
    "image_size",
    "inspect_image",
    "inspect_media",
    "open_image",
    "sniff_mime",
)

MAX_PIXELS = 8192 * 8192
"""Default of ``limits.max_pixels`` (64 MP): a 4096x4096 result fits four times over."""

INFLATE_PIECE = 1 << 20
"""Bytes of PNG scanlines inflated at a time by the stream check."""

INFLATE_FEED = 64 * 1024
"""Bytes of compressed PNG data handed to zlib at a time."""


class MediaInfo:
    __slots__ = ("height", "mime", "width")

    def __init__(self, mime: str, width: int = 0, height: int = 0) -> None:
        self.mime = mime
        self.width = width
        self.height = height

    def __repr__(self) -> str:
        return f"MediaInfo({self.mime!r}, {self.width}x{self.height})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MediaInfo):
            return NotImplemented
        return (self.mime, self.width, self.height) == (other.mime, other.width, other.height)

    def __hash__(self) -> int:
        return hash((self.mime, self.width, self.height))


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


_OPENERS: dict[str, Callable[[io.BytesIO], ImageFile.ImageFile]] = {
    "image/png": PngImagePlugin.PngImageFile,
    "image/jpeg": JpegImagePlugin.JpegImageFile,
    "image/webp": WebPImagePlugin.WebPImageFile,
    "image/gif": GifImagePlugin.GifImageFile,
    "image/bmp": BmpImagePlugin.BmpImageFile,
}
"""Format plugins by MIME type: each reads its header only, with no global pixel check."""


def _avif() -> Callable[[io.BytesIO], ImageFile.ImageFile] | None:
    """Pillow's AVIF plugin (Pillow ≥ 11.2, built with libavif), if there is one."""
    try:
        from PIL import AvifImagePlugin  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return None
    if not getattr(AvifImagePlugin, "SUPPORTED", False):
        return None
    opener: Callable[[io.BytesIO], ImageFile.ImageFile] = AvifImagePlugin.AvifImageFile
    return opener


if (_avif_opener := _avif()) is not None:
    _OPENERS["image/avif"] = _avif_opener


def open_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> ImageFile.ImageFile:
    """The image's header, read and checked against ``max_pixels``; no pixel is decoded yet.

    Raises ``MediaError`` (``invalid`` for an unknown format or an unreadable header,
    ``too_large`` for a size over the limit). The caller decodes (``load()``, ``convert()``) and closes.
    """
    mime = sniff_mime(data)
    opener = _OPENERS.get(mime or "")
    if opener is None:
        what = f"{mime} images are not supported" if mime and mime.startswith("image/") else "not a known image format"
        raise MediaError("invalid", what)
    try:
        img = opener(io.BytesIO(data))
    except Exception as exc:  # Pillow's plugins raise many types for a bad header: all mean "not decodable"
        raise MediaError("invalid", f"image cannot be decoded ({_why(exc)})") from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise MediaError("too_large", f"image too large ({width}x{height} pixels > limits.max_pixels={max_pixels})")
    return img


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the header alone (any size), or None if it is not a readable image."""
    try:
        with open_image(data, max_pixels=1 << 62) as img:
            return img.size
    except MediaError:
        return None


def inspect_image(data: bytes, *, max_pixels: int = MAX_PIXELS, min_bytes: int = 129) -> MediaInfo:
    """Validate image bytes: format, pixel limit, placeholder, and a full decode.

    Raises ``MediaError``: ``no_image`` for a placeholder, ``too_large`` over the pixel limit,
    ``invalid`` for the rest. What that means depends on the caller: a result's failure
    (``no_image``, ``invalid_response``) or a bad input (``bad_request``).
    """
    if len(data) < min_bytes:
        raise MediaError("no_image", f"placeholder image ({len(data)} bytes)")
    with open_image(data, max_pixels=max_pixels) as img:
        width, height = img.size
        if width <= 1 or height <= 1:
            raise MediaError("no_image", f"placeholder image ({width}x{height})")
        mime = sniff_mime(data) or ""
        try:
            if mime == "image/png":
                check_png_stream(data)
            elif mime == "image/jpeg":
                # libjpeg at 1/8 scale still reads every entropy-coded byte.
                img.draft(None, (max(1, width // 8), max(1, height // 8)))
                img.load()
            else:
                img.load()
        except MediaError:
            raise
        except Exception as exc:  # Pillow and its codecs raise many types for broken data: all mean "not decodable"
            raise MediaError("invalid", f"image cannot be decoded ({_why(exc)})") from None
    return MediaInfo(mime, width, height)


def inspect_media(data: bytes, *, video: bool = False, max_pixels: int = MAX_PIXELS) -> MediaInfo:
    """Validate a result: an image (see :func:`inspect_image`), or (``video=True``) an mp4/webm/mov file."""
    if not video:
        return inspect_image(data, max_pixels=max_pixels)
    mime = sniff_mime(data)
    if mime not in ("video/mp4", "video/webm", "video/quicktime"):
        raise MediaError("invalid", "result is not an mp4/webm/mov video")
    if len(data) < 1024:
        raise MediaError("no_image", f"video too small ({len(data)} bytes)")
    return MediaInfo(mime)


async def check_image(
    data: bytes, *, max_pixels: int, min_bytes: int = 129, limiter: anyio.CapacityLimiter | None = None
) -> MediaInfo:
    """:func:`inspect_image` on a worker thread (zlib, libjpeg and libwebp release the GIL), or
    inline for a small image (:func:`_small`), where the hand-off costs more than the check."""
    call = functools.partial(inspect_image, data, max_pixels=max_pixels, min_bytes=min_bytes)
    if _small(data):
        return call()
    return await anyio.to_thread.run_sync(call, limiter=limiter)


async def check_media(
    data: bytes, *, video: bool = False, max_pixels: int, limiter: anyio.CapacityLimiter | None = None
) -> MediaInfo:
    """:func:`inspect_media` on a worker thread; inline for a video (its check reads a few header
    bytes) or a small image."""
    call = functools.partial(inspect_media, data, video=video, max_pixels=max_pixels)
    if video or _small(data):
        return call()
    return await anyio.to_thread.run_sync(call, limiter=limiter)


INLINE_BYTES = 256 * 1024
INLINE_PIXELS = 256 * 256
"""An image this small, in bytes and in the pixels its header declares, is checked on the event
loop: at most a quarter-megabyte decode (~0.2 ms), while a worker-thread hand-off costs ~0.23 ms
of CPU on its own (a 16 KB PNG: 0.045 ms inline, 0.28 ms through a thread). Both bounds, so a
small file declaring huge dimensions (a decompression bomb) still goes to a thread."""


def _small(data: bytes) -> bool:
    if len(data) > INLINE_BYTES:
        return False
    size = image_size(data)
    return size is not None and size[0] * size[1] <= INLINE_PIXELS


# ---- PNG: the zlib stream check -------------------------------------------------------------------

_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
"""PNG colour type → samples per pixel."""
_BIT_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
"""Adam7 passes: x0, y0, dx, dy."""


def _bad(why: str) -> MediaError:
    return MediaError("invalid", f"image cannot be decoded (PNG {why})")


def _scanlines(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> list[tuple[int, int, int]]:
    """``(offset, rows, stride)`` of each pass's scanlines in the inflated stream (stride = 1 + row bytes)."""
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    out: list[tuple[int, int, int]] = []
    offset = 0
    for x0, y0, dx, dy in passes:
        cols = (width - x0 + dx - 1) // dx if width > x0 else 0
        rows = (height - y0 + dy - 1) // dy if height > y0 else 0
        if cols and rows:
            stride = 1 + (cols * bits_per_pixel + 7) // 8
            out.append((offset, rows, stride))
            offset += rows * stride
    return out


def check_png_stream(data: bytes) -> None:
    """Raise ``MediaError`` unless ``data``'s image data is complete and decodable.

    Walks the chunks (each CRC checked) up to IEND, inflates the IDAT stream in
    :data:`INFLATE_PIECE` pieces and checks that it ends, that it holds exactly the
    scanlines IHDR declares, and that each scanline's filter type is one of the five.
    """
    view = memoryview(data)
    size = len(data)
    pos = 8
    header: tuple[int, int, int, int, int] | None = None
    lines: list[tuple[int, int, int]] = []
    expected = 0
    inflate = zlib.decompressobj()
    total = 0
    idat_state = 0  # 0 before IDAT, 1 within the IDAT run, 2 after it
    while True:
        if pos + 12 > size:
            raise _bad("file is truncated")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > size:
            raise _bad(f"file is truncated in a {kind!r} chunk")
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[pos + 4 : end - 4]) != crc:
            raise _bad(f"{kind.decode('latin-1')} chunk CRC mismatch")
        if header is None:
            if kind != b"IHDR" or length != 13:
                raise _bad("does not start with IHDR")
            width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, pos + 8)
            if depth not in _BIT_DEPTHS.get(colour, ()) or interlace > 1:
                raise _bad(f"header is invalid (bit depth {depth}, colour type {colour}, interlace {interlace})")
            header = (width, height, depth, colour, interlace)
            lines = _scanlines(width, height, depth * _CHANNELS[colour], interlace == 1)
            expected = sum(rows * stride for _, rows, stride in lines)
        elif kind == b"IDAT":
            if idat_state == 2:
                raise _bad("IDAT chunks are not consecutive")
            idat_state = 1
            # Fed in slices: zlib copies the input it has not consumed (``unconsumed_tail``)
            # on every call, which for one large IDAT chunk would be quadratic.
            for feed in range(pos + 8, end - 4, INFLATE_FEED):
                piece: bytes | memoryview = view[feed : min(feed + INFLATE_FEED, end - 4)]
                while piece:
                    if inflate.eof:
                        raise _bad("data after the end of the image stream")
                    try:
                        out = inflate.decompress(piece, INFLATE_PIECE)
                    except zlib.error as exc:
                        raise _bad(f"image stream is corrupt ({exc})") from None
                    piece = inflate.unconsumed_tail
                    _check_filters(out, total, lines)
                    total += len(out)
                    if total > expected:
                        raise _bad("image stream holds more data than the image")
        elif kind == b"IEND":
            break
        elif idat_state == 1:
            idat_state = 2
        pos = end
    if idat_state == 0:
        raise _bad("has no image data")
    if not inflate.eof:
        raise _bad("image stream is truncated")
    if total != expected:
        raise _bad(f"image stream ends early ({total} of {expected} bytes)")


def _check_filters(out: bytes, start: int, lines: list[tuple[int, int, int]]) -> None:
    """Every scanline filter-type byte within ``out`` (which begins at stream offset ``start``) is 0-4."""
    stop = start + len(out)
    for offset, rows, stride in lines:
        last = offset + rows * stride
        if last <= start or offset >= stop:
            continue
        first = offset if offset >= start else offset + -(-(start - offset) // stride) * stride
        if first >= min(stop, last):
            continue
        filters = out[first - start : min(stop, last) - start : stride]
        if max(filters) > 4:
            raise _bad(f"scanline filter type {max(filters)} is invalid")


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:80]}" if text else type(exc).__name__
