"""Checks on image bytes (``services/media.py``) and the local renderer's use of the pixel limit.

Every result and every input is fully decoded before it is accepted (a PNG whose zlib
stream is garbage, a truncated JPEG and a WebP with a broken bitstream all pass Pillow's
``verify()``), and the pixel limit is ours (``limits.max_pixels``), never Pillow's
``Image.MAX_IMAGE_PIXELS`` — in either direction: a limit below Pillow's rejects what
Pillow would decode, a limit above it accepts what Pillow would refuse.
"""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, features

from aiimg.services.domain.errors import MediaError, ProviderFailure
from aiimg.services.infra.media import MAX_PIXELS, _small, inspect_image, inspect_media
from aiimg.services.providers._errors import failure_for
from aiimg.services.providers.local import render

from .helpers import (
    bilevel_png,
    photo,
    png,
    png_chunks,
    png_garbage_idat,
    png_header_only,
    png_with_idat,
    webp_broken_bitstream,
)


def _encode(img: Image.Image, fmt: str, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


SOURCE = Image.open(io.BytesIO(photo(200, 150))).convert("RGB")

VALID: dict[str, bytes] = {
    "png rgb": photo(200, 150),
    "png rgba": _encode(SOURCE.convert("RGBA"), "PNG"),
    "png grey": _encode(SOURCE.convert("L"), "PNG"),
    "png grey+alpha": _encode(SOURCE.convert("LA"), "PNG"),
    "png palette": _encode(SOURCE.convert("P"), "PNG"),
    "png 16-bit": _encode(SOURCE.convert("I;16"), "PNG"),
    "png 1-bit": _encode(SOURCE.convert("1"), "PNG"),
    "png odd size 1-bit": bilevel_png(37, 5),
    "jpeg baseline": _encode(SOURCE, "JPEG", quality=90),
    "jpeg progressive": _encode(SOURCE, "JPEG", quality=90, progressive=True),
    "jpeg grey": _encode(SOURCE.convert("L"), "JPEG"),
    "jpeg cmyk": _encode(SOURCE.convert("CMYK"), "JPEG"),
    "webp lossy": _encode(SOURCE, "WEBP", quality=80),
    "webp lossless": _encode(SOURCE, "WEBP", lossless=True),
    "gif": _encode(SOURCE.convert("P"), "GIF"),
    "bmp": _encode(SOURCE, "BMP"),
}


def _interlaced_png() -> bytes:
    """An Adam7-interlaced PNG (Pillow cannot write one): the passes built by hand."""
    w, h = 13, 11  # not a multiple of 8: partial and empty passes
    pixels = SOURCE.resize((w, h)).tobytes()
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    raw = b""
    for x0, y0, dx, dy in passes:
        cols = range(x0, w, dx)
        if not cols:
            continue
        for y in range(y0, h, dy):
            raw += b"\x00" + b"".join(pixels[(y * w + x) * 3 : (y * w + x) * 3 + 3] for x in cols)
    base = png(w, h)
    ihdr = next(p for k, p in png_chunks(base) if k == b"IHDR")
    assert ihdr[8:10] == b"\x08\x02"  # 8-bit RGB
    interlaced = png_with_idat(base, zlib.compress(raw))
    # Flip the IHDR interlace byte (and its CRC) by rebuilding the header chunk.
    ihdr_new = ihdr[:12] + b"\x01"
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr_new + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr_new))
    out = interlaced[:8] + chunk + interlaced[8 + 25 :]
    with Image.open(io.BytesIO(out)) as img:
        img.load()
        assert img.info.get("interlace") == 1 and img.convert("RGB").tobytes() == pixels
    return out


VALID["png interlaced"] = _interlaced_png()
if features.check("avif"):
    VALID["avif"] = _encode(SOURCE, "AVIF")


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_images_pass(name: str) -> None:
    data = VALID[name]
    info = inspect_image(data, min_bytes=0)
    with Image.open(io.BytesIO(data)) as img:
        assert (info.width, info.height) == img.size
    assert info.mime.startswith("image/")


