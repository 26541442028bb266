"""Unbounded inputs and unchecked results (issue 10), at the provider and in the media checks.

The router rejects over-limit requests when they are submitted; these tests check the
defence behind it. Work items are published straight to a provider's dispatch subject
(as a router that skipped its checks, or an older one, would send them), so the
provider actor is the only thing between the request and the upstream:

* more inputs than ``limits.max_inputs``, or declared sizes adding up to more than
  ``limits.max_input_bytes`` (a repeated reference counts every time), end ``bad_request``
  before any blob is read — 300 references to one 4.3 MB blob cost the provider process
  nothing like the 1.3 GB it used to read;
* every input is checked as an image (format, pixel limit, a full decode) and a bad one
  is named by its position;
* every result is checked and fully decoded, whatever the provider claims about it, under
  the one configured pixel limit — for the local renderer's output too.
"""

from __future__ import annotations

import io
import random
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest
from PIL import Image

from aiimg.messages import (
    AttemptDispatched,
    AttemptFailed,
    AttemptSucceeded,
    BlobRef,
    JobCompleted,
    JobFailed,
    Operation,
)
from aiimg.services.app.client import Client
from aiimg.services.app.selfie import ReferenceStore
from aiimg.services.app.stack import Stack, running
from aiimg.services.config import Config, load_config
from aiimg.services.domain.errors import AiimgError
from aiimg.services.infra.blobs import BlobStore
from aiimg.services.infra.bus import Bus, connect
from aiimg.services.infra.media import MediaInfo
from aiimg.services.providers.base import AttemptContext, Output
from aiimg.services.providers.local import LocalProvider
from aiimg.services.providers.openai_compat import OpenAICompatProvider

from ..conftest import make_config
from ..fakes.openai_images import OpenAIImagesFake
from ..fakes.server import FakeUpstream
from ..helpers import (
    ScriptedProvider,
    bilevel_png,
    photo,
    png,
    png_garbage_idat,
    png_header_only,
    succeeding,
    webp_broken_bitstream,
)
from .procs import ServeProcess, write_toml

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(300)]

MiB = 1024 * 1024


def noise_png(width: int, height: int) -> bytes:
    """Incompressible: a PNG of about ``3 × width × height`` bytes."""
    raw = random.Random(10).randbytes(width * height * 3)
    buf = io.BytesIO()
    Image.frombytes("RGB", (width, height), raw).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


async def dispatch(
    bus: Bus, provider: str, inputs: Sequence[BlobRef], *, op: Operation = "edit", output: str = "", timeout: float = 60
) -> AttemptSucceeded | AttemptFailed:
    """Hand ``provider`` one work item directly (no router) and wait for its answer."""
    d = AttemptDispatched(
        job_id=f"{int(time.time() * 1000):x}-{uuid.uuid4().hex[:16]}",
        attempt=1,
        provider=provider,
        op=op,
        prompt="limits",
        inputs=list(inputs),
        output=output,
        deadline=time.time() + timeout,
    )
    await bus.publish(d)
    with anyio.fail_after(timeout):
        while True:
            for _, event in await bus.history(d.job_id):
                if isinstance(event, (AttemptSucceeded, AttemptFailed)):
                    return event
            await anyio.sleep(0.05)


