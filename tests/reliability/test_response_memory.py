"""What an upstream's body may cost: the response cap counts *decoded* bytes, and a body at
the cap costs about the cap.

A hostile upstream can answer ``Content-Encoding: gzip`` with 1 MB on the wire that
inflates to 1 GiB (or ``gzip, gzip``: 2 KB → 1 GiB), or with plain bodies right at the
cap. Each read runs in a child process (``memory_child.py``) with the actor's own clients
against a loopback server here, and reports its peak RSS growth; the figures are printed
(``-s``) and compared with the cap of that same run:

* every bomb (gzip, deflate, ``gzip, gzip``, through ``get``, ``send_read`` and
  ``download``) ends as ``invalid_response`` and costs at most ``K`` × cap;
* a plain body of exactly the cap (declared length or not) and a gzip body inflating to
  exactly the cap are read whole and cost at most ``K`` × cap;
* a legitimate gzip answer (and a gzip-served image) still completes a job end to end.

``K`` is the bound ``docs/operations.md`` states for reading one answer.
"""

from __future__ import annotations

import base64
import gzip
import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiimg.services.app.client import Client
from aiimg.services.app.stack import Stack, running
from aiimg.services.config import config_from_dict
from aiimg.services.infra.bus import connect
from aiimg.services.infra.http import response_cap
from aiimg.services.providers.openai_compat import OpenAICompatProvider