def _short_stream_png() -> bytes:
    """A valid zlib stream that ends after half the rows (Pillow's ``load()`` accepts it)."""
    data = photo(200, 150)
    raw = zlib.decompress(b"".join(p for k, p in png_chunks(data) if k == b"IDAT"))
    return png_with_idat(data, zlib.compress(raw[: len(raw) // 2]))


def _bad_filter_png() -> bytes:
    data = photo(200, 150)
    raw = bytearray(zlib.decompress(b"".join(p for k, p in png_chunks(data) if k == b"IDAT")))
    raw[(200 * 3 + 1) * 70] = 9  # row 70's filter type: there are five (0-4)
    return png_with_idat(data, zlib.compress(bytes(raw)))


def _crc_broken_png() -> bytes:
    data = bytearray(photo(200, 150))
    data[data.index(b"IDAT") + 100] ^= 0xFF
    return bytes(data)


JPEG = _encode(SOURCE, "JPEG", quality=90)
PROGRESSIVE = _encode(SOURCE, "JPEG", quality=90, progressive=True)

BROKEN: dict[str, bytes] = {
    "png garbage IDAT": png_garbage_idat(photo(200, 150)),
    "png truncated file": photo(200, 150)[: len(photo(200, 150)) // 2],
    "png IDAT ends early": _short_stream_png(),
    "png bad filter type": _bad_filter_png(),
    "png chunk CRC": _crc_broken_png(),
    "png header only": png_header_only(200, 150),
    "jpeg truncated 50%": JPEG[: len(JPEG) // 2],
    "jpeg truncated 95%": JPEG[: len(JPEG) * 95 // 100],
    "jpeg progressive truncated": PROGRESSIVE[: len(PROGRESSIVE) // 2],
    "webp broken bitstream": webp_broken_bitstream(_encode(SOURCE, "WEBP", quality=80)),
    "webp truncated": _encode(SOURCE, "WEBP", quality=80)[:3000],
    "gif truncated": _encode(SOURCE.convert("P"), "GIF")[:2000],
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_images_are_invalid_responses(name: str) -> None:
    with pytest.raises(MediaError) as err:
        inspect_media(BROKEN[name])
    assert err.value.kind == "invalid" and failure_for(err.value).reason == "invalid_response", err.value
    print(f"\n{name}: {err.value.message}")


def test_the_broken_samples_fool_verify() -> None:
    """Why a full decode is needed: Pillow's ``verify()`` passes these."""
    for name in ("png garbage IDAT", "jpeg truncated 50%", "webp broken bitstream"):
        with Image.open(io.BytesIO(BROKEN[name])) as img:
            img.verify()


def test_over_the_pixel_limit_is_refused_naming_the_limit() -> None:
    data = bilevel_png(9000, 8000)  # 72 MP: over our 64 MP, under Pillow's own 89 MP
    with pytest.raises(MediaError) as err:
        inspect_image(data)
    assert err.value.kind == "too_large" and failure_for(err.value).reason == "invalid_response"
    assert "9000x8000" in err.value.message and f"limits.max_pixels={MAX_PIXELS}" in err.value.message
    with pytest.raises(MediaError) as err:
        inspect_image(photo(120, 100), max_pixels=100 * 100)
    assert "limits.max_pixels=10000" in err.value.message


def test_a_limit_above_pillows_is_ours() -> None:
    """196 MP passes under a 250 MP limit although Pillow's own bomb check (179 MP) refuses it."""
    before = Image.MAX_IMAGE_PIXELS
    data = bilevel_png(14_000, 14_000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    info = inspect_image(data, max_pixels=250_000_000)
    assert (info.width, info.height) == (14_000, 14_000)
    assert Image.MAX_IMAGE_PIXELS == before  # never changed, not even for a moment


def test_a_bomb_header_is_refused_before_decoding() -> None:
    with pytest.raises(MediaError) as err:
        inspect_image(png_header_only(30_000, 30_000))
    assert "30000x30000" in err.value.message and "limits.max_pixels" in err.value.message


def test_only_images_small_in_bytes_and_in_declared_pixels_are_checked_on_the_event_loop() -> None:
    assert _small(png(64, 64))  # 0.05 ms to check: cheaper than a thread hand-off
    assert not _small(bilevel_png(9000, 8000))  # a few KB that inflate to 72 MP: a thread, always
    assert not _small(png_header_only(30_000, 30_000))
    assert not _small(png(512, 512))  # over INLINE_PIXELS
    assert not _small(b"not an image")


# ---- the local renderer ------------------------------------------------------------------------


def test_local_refuses_an_input_over_the_limit_without_decoding_it() -> None:
    for data, size in ((png_header_only(30_000, 30_000), "30000x30000"), (bilevel_png(9000, 8000), "9000x8000")):
        with pytest.raises(ProviderFailure) as err:
            render("caption", 1024, 1024, data, max_pixels=MAX_PIXELS)
        assert err.value.reason == "bad_request"
        assert size in err.value.message and "limits.max_pixels" in err.value.message


def test_local_output_respects_the_limit() -> None:
    for width, height, limit in ((4096, 4096, 1_000_000), (4096, 1024, 500_000), (1024, 1024, 64 * 64)):
        data, w, h = render("caption", width, height, max_pixels=limit)
        info = inspect_image(data, max_pixels=limit)
        assert (info.width, info.height) == (w, h) and w * h <= limit
        assert abs(w / h - width / height) < 0.05  # the ratio is kept
    # An edit keeps its input's size, which is within the limit.
    data, w, h = render("caption", 4096, 4096, photo(300, 200), max_pixels=300 * 200)
    assert (w, h) == (300, 200)


def test_the_png_check_holds_constant_memory_whatever_the_idat_layout() -> None:
    """One 6 MB IDAT chunk (some encoders write one) costs the check no more than 64 KB ones.

    Measured with tracemalloc (the check's own Python buffers; Pillow is not involved): the
    zlib input is fed in bounded slices, so neither the inflated pieces nor zlib's
    ``unconsumed_tail`` grow with the chunk.
    """
    import tracemalloc

    from aiimg.services.infra.media import INFLATE_PIECE, check_png_stream

    data = photo(2048, 2048)
    single = png_with_idat(data, b"".join(p for k, p in png_chunks(data) if k == b"IDAT"))
    assert len(single) > 6_000_000 and sum(k == b"IDAT" for k, _ in png_chunks(single)) == 1
    peaks = {}
    for name, sample in (("split", data), ("single", single)):
        tracemalloc.start()
        try:
            check_png_stream(sample)
            peaks[name] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    print(f"\nPNG check peak (tracemalloc): {peaks}")
    assert max(peaks.values()) < 3 * INFLATE_PIECE, peaks