def _proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def _reset_peak(pid: int) -> int:
    """Reset the process's peak RSS (VmHWM) to its current RSS, which is returned (KiB)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _proc_kib(pid, "VmRSS")


# ---- the reported case: 300 references to one 4.3 MB blob ---------------------------------------


async def test_300_references_to_one_big_blob_end_bad_request_without_reading_them(
    nats_url: str, tmp_path: Path
) -> None:
    """The provider runs as its own process (``aiimg serve --only local``), so its peak RSS is its own."""
    path = write_toml(
        tmp_path / "aiimg.toml",
        {
            "data_dir": str(tmp_path / "data"),
            "nats": {"url": nats_url, "prefix": "l" + uuid.uuid4().hex[:10]},
            "retention": {"job_max_age": 3600.0, "blob_max_age": 3600.0},
            "draw": {"provider": "local"},
            "edit": {"provider": "local"},
            "log": {"format": "json"},
        },
    )
    config = load_config(path)
    limit = config.limits.max_input_bytes
    bus = await connect(config)
    await bus.ensure_layout()
    blob = noise_png(1197, 1197)
    assert 4.2e6 < len(blob) < 4.4e6
    local = ServeProcess(path, "local")
    try:
        ref = await BlobStore(bus).put(blob)
        await local.wait_for("provider_started")
        pid = local.proc.pid
        # Warm up the paths a job takes (blob reads, Pillow, the renderer), then measure from here.
        warm = await dispatch(bus, "local", [ref])
        assert isinstance(warm, AttemptSucceeded), warm
        # Within the limits: 15 references to the same blob (64.5 MB declared, under 64 MiB).
        # First, on a heap that has not yet grown, so what it holds shows.
        base = _reset_peak(pid)
        fifteen = await dispatch(bus, "local", [ref] * 15)
        growth_fifteen = (_proc_kib(pid, "VmHWM") - base) * 1024
        base = _reset_peak(pid)
        many = await dispatch(bus, "local", [ref] * 300)
        growth_many = (_proc_kib(pid, "VmHWM") - base) * 1024
        sixteen = await dispatch(bus, "local", [ref] * 16)  # 68.8 MB declared: over
        assert local.alive
    finally:
        local.stop()
        await bus.close()
    print(
        f"\n300 refs × {len(blob) / 1e6:.1f} MB ({300 * len(blob) / 1e9:.2f} GB declared): provider peak RSS "
        f"+{growth_many / MiB:.1f} MiB; 15 refs ({15 * len(blob) / 1e6:.1f} MB, within limits): "
        f"+{growth_fifteen / MiB:.1f} MiB; limits.max_input_bytes = {limit / MiB:.0f} MiB"
    )
    assert isinstance(many, AttemptFailed) and many.reason == "bad_request", many
    assert "limits.max_inputs=16" in many.message
    assert isinstance(sixteen, AttemptFailed) and sixteen.reason == "bad_request", sixteen
    assert f"limits.max_input_bytes={limit}" in sixteen.message
    assert isinstance(fifteen, AttemptSucceeded), fifteen
    # Rejected before a single read: the process did not even hold one blob's worth more.
    assert growth_many < len(blob), f"peak RSS grew by {growth_many / MiB:.1f} MiB"
    # Accepted: never more than max_input_bytes of inputs (the same blob is held once, sent 15 times).
    assert growth_fifteen < limit, f"peak RSS grew by {growth_fifteen / MiB:.1f} MiB"


# ---- count, bytes, and each input checked ---------------------------------------------------------


async def test_inputs_over_the_count_or_byte_limits_never_reach_the_upstream(nats_url: str, tmp_path: Path) -> None:
    config = make_config(nats_url, tmp_path, limits={"max_inputs": 4, "max_input_bytes": 100_000})
    bus = await connect(config)
    await bus.ensure_layout()
    provider = ScriptedProvider(config, "openai_compat", succeeding())
    try:
        async with running(Stack(bus, router=False, providers=[provider])):
            blobs = BlobStore(bus)
            small = await blobs.put(png(64, 48))
            big = await blobs.put(noise_png(110, 110))  # ~36 KB
            assert 30_000 < big.size < 40_000
            five = await dispatch(bus, "openai_compat", [small] * 5)
            bytes_over = await dispatch(bus, "openai_compat", [big] * 3)  # 3 × 36 KB: the repeat counts
            # A declared size the blob does not have is an error of the store, not a way around the limit.
            lying = await dispatch(bus, "openai_compat", [BlobRef(**{**_fields(big), "size": 10})] * 3)
            ok = await dispatch(bus, "openai_compat", [big, big, small, small])
    finally:
        await bus.close()
    assert isinstance(five, AttemptFailed) and five.reason == "bad_request"
    assert five.message == "5 input images exceed limits.max_inputs=4"
    assert isinstance(bytes_over, AttemptFailed) and bytes_over.reason == "bad_request"
    assert f"{3 * big.size} bytes" in bytes_over.message and "limits.max_input_bytes=100000" in bytes_over.message
    assert isinstance(lying, AttemptFailed) and lying.reason == "bad_request" and "input #1" in lying.message
    assert isinstance(ok, AttemptSucceeded), ok
    # Only the job within the limits reached the upstream, with its four inputs (one object per blob).
    assert len(provider.calls) == 1
    sent = provider.calls[0].inputs
    assert [i.mime for i in sent] == ["image/png"] * 4
    assert sent[0].data is sent[1].data and sent[2].data is sent[3].data


def _fields(ref: BlobRef) -> dict[str, object]:
    return {f: getattr(ref, f) for f in ref.__struct_fields__}


async def test_each_input_is_checked_as_an_image_and_named(nats_url: str, tmp_path: Path) -> None:
    config = make_config(nats_url, tmp_path)
    bus = await connect(config)
    await bus.ensure_layout()
    provider = ScriptedProvider(config, "openai_compat", succeeding())
    try:
        async with running(Stack(bus, router=False, providers=[provider])):
            blobs = BlobStore(bus)
            good = await blobs.put(png(64, 48))
            cases = {
                "not an image": await blobs.put(b"<html>" + b"x" * 500),
                "garbage IDAT": await blobs.put(png_garbage_idat(photo(200, 150), 1000)),
                "truncated JPEG": await blobs.put(photo(200, 150, "JPEG")[:3000]),
                "72 MP": await blobs.put(bilevel_png(9000, 8000)),
                "bomb header": await blobs.put(png_header_only(30_000, 30_000)),
            }
            answers = {name: await dispatch(bus, "openai_compat", [good, good, ref]) for name, ref in cases.items()}
    finally:
        await bus.close()
    lines = []
    for name, answer in answers.items():
        assert isinstance(answer, AttemptFailed) and answer.reason == "bad_request", (name, answer)
        assert answer.message.startswith("input #3: "), (name, answer.message)
        lines.append(f"{name}: {answer.message}")
    print("\n" + "\n".join(lines))
    assert "9000x8000" in answers["72 MP"].message and "limits.max_pixels" in answers["72 MP"].message
    assert "30000x30000" in answers["bomb header"].message
    assert provider.calls == []


async def test_local_refuses_a_30000px_input_by_its_header(nats_url: str, tmp_path: Path) -> None:
    config = make_config(nats_url, tmp_path)
    bus = await connect(config)
    await bus.ensure_layout()
    try:
        async with running(Stack(bus, router=False, providers=[LocalProvider(config)])):
            blobs = BlobStore(bus)
            bomb = await dispatch(bus, "local", [await blobs.put(png_header_only(30_000, 30_000))])
            # Decodable, under Pillow's own warning threshold (89 MP), over ours (64 MP).
            big = await dispatch(bus, "local", [await blobs.put(bilevel_png(9000, 8000))])
    finally:
        await bus.close()
    for answer, size in ((bomb, "30000x30000"), (big, "9000x8000")):
        assert isinstance(answer, AttemptFailed) and answer.reason == "bad_request", answer
        assert answer.message == f"input #1: image too large ({size} pixels > limits.max_pixels=67108864)"


# ---- results ------------------------------------------------------------------------------------


async def test_a_provider_cannot_bypass_the_result_check(nats_url: str, tmp_path: Path) -> None:
    """``Output.info`` is a hint: the actor inspects (and fully decodes) every result anyway."""
    config = make_config(nats_url, tmp_path)
    liar_results = [bilevel_png(9000, 8000), png_garbage_idat(photo(300, 200))]

    async def claims_small(ctx: AttemptContext) -> Output:
        return Output(data=liar_results.pop(0), info=MediaInfo("image/png", 300, 200))

    bus = await connect(config)
    await bus.ensure_layout()
    try:
        async with running(Stack(bus, router=False, providers=[ScriptedProvider(config, "grok", claims_small)])):
            over = await dispatch(bus, "grok", [], op="draw")
            garbage = await dispatch(bus, "grok", [], op="draw")
    finally:
        await bus.close()
    assert isinstance(over, AttemptFailed) and over.reason == "invalid_response", over
    assert "9000x8000" in over.message and "limits.max_pixels=67108864" in over.message
    assert isinstance(garbage, AttemptFailed) and garbage.reason == "invalid_response", garbage


def _results() -> dict[str, tuple[bytes, str]]:
    """Served by a loopback OpenAI Images upstream: image bytes → the expected outcome."""
    jpeg = photo(400, 300, "JPEG", quality=90)
    webp = photo(400, 300, "WEBP", quality=80)
    return {
        "png": (photo(400, 300), "ok"),
        "jpeg": (jpeg, "ok"),
        "webp": (webp, "ok"),
        "png, garbage IDAT": (png_garbage_idat(photo(400, 300)), "invalid_response"),
        "jpeg, truncated": (jpeg[: len(jpeg) // 2], "invalid_response"),
        "webp, broken bitstream": (webp_broken_bitstream(webp), "invalid_response"),
        "png, 72 MP": (bilevel_png(9000, 8000), "invalid_response"),
    }


async def test_broken_results_from_an_upstream_are_invalid_responses(nats_url: str, tmp_path: Path) -> None:
    results = _results()
    outcomes: dict[str, JobCompleted | JobFailed] = {}
    with FakeUpstream() as up:
        fake = OpenAIImagesFake(up, keys=["sk-test-1"])
        config = _openai_config(nats_url, tmp_path, up.url)
        bus = await connect(config)
        await bus.ensure_layout()
        try:
            async with running(Stack(bus, providers=[OpenAICompatProvider(config)])):
                client = Client(bus)
                for name, (data, _) in results.items():
                    fake.image = data  # one job at a time: each gets this image
                    end = await client.wait(await client.submit("draw", name), timeout=60)
                    assert isinstance(end, (JobCompleted, JobFailed))
                    outcomes[name] = end
        finally:
            await bus.close()
    lines = []
    for name, (_, expected) in results.items():
        end = outcomes[name]
        if expected == "ok":
            assert isinstance(end, JobCompleted), (name, end)
            lines.append(f"{name}: ok ({end.result.width}x{end.result.height})")
        else:
            assert isinstance(end, JobFailed), (name, end)
            reasons = [(f.reason, f.message) for f in end.failures]
            assert [r for r, _ in reasons] == [expected], (name, reasons)
            lines.append(f"{name}: {reasons[0][0]} ({reasons[0][1]})")
    print("\n" + "\n".join(lines))


def _openai_config(nats_url: str, tmp_path: Path, url: str, **overrides: object) -> Config:
    block = {"base_url": url, "api_keys": ["sk-test-1"], "model": "gpt-image-1", "size": "1024x1024"}
    return make_config(
        nats_url,
        tmp_path,
        draw={"provider": "openai_compat", "openai_compat": {**block, "max_retries": 0}},
        **overrides,
    )


# ---- one pixel limit ----------------------------------------------------------------------------


async def test_the_configured_pixel_limit_is_the_one_limit(nats_url: str, tmp_path: Path) -> None:
    """``limits.max_pixels = 1 MP``: client uploads, selfie references, upstream results and the
    local renderer's output all obey it (they used to obey a 64 MP constant, or nothing)."""
    limit = 1_000_000
    over = photo(1200, 1000)  # 1.2 MP
    under = photo(1000, 1000)
    with FakeUpstream() as up:
        OpenAIImagesFake(up, keys=["sk-test-1"], image=over)
        config = _openai_config(nats_url, tmp_path, up.url, limits={"max_pixels": limit}, edit={"provider": "local"})
        bus = await connect(config)
        await bus.ensure_layout()
        try:
            async with running(Stack(bus, providers=[OpenAICompatProvider(config), LocalProvider(config)])):
                client = Client(bus)
                with pytest.raises(AiimgError, match=r"1200x1000 pixels > limits.max_pixels=1000000"):
                    await client.put_image(over)
                accepted = await client.put_image(under)
                with pytest.raises(AiimgError, match=r"limits.max_pixels=1000000"):
                    await ReferenceStore(bus).replace("bot-1", [over])
                result = await client.wait(await client.submit("draw", "over the limit"), timeout=60)
                # Its configured size (1024x1024) is over the limit: drawn smaller.
                local_end, local_data = await client.result(
                    await client.submit("draw", "local", backend="local"), timeout=60
                )
                # The router refuses an output over the limit; a dispatch that skipped it gets a fitted one.
                asked = await dispatch(bus, "local", [], op="draw", output="2048x1024")
                assert isinstance(asked, AttemptSucceeded), asked
                asked_data = await BlobStore(bus).get(asked.result)
                edit_end, _ = await client.result(
                    await client.submit("edit", "edit", inputs=[accepted], backend="local"), timeout=60
                )
        finally:
            await bus.close()
    assert isinstance(result, JobFailed)
    assert [(f.reason, "limits.max_pixels=1000000" in f.message) for f in result.failures] == [
        ("invalid_response", True)
    ]
    sizes = {}
    for name, data in (("configured 1024x1024", local_data), ("asked 2048x1024", asked_data)):
        with Image.open(io.BytesIO(data)) as img:
            sizes[name] = img.size
    print(
        f"\nlocal draws under a 1 MP limit: {sizes}; edit of 1000x1000: {edit_end.result.width}x{edit_end.result.height}"
    )
    (w, h), (w2, h2) = sizes.values()
    assert w * h <= limit and w == h and w >= 900
    assert (local_end.result.width, local_end.result.height) == (w, h)
    assert w2 * h2 <= limit and w2 == 2 * h2 and w2 >= 1300
    assert (edit_end.result.width, edit_end.result.height) == (1000, 1000)
