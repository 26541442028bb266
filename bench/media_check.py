"""What checking a result costs: ``python -m bench.media_check [--quick] [--json PATH]``.

Every result (and every input) is decoded in full before it is accepted (issue 10:
``verify()`` passed garbage). This measures, on the same machine and in the same run,
the candidate ways to read an image to its end, so the choice in ``services/media.py``
rests on numbers:

* ``verify``   — what was there before: Pillow's ``verify()`` (chunk structure, no decode);
* ``load``     — Pillow's full decode (``load()``): every format, 4 bytes per pixel held;
* ``zlib``     — PNG only: the IDAT zlib stream inflated in 1 MiB pieces and checked
  (CRCs, stream end, exact scanline length, filter types) — ``check_png_stream``;
* ``draft``    — JPEG only: libjpeg decoding at 1/8 scale (every entropy-coded byte read);
* ``inspect``  — ``inspect_image`` as shipped (header + pixel limit + the chosen check).

For each: the median time of several runs (the checks take turns), the peak RSS it adds (measured in a forked
child, Linux), and whether it rejects the broken samples (a garbage IDAT, a PNG stream
that ends early, a truncated JPEG, a WebP with a broken bitstream). Last, the longest stall of an
event loop while a check runs inline in it or on a worker thread — the reason checks
go through ``anyio.to_thread`` (zlib, libjpeg and libwebp release the GIL).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import random
import statistics
import struct
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from PIL import Image

from aiimg.services.infra.media import check_png_stream, inspect_image, open_image, sniff_mime
from aiimg.services.providers.local import render

Check = Callable[[bytes], None]


# ---- samples ----------------------------------------------------------------------------------------


def photo(width: int, height: int) -> Image.Image:
    """Photo-like content (gradient, fractal detail, seeded noise): compresses like a real picture."""
    base = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    detail = Image.effect_mandelbrot((width, height), (-2.0, -1.2, 0.8, 1.2), 64).convert("RGB")
    noise = Image.frombytes("L", (width, height), random.Random(1).randbytes(width * height)).convert("RGB")
    return Image.blend(Image.blend(base, detail, 0.5), noise, 0.25)


def encode(img: Image.Image, fmt: str, **save: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def samples(quick: bool) -> dict[str, bytes]:
    big = 1024 if quick else 4096
    mb = 480 if quick else 812  # ~1 MB as PNG
    photo_big = photo(big, big)
    return {
        f"photo PNG {mb}px": encode(photo(mb, mb), "PNG"),
        f"photo PNG {big}px": encode(photo_big, "PNG"),
        f"local PNG {big}px": render("a red fox in the snow", big, big)[0],
        f"photo JPEG {big}px q90": encode(photo_big, "JPEG", quality=90),
        f"photo WebP {big}px q85": encode(photo_big, "WEBP", quality=85),
    }


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _with_idat(png: bytes, idat: bytes) -> bytes:
    out, pos, placed = png[:8], 8, False
    while pos + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        if kind != b"IDAT":
            out += png[pos : pos + 12 + length]
        elif not placed:
            out += _chunk(b"IDAT", idat)
            placed = True
        pos += 12 + length
    return out


def _idat(png: bytes) -> bytes:
    parts, pos = [], 8
    while pos + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        if kind == b"IDAT":
            parts.append(png[pos + 8 : pos + 8 + length])
        pos += 12 + length
    return b"".join(parts)


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def broken_samples() -> dict[str, bytes]:
    img = photo(400, 300)
    png = encode(img, "PNG")
    stream = _idat(png)
    mid = len(stream) // 2
    jpeg = encode(img, "JPEG", quality=90)
    webp = encode(img, "WEBP", quality=85)
    return {
        "PNG, garbage in IDAT": _with_idat(png, stream[:mid] + random.Random(7).randbytes(4096) + stream[mid + 4096 :]),
        "PNG, stream ends early": _with_idat(png, zlib.compress(_half(zlib.decompress(stream)))),
        "JPEG, truncated": jpeg[: len(jpeg) // 2],
        "WebP, broken bitstream": webp[:30] + random.Random(7).randbytes(200) + webp[230:],
    }


# ---- the candidate checks ------------------------------------------------------------------------------


def verify(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as img:
        img.verify()


def load(data: bytes) -> None:
    with open_image(data, max_pixels=1 << 40) as img:
        img.load()


def zlib_stream(data: bytes) -> None:
    check_png_stream(data)


def draft(data: bytes) -> None:
    with open_image(data, max_pixels=1 << 40) as img:
        w, h = img.size
        img.draft(None, (max(1, w // 8), max(1, h // 8)))
        img.load()


def holds_gil(data: bytes) -> None:
    """Reference for the thread measurement: C-speed work that never releases the GIL."""
    sum(data)


def inspect(data: bytes) -> None:
    inspect_image(data, max_pixels=1 << 40)


CHECKS: dict[str, tuple[Check, tuple[str, ...]]] = {
    "verify": (verify, ("PNG", "JPEG", "WebP")),
    "load": (load, ("PNG", "JPEG", "WebP")),
    "zlib": (zlib_stream, ("PNG",)),
    "draft": (draft, ("JPEG",)),
    "inspect": (inspect, ("PNG", "JPEG", "WebP")),
}


_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WebP"}


def _applies(check: str, data: bytes) -> bool:
    return _FORMATS.get(sniff_mime(data) or "", "") in CHECKS[check][1]


# ---- measuring -------------------------------------------------------------------------------------------


def timings_ms(checks: dict[str, Check], data: bytes, runs: int) -> dict[str, tuple[float, float]]:
    """``(median, min)`` ms per check. The checks take turns run after run, so a neighbour's
    load on a shared machine falls on all of them alike and their ratios stay comparable."""
    for fn in checks.values():
        fn(data)  # warm up (plugin imports, allocator)
    times: dict[str, list[float]] = {name: [] for name in checks}
    for _ in range(runs):
        for name, fn in checks.items():
            t0 = time.perf_counter()
            fn(data)
            times[name].append((time.perf_counter() - t0) * 1000)
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _peak_child(check: str, data: bytes, out: Any) -> None:
    try:
        fn = CHECKS[check][0]
        fn(_tiny(data))  # imports and first-use allocations, on a small image of the same format
        Path("/proc/self/clear_refs").write_text("5")  # peak := current
        base = _status_kib("VmRSS")
        fn(data)
        out.put((_status_kib("VmHWM") - base) / 1024)
    except Exception:
        out.put(None)


def _tiny(data: bytes) -> bytes:
    fmt = _FORMATS.get(sniff_mime(data) or "", "PNG")
    return encode(photo(64, 48), fmt.upper())


def peak_mib(check: str, data: bytes) -> float | None:
    """Peak RSS the check adds, in a fresh interpreter (a fork would inherit memory that the
    parent's earlier runs left resident, and hide the check's own allocation). Linux only."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(check, data, queue))
    proc.start()
    try:
        value = queue.get(timeout=120)
    finally:
        proc.join(timeout=30)
    return None if value is None else float(value)


