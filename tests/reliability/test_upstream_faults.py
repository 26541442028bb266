"""Upstream faults: every broken answer ends as a typed failure within its timeout.

The real ``openai_compat`` provider runs in a real ProviderActor (NATS, blobs, heartbeats)
against loopback upstreams that misbehave: hang without a byte, reset the connection
mid-body, drip the body slowly, answer 200 with truncated base64, HTML or nothing, serve
images of 0×0, 1×1 and 30,000×30,000 pixels (a decompression bomb), or a 200 MB body —
both as the JSON answer itself and as the image URL it names. After all of them the same
actor still serves a normal job, and the process's peak memory did not grow by anything
like the 200 MB it was offered.
"""

from __future__ import annotations

import base64
import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiimg.messages import AttemptFailed, JobCompleted, JobFailed
from aiimg.services.app.client import Client
from aiimg.services.app.stack import Stack, running
from aiimg.services.infra.bus import Bus, connect
from aiimg.services.providers.openai_compat import OpenAICompatProvider

from ..conftest import make_config
from ..fakes.server import FakeUpstream, Reply, Request, json_reply
from ..helpers import png

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(300)]

KEY = "sk-test-faults-1"
TIMEOUT = 4.0
"""The provider block's timeout: every fault must end within it (plus scheduling slack)."""
MB = 1024 * 1024


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width``×``height`` but carries one tiny IDAT: costs nothing to send."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"") + b"\0" * 200


def noise_png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.frombytes("RGB", (width, height), bytes((i * 7919) % 251 for i in range(width * height * 3))).save(
        buf, format="PNG"
    )
    return buf.getvalue()


def b64_reply(data: bytes) -> Reply:
    return json_reply({"created": int(time.time()), "data": [{"b64_json": base64.b64encode(data).decode()}]})


