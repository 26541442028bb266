"""Real media files that carry text where gateways put it: PNG text chunks, JPEG comments and
EXIF, WebP EXIF/XMP, GIF comments, MP4 ``udta`` boxes, WebM tags, bytes after the end.

Built with Pillow (images) or by hand from the container specs (MP4, WebM), so the scanner
in ``services.redaction`` is tested on the files a decoder accepts.
"""

from __future__ import annotations

import io
import os
import random
import struct

from PIL import Image, PngImagePlugin

__all__ = (
    "bmp",
    "gif_with_comment",
    "jpeg_with",
    "mp4_with_udta",
    "noise_image",
    "png_with_text",
    "webm_with_tags",
    "webp_with",
)


def noise_image(width: int, height: int, seed: int = 7) -> Image.Image:
    """Incompressible pixels, so a file's size is its pixel payload (as a photo's nearly is)."""
    rng = random.Random(seed)
    return Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))


def png_with_text(
    text: str = "",
    *,
    kind: str = "tEXt",
    size: tuple[int, int] = (64, 48),
    trailing: bytes = b"",
    image: Image.Image | None = None,
) -> bytes:
    """A PNG with ``text`` in a ``tEXt`` / ``zTXt`` / ``iTXt`` (compressed) chunk, then ``trailing``."""
    img = image or Image.new("RGB", size, (30, 120, 200))
    info = PngImagePlugin.PngInfo()
    if text:
        if kind == "tEXt":
            info.add_text("comment", text)
        elif kind == "zTXt":
            info.add_text("comment", text, zip=True)
        elif kind == "iTXt":
            info.add_itxt("comment", text, lang="en", tkey="comment", zip=True)
        else:
            raise ValueError(kind)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info, compress_level=1)
    return buf.getvalue() + trailing


def jpeg_with(
    *,
    comment: str = "",
    description: str = "",
    xp_comment: str = "",
    trailing: bytes = b"",
    image: Image.Image | None = None,
    quality: int = 90,
) -> bytes:
    """A JPEG with a COM segment, EXIF ``ImageDescription`` and/or ``XPComment`` (UTF-16)."""
    img = image or Image.new("RGB", (64, 48), (200, 60, 20))
    exif = Image.Exif()
    if description:
        exif[0x010E] = description
    if xp_comment:
        exif[0x9C9C] = xp_comment.encode("utf-16-le") + b"\0\0"
    buf = io.BytesIO()
    kwargs: dict[str, object] = {"quality": quality}
    if comment:
        kwargs["comment"] = comment.encode()
    if len(exif):
        kwargs["exif"] = exif.tobytes()
    img.save(buf, format="JPEG", **kwargs)
    return buf.getvalue() + trailing


def webp_with(*, exif_text: str = "", xmp: str = "", trailing: bytes = b"") -> bytes:
    img = Image.new("RGB", (64, 48), (20, 160, 60))
    kwargs: dict[str, object] = {"quality": 80}
    if exif_text:
        exif = Image.Exif()
        exif[0x010E] = exif_text
        kwargs["exif"] = exif.tobytes()
    if xmp:
        kwargs["xmp"] = xmp.encode()
    buf = io.BytesIO()
    img.save(buf, format="WEBP", **kwargs)
    data = buf.getvalue()
    return data + trailing


def gif_with_comment(comment: str = "", trailing: bytes = b"") -> bytes:
    img = Image.new("P", (64, 48), 3)
    buf = io.BytesIO()
    if comment:
        img.save(buf, format="GIF", comment=comment.encode())
    else:
        img.save(buf, format="GIF")
    return buf.getvalue() + trailing


def bmp(trailing: bytes = b"") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (9, 9, 9)).save(buf, format="BMP")
    return buf.getvalue() + trailing


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def mp4_with_udta(comment: str = "", *, media_bytes: int = 4096, media: bytes | None = None) -> bytes:
    """``ftyp``, ``moov`` (``mvhd`` and, with ``comment``, ``udta/©cmt``), ``mdat``."""
    ftyp = _box(b"ftyp", b"isom" + (0x200).to_bytes(4, "big") + b"isomiso2avc1mp41")
    mvhd = _box(b"mvhd", bytes(4) + bytes(8) + (1000).to_bytes(4, "big") * 2 + bytes(80))
    moov = mvhd
    if comment:
        text = comment.encode()
        moov += _box(b"udta", _box(b"\xa9cmt", struct.pack(">HH", len(text), 0) + text))
    payload = media if media is not None else os.urandom(media_bytes)
    return ftyp + _box(b"moov", moov) + _box(b"mdat", payload)


def _ebml(element: int, payload: bytes) -> bytes:
    ident = element.to_bytes((element.bit_length() + 7) // 8, "big")
    return ident + (0x01 << 56 | len(payload)).to_bytes(8, "big") + payload


def webm_with_tags(tag: str = "", *, cluster: bytes = b"\0" * 64) -> bytes:
    """EBML header, then a Segment holding Info, (Tags with ``tag``) and one Cluster."""
    header = _ebml(0x1A45DFA3, _ebml(0x4282, b"webm"))
    body = _ebml(0x1549A966, _ebml(0x2AD7B1, (1000000).to_bytes(3, "big")))
    if tag:
        simple = _ebml(0x67C8, _ebml(0x45A3, b"COMMENT") + _ebml(0x4487, tag.encode()))
        body += _ebml(0x1254C367, _ebml(0x7373, simple))
    body += _ebml(0x1F43B675, _ebml(0xE7, b"\x00") + _ebml(0xA3, cluster))
    return header + _ebml(0x18538067, body)