def rejects(fn: Check, data: bytes) -> bool:
    try:
        fn(data)
    except Exception:
        return True
    return False


async def _stall_ms(fn: Check, data: bytes, threaded: bool) -> float:
    """The longest gap between ticks of an event-loop task (1 ms sleeps) while ``fn(data)`` runs
    inline in the loop or on a worker thread (``anyio.to_thread``)."""
    gaps: list[float] = []
    done = anyio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await anyio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.sleep(0.02)
        if threaded:
            await anyio.to_thread.run_sync(fn, data)
        else:
            fn(data)
        done.set()
    return max(gaps) * 1000


def loop_stalls(fn: Check, data: bytes, runs: int) -> dict[str, float]:
    """Median over ``runs`` of the longest event-loop stall, inline and on a worker thread."""
    out: dict[str, float] = {}
    for mode in ("inline", "thread"):
        out[mode] = round(statistics.median(anyio.run(_stall_ms, fn, data, mode == "thread") for _ in range(runs)), 1)
    return out


# ---- report ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.media_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small images, few runs (seconds, for the smoke test)")
    p.add_argument("--runs", type=int, default=0, help="timed runs per check (default 15, quick 2)")
    p.add_argument("--json", default="", help="also write the figures as JSON to this path")
    args = p.parse_args(argv)
    runs = args.runs or (2 if args.quick else 15)
    print(f"media checks: {os.cpu_count()} cores, Pillow {Image.__version__}, {runs} runs each", flush=True)
    result: dict[str, Any] = {"quick": args.quick, "runs": runs, "samples": {}, "broken": {}, "loop_stall_ms": {}}

    for name, data in samples(args.quick).items():
        w, h = Image.open(io.BytesIO(data)).size
        row: dict[str, Any] = {"bytes": len(data), "pixels": [w, h]}
        parts = []
        applicable = {check: CHECKS[check][0] for check in CHECKS if _applies(check, data)}
        for check, (ms, fastest) in timings_ms(applicable, data, runs).items():
            mib = peak_mib(check, data)
            row[check] = {"ms": round(ms, 2), "min_ms": round(fastest, 2), "peak_mib": mib and round(mib, 1)}
            parts.append(f"{check} {ms:7.1f} ms" + ("" if mib is None else f" {mib:6.1f} MiB"))
        result["samples"][name] = row
        print(f"  {name:24s} {len(data) / 1e6:6.2f} MB  " + " | ".join(parts), flush=True)

    print("rejects broken samples:")
    for name, data in broken_samples().items():
        verdict = {check: rejects(CHECKS[check][0], data) for check in CHECKS if _applies(check, data)}
        result["broken"][name] = verdict
        print(f"  {name:24s} " + "  ".join(f"{c}={'rejects' if r else 'PASSES'}" for c, r in verdict.items()))

    name, data = max(
        ((n, d) for n, d in samples(args.quick).items() if n.startswith("photo PNG")), key=lambda x: len(x[1])
    )
    print(f"longest event-loop stall while checking {name} (median of {runs}):")
    for label, fn in (("inspect", inspect), ("GIL-holding reference", holds_gil)):
        stalls = loop_stalls(fn, data, runs)
        result["loop_stall_ms"][label] = stalls
        print(f"  {label:24s} inline {stalls['inline']:7.1f} ms | worker thread {stalls['thread']:7.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