from ..conftest import make_config
from ..fakes.server import FakeUpstream, Reply, Request
from ..helpers import png

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024
MAX_BLOB = 48 * MB
CAP = response_cap(config_from_dict({"retention": {"max_blob_bytes": MAX_BLOB}}))
"""65 MiB: the cap of an actor whose blobs may be 48 MiB."""
K = 1.1
"""Reading one answer costs at most K × the cap (docs/operations.md, Sizing)."""
BOMB = 1024 * MB
"""What each bomb inflates to."""
RESULT = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * ((MAX_BLOB - 8) // 256)
"""A result of about the largest storable size (not a real PNG: the provider does not decode it)."""
K_ATTEMPT = 2.0
"""A whole attempt on such an answer — read, parse, decode base64 — costs at most K_ATTEMPT × cap."""


def _raw_deflate_of_zeros(total: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(MB)
    out = [packer.compress(zeros) for _ in range(total // MB)]
    out.append(packer.flush())
    return b"".join(out)


def _checksums_of_zeros(total: int) -> tuple[int, int]:
    crc, adler, zeros = 0, 1, bytes(MB)
    for _ in range(total // MB):
        crc, adler = zlib.crc32(zeros, crc), zlib.adler32(zeros, adler)
    return crc, adler


@pytest.fixture(scope="module", name="bombs")
def _bombs() -> dict[str, bytes]:
    """1 GiB of zeros as gzip and as zlib-wrapped deflate (~1 MB each), and gzip of the gzip (~2 KB)."""
    raw = _raw_deflate_of_zeros(BOMB)
    crc, adler = _checksums_of_zeros(BOMB)
    as_gzip = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + raw + struct.pack("<II", crc, BOMB & 0xFFFFFFFF)
    as_zlib = b"\x78\xda" + raw + struct.pack(">I", adler)
    return {"gzip": as_gzip, "deflate": as_zlib, "gzip, gzip": gzip.compress(as_gzip, 9)}


@pytest.fixture(scope="module", name="server")
def _server(bombs: dict[str, bytes]) -> Iterator[FakeUpstream]:
    body = b"y" * CAP
    gzipped_body = gzip.compress(body, 1)

    def unsized() -> Iterator[bytes]:  # no content-length: read until the connection closes
        view = memoryview(body)
        for start in range(0, len(body), MB):
            yield bytes(view[start : start + MB])

    with FakeUpstream() as up:
        up.route("GET", r"/warm", lambda r: Reply(200, b'{"ok": true}', {"content-type": "application/json"}))
        small_gzip = gzip.compress(b'{"ok": true}')
        up.route("GET", r"/warm-gzip", lambda r: Reply(200, small_gzip, {"content-encoding": "gzip"}))
        up.route("GET", r"/plain", lambda r: Reply(200, body))
        up.route("GET", r"/unsized", lambda r: Reply(200, unsized()))
        up.route("GET", r"/gzip-at-cap", lambda r: Reply(200, gzipped_body, {"content-encoding": "gzip"}))
        # The largest storable result as b64_json: a JSON answer just under the cap.
        answer = b'{"created": 1, "data": [{"b64_json": "' + base64.b64encode(RESULT) + b'"}]}'
        assert len(answer) <= CAP
        up.route("POST", r"/v1/images/generations", lambda r: Reply(200, answer, {"content-type": "application/json"}))
        for name, data in bombs.items():
            path = "/bomb-" + name.replace(", ", "-")
            up.route("GET", path, lambda r, d=data, n=name: Reply(200, d, {"content-encoding": n}))  # type: ignore[misc]
        yield up


def _measure(server: FakeUpstream, mode: str, path: str) -> dict[str, object]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.reliability.memory_child",
            mode,
            server.url + path,
            str(MAX_BLOB),
            server.url + "/warm",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["cap"] == CAP
    print(
        f"\n{mode} {path}: {result['outcome']}, peak RSS growth {int(result['peak']) / MB:.1f} MiB "  # type: ignore[call-overload]
        f"= {result['factor']} x cap ({CAP / MB:.0f} MiB)"
    )
    return result


@pytest.mark.parametrize(
    ("mode", "path"),
    [
        ("get", "/bomb-gzip"),
        ("send_read", "/bomb-gzip"),
        ("download", "/bomb-gzip"),
        ("get", "/bomb-deflate"),
        ("download", "/bomb-deflate"),
        ("get", "/bomb-gzip-gzip"),
        ("download", "/bomb-gzip-gzip"),
    ],
)
def test_a_compression_bomb_is_refused_within_the_cap(server: FakeUpstream, mode: str, path: str) -> None:
    result = _measure(server, mode, path)
    assert result["outcome"] == "invalid_response", result
    assert float(result["factor"]) <= K, result  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mode", "path"),
    [
        ("get", "/plain"),
        ("send_read", "/plain"),
        ("download", "/plain"),
        ("get", "/unsized"),
        ("send_read", "/unsized"),
        ("download", "/unsized"),
        ("get", "/gzip-at-cap"),
        ("download", "/gzip-at-cap"),
    ],
)
def test_a_body_at_the_cap_is_read_whole_for_about_the_cap(server: FakeUpstream, mode: str, path: str) -> None:
    result = _measure(server, mode, path)
    assert result["outcome"] == f"ok {CAP}", result
    assert float(result["factor"]) <= K, result  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_gzip_answers_and_gzip_images_still_work_end_to_end(nats_url: str, tmp_path: Path) -> None:
    """A real provider in a real actor: a gzip JSON answer (b64_json) and a gzip-served image URL
    are decoded once, by the capped transport, and the jobs complete with the exact image."""
    image = png(80, 60, (3, 140, 200))
    with FakeUpstream() as up:
        answers = {
            "inline": {"created": 1, "data": [{"b64_json": base64.b64encode(image).decode()}]},
            "by-url": {"created": 1, "data": [{"url": f"{up.url}/files/out.png"}]},
        }

        def generate(req: Request) -> Reply:
            body = json.dumps(answers[req.json()["prompt"]]).encode()
            return Reply(200, gzip.compress(body), {"content-type": "application/json", "content-encoding": "gzip"})

        up.route("POST", r"/v1/images/generations", generate)
        up.route(
            "GET",
            r"/files/out.png",
            lambda r: Reply(200, gzip.compress(image), {"content-type": "image/png", "content-encoding": "gzip"}),
        )
        block = {"base_url": up.url, "api_keys": ["sk-test-1"], "model": "gpt-image-1", "max_retries": 0}
        config = make_config(
            nats_url,
            tmp_path,
            draw={"provider": "openai_compat", "openai_compat": block},
            network={"allow_private_downloads": True},
        )
        bus = await connect(config)
        await bus.ensure_layout()
        try:
            async with running(Stack(bus, providers=[OpenAICompatProvider(config)])):
                client = Client(bus)
                for prompt in answers:
                    _, data = await client.result(await client.submit("draw", prompt), timeout=30)
                    assert data == image, prompt
        finally:
            await bus.close()
    assert {r.headers.get("accept-encoding") for r in up.requests} == {"gzip, deflate"}
    assert [r.path for r in up.requests] == ["/v1/images/generations", "/v1/images/generations", "/files/out.png"]


def test_a_whole_attempt_on_the_largest_answer_costs_about_twice_the_cap(server: FakeUpstream) -> None:
    """Reading is one part; the provider then decodes the base64 (¾ of the body) while the body is held."""
    result = _measure(server, "provider", "/v1/images/generations")
    assert result["outcome"] == f"ok {len(RESULT)}", result
    assert float(result["factor"]) <= K_ATTEMPT, result  # type: ignore[arg-type]
