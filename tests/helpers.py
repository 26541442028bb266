"""Test helpers: providers defined for tests on the real provider seam, and small utilities."""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from PIL import Image

from aiimg.messages import Reason
from aiimg.services.config import Config
from aiimg.services.domain.errors import ProviderFailure
from aiimg.services.providers.base import AttemptContext, Output, Provider


def png(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


class ScriptedProvider(Provider):
    """A provider for runtime tests whose behaviour is a plain async function.

    It runs through the real ProviderActor (NATS, blobs, heartbeats); only the upstream
    call is replaced, as a provider module for a new upstream would replace it.
    """

    def __init__(self, config: Config, alias: str, behaviour: Callable[[AttemptContext], Awaitable[Output]]) -> None:
        super().__init__(config)
        self.alias = alias  # type: ignore[misc]
        self.behaviour = behaviour
        self.calls: list[AttemptContext] = []

    async def run(self, ctx: AttemptContext) -> Output:
        self.calls.append(ctx)
        return await self.behaviour(ctx)


def failing(
    reason: Reason, message: str = "scripted failure", retry_after: float = 0.0
) -> Callable[[AttemptContext], Awaitable[Output]]:
    async def run(ctx: AttemptContext) -> Output:
        raise ProviderFailure(reason, message, retry_after=retry_after)

    return run


def succeeding(
    delay: float = 0.0, color: tuple[int, int, int] = (10, 120, 200)
) -> Callable[[AttemptContext], Awaitable[Output]]:
    async def run(ctx: AttemptContext) -> Output:
        if delay:
            await anyio.sleep(delay)
        return Output(data=png(96, 64, color))

    return run


# ---- images that are cheap to build at any size, and broken ones -------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bilevel_png(width: int, height: int) -> bytes:
    """A valid, fully decodable 1-bit PNG of ``width``×``height`` (all black).

    Costs ``height`` rows of ``width/8`` bytes to compress and a few KB to hold, whatever its
    pixel count: a 30000×30000 image is ~110 KB, a 9000×8000 one ~9 KB.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    rows_per_piece = max(1, (1 << 20) // len(row))
    parts: list[bytes] = []
    for start in range(0, height, rows_per_piece):
        parts.append(z.compress(row * min(rows_per_piece, height - start)))
    parts.append(z.flush())
    idat = b"".join(parts)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width``×``height`` but carries one tiny IDAT: costs nothing to send."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
        + b"\0" * 200
    )


def photo(width: int, height: int, fmt: str = "PNG", **save: Any) -> bytes:
    """Deterministic photo-like content (gradient, fractal detail, noise) encoded as ``fmt``."""
    base = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    detail = Image.effect_mandelbrot((width, height), (-2.0, -1.2, 0.8, 1.2), 64).convert("RGB")
    noise = Image.frombytes("L", (width, height), random.Random(width * height).randbytes(width * height))
    noise = noise.convert("RGB")
    img = Image.blend(Image.blend(base, detail, 0.5), noise, 0.25)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """``[(type, payload), …]`` of a PNG."""
    out: list[tuple[bytes, bytes]] = []
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        out.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def png_with_idat(data: bytes, idat: bytes) -> bytes:
    """``data`` with its image data replaced by ``idat`` (one IDAT chunk, correct CRCs)."""
    out = data[:8]
    placed = False
    for kind, payload in png_chunks(data):
        if kind == b"IDAT":
            if not placed:
                out += _png_chunk(b"IDAT", idat)
                placed = True
        else:
            out += _png_chunk(kind, payload)
    return out


def png_garbage_idat(data: bytes, size: int = 4096) -> bytes:
    """``data`` with ``size`` random bytes in the middle of its zlib stream (chunk CRCs still valid)."""
    stream = b"".join(p for k, p in png_chunks(data) if k == b"IDAT")
    mid = len(stream) // 2
    garbage = random.Random(7).randbytes(size)
    return png_with_idat(data, stream[:mid] + garbage + stream[mid + size :])


def webp_broken_bitstream(data: bytes) -> bytes:
    """A lossy WebP whose first VP8 partition is overwritten with random bytes (container intact)."""
    assert data[12:16] == b"VP8 ", "expects a simple lossy WebP"
    start = 20 + 10  # RIFF header, VP8 chunk header, frame tag + start code + dimensions
    return data[:start] + random.Random(7).randbytes(200) + data[start + 200 :]