def huge_json_body(total: int) -> Iterator[bytes]:
    """A 200 answer of ``total`` bytes, streamed: ``{"data":[{"b64_json":"AAAA…"}]}``."""
    yield b'{"data":[{"b64_json":"'
    block = b"A" * MB
    for _ in range(total // MB):
        yield block
    yield b'"}]}'


def huge_binary(total: int) -> Iterator[bytes]:
    block = b"\x89PNG" + b"\0" * (MB - 4)
    for _ in range(total // MB):
        yield block


def slow_drip() -> Iterator[bytes]:
    yield b'{"data":[{"b64_json":"'
    for _ in range(200):
        time.sleep(0.25)
        yield b"A"


class ResettingServer:
    """Answers 200 with a long Content-Length, sends part of the body, then resets (RST) the connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.hits = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                while len(rest) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
                    b'{"data":[{"b64_json":"AAAA'
                )
                time.sleep(0.1)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def close(self) -> None:
        self.sock.close()


FAULTS: dict[str, set[str]] = {
    "hang": {"timeout"},
    "reset": {"network"},
    "drip": {"timeout"},
    "truncated_b64": {"invalid_response"},
    "html": {"invalid_response"},
    "empty": {"invalid_response"},
    "zero_pixels": {"invalid_response", "no_image"},
    "one_pixel": {"no_image"},
    "bomb": {"invalid_response"},
    "huge_json": {"invalid_response"},
    "huge_download": {"invalid_response"},
}
"""Fault → the typed reasons that are a correct answer to it."""


def fault_upstream(resetter: ResettingServer) -> FakeUpstream:
    upstream = FakeUpstream()
    good = png(80, 60)
    noisy = noise_png(64, 64)  # large enough that half of it is not a "placeholder"
    truncated = base64.b64encode(noisy).decode()[: len(base64.b64encode(noisy)) // 2]

    def generate(req: Request) -> Reply:
        fault = req.json()["prompt"]
        match fault:
            case "hang":
                return Reply(200, b"{}", {"content-type": "application/json"}, delay=TIMEOUT * 3)
            case "drip":
                return Reply(200, slow_drip(), {"content-type": "application/json"})
            case "truncated_b64":
                return json_reply({"data": [{"b64_json": truncated}]})
            case "html":
                return Reply(
                    200, b"<!DOCTYPE html><html><body>Bad gateway</body></html>", {"content-type": "text/html"}
                )
            case "empty":
                return Reply(200, b"", {"content-type": "application/json"})
            case "zero_pixels":
                return b64_reply(png_header_only(0, 0))
            case "one_pixel":
                return b64_reply(png(1, 1))
            case "bomb":
                return b64_reply(png_header_only(30_000, 30_000))
            case "huge_json":
                return Reply(200, huge_json_body(200 * MB), {"content-type": "application/json"})
            case "huge_download":
                return json_reply({"data": [{"url": f"{upstream.url}/files/huge.png"}]})
            case _:
                return b64_reply(good)

    upstream.route("POST", r"/v1/images/generations", generate)
    upstream.route(
        "GET", r"/files/huge.png", lambda req: Reply(200, huge_binary(200 * MB), {"content-type": "image/png"})
    )
    return upstream


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


async def test_each_upstream_fault_is_a_typed_failure_and_the_actor_keeps_serving(
    nats_url: str, tmp_path: Path
) -> None:
    resetter = ResettingServer()
    with fault_upstream(resetter) as upstream:
        block = {
            "base_url": upstream.url,
            "api_keys": [KEY],
            "model": "gpt-image-1",
            "size": "64x64",
            "timeout": TIMEOUT,
            "max_retries": 0,
        }
        config = make_config(
            nats_url,
            tmp_path,
            draw={"provider": "openai_compat", "openai_compat": block},
            network={"allow_private_downloads": True, "download_max_bytes": 16 * MB, "download_timeout": TIMEOUT},
            retention={"max_blob_bytes": 16 * MB},
            policy={"timeout_grace": 5.0},
            actors={"ack_wait": 2.0},
        )
        reset_config = make_config(
            nats_url,
            tmp_path,
            draw={"provider": "openai_compat", "openai_compat": {**block, "base_url": resetter.url}},
        )
        bus: Bus = await connect(config)
        await bus.ensure_layout()
        try:
            provider = OpenAICompatProvider(config)
            async with running(Stack(bus, providers=[provider])) as stack:
                client = Client(bus)
                _reset_peak_rss()
                base_rss = _rss_kib("VmRSS")
                jobs = {}
                for fault in FAULTS:
                    if fault == "reset":
                        continue
                    jobs[fault] = await client.submit("draw", fault)
                ends = {}
                with anyio.fail_after(TIMEOUT * 6 + 30):
                    for fault, job_id in jobs.items():
                        ends[fault] = await client.wait(job_id)
                peak_growth_mib = (_rss_kib("VmHWM") - base_rss) / 1024
                # The same actor, after all of that: a normal job.
                final, data = await client.result(await client.submit("draw", "fine"), timeout=30)
                assert stack.providers[0].consumer.handled >= len(jobs) + 1
        finally:
            await bus.close()
        # The reset fault needs its own upstream address: the same provider class, a second stack.
        reset_bus = await connect(reset_config)
        await reset_bus.ensure_layout()
        try:
            async with running(Stack(reset_bus, providers=[OpenAICompatProvider(reset_config)])):
                ends["reset"] = await Client(reset_bus).wait(
                    await Client(reset_bus).submit("draw", "reset"), timeout=30
                )
            reset_events = [e for _, e in await reset_bus.history(ends["reset"].job_id)]
        finally:
            await reset_bus.close()
            resetter.close()
        events: dict[str, list[Any]] = {
            f: [e for _, e in await _history(config, e.job_id)] for f, e in ends.items() if f != "reset"
        }
        events["reset"] = reset_events

    assert isinstance(final, JobCompleted) and data[:4] == b"\x89PNG"
    lines = []
    for fault, accepted in FAULTS.items():
        end = ends[fault]
        assert isinstance(end, JobFailed), (fault, end)
        failed = [e for e in events[fault] if isinstance(e, AttemptFailed)]
        assert len(failed) == 1, (fault, failed)
        attempt = failed[0]
        lines.append(f"{fault}={attempt.reason} ({attempt.elapsed_ms} ms: {attempt.message[:60]})")
        assert attempt.reason in accepted, (fault, attempt.reason, attempt.message)
        assert attempt.elapsed_ms <= (TIMEOUT + 3) * 1000, (fault, attempt.elapsed_ms)
        assert attempt.message, fault
    print("\nupstream faults: " + "; ".join(lines) + f"; peak RSS growth {peak_growth_mib:.0f} MiB")
    assert resetter.hits == 1
    # Offered 2 × 200 MB, the process never held anything close to it.
    assert peak_growth_mib < 100, f"peak RSS grew by {peak_growth_mib:.0f} MiB"


async def _history(config: object, job_id: str) -> list[tuple[int, object]]:
    bus = await connect(config)  # type: ignore[arg-type]
    try:
        return await bus.history(job_id)  # type: ignore[return-value]
    finally:
        await bus.close()


def test_fault_images_are_what_they_claim() -> None:
    from PIL import Image

    bomb = png_header_only(30_000, 30_000)
    assert struct.unpack(">II", bomb[16:24]) == (30_000, 30_000) and len(bomb) < 1024
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bomb))
    with Image.open(io.BytesIO(png(1, 1))) as img:
        assert img.size == (1, 1)


async def test_the_actor_http_client_caps_declared_and_streamed_bodies(nats_url: str, tmp_path: Path) -> None:
    from aiimg.services.actors.provider import ProviderActor
    from aiimg.services.domain.errors import ResponseTooLarge
    from aiimg.services.infra.http import response_cap
    from aiimg.services.providers._errors import failure_for

    config = make_config(nats_url, tmp_path, retention={"max_blob_bytes": 3 * MB})
    cap = response_cap(config)
    assert cap == 4 * MB + MB  # the largest blob, base64-encoded, plus 1 MiB
    bus = await connect(config)
    try:
        actor = ProviderActor(bus, OpenAICompatProvider(config))
        with FakeUpstream() as up:
            up.route("GET", r"/declared", lambda r: Reply(200, b"x" * (cap + 1)))
            up.route("GET", r"/streamed", lambda r: Reply(200, huge_binary(8 * MB)))
            up.route("GET", r"/fits", lambda r: Reply(200, b"y" * cap))
            for path in ("/declared", "/streamed"):
                with pytest.raises(ResponseTooLarge) as err:
                    await actor.http.get(up.url + path)
                failure = failure_for(err.value)
                assert failure.reason == "invalid_response" and "exceeds" in failure.message
            assert len((await actor.http.get(up.url + "/fits")).content) == cap
        await actor.http.aclose()
    finally:
        await bus.close()
