"""A bench-only provider: one httpx POST to an OpenAI-images-style upstream, ``b64_json`` decoded.

The benchmarks use the real ``services.providers.openai_compat`` provider by default
(``--provider real``). This minimal one (``--provider bench``) exists so the suite still
runs if that module is broken, and as a yardstick: it does the least work a provider
can do for this wire format, with no intermediate copies of the body (the base64 text
is located in the raw reply and decoded from a view of it), which shows how much of the
provider actor's time and memory is the provider module's and how much is the actor's.
"""

from __future__ import annotations

import binascii

import httpx

from aiimg.messages import Reason
from aiimg.services.domain.errors import ProviderFailure
from aiimg.services.providers.base import AttemptContext, Output, Provider

__all__ = ("BenchProvider", "bench_provider")

_MARK = b'"b64_json"'


class BenchProvider(Provider):
    alias = "openai_compat"

    async def run(self, ctx: AttemptContext) -> Output:
        settings = ctx.settings
        base = str(getattr(settings, "base_url", "")).rstrip("/")
        keys = list(getattr(settings, "api_keys", []) or [""])
        async with ctx.http.stream(
            "POST",
            f"{base}/images/generations",
            json={"model": getattr(settings, "model", "") or "bench", "prompt": ctx.prompt},
            headers={"Authorization": f"Bearer {keys[0]}"},
            timeout=httpx.Timeout(max(1.0, ctx.remaining())),
        ) as response:
            if response.status_code >= 400:
                reason: Reason = "content_policy" if response.status_code == 400 else "upstream_error"
                raise ProviderFailure(reason, f"{self.alias}: HTTP {response.status_code}", status=response.status_code)
            body = await _read_into_one_buffer(response)
        return Output(data=_b64_json(body, self.alias))


async def _read_into_one_buffer(response: httpx.Response) -> bytearray:
    """The body in one buffer sized from content-length (httpx's ``read`` holds it twice while joining)."""
    length = int(response.headers.get("content-length") or 0)
    if not length:
        return bytearray(await response.aread())
    buf = bytearray(length)
    view = memoryview(buf)
    filled = 0
    async for chunk in response.aiter_raw():
        view[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    view.release()
    if filled != length:
        raise ProviderFailure("invalid_response", "reply shorter than its content-length")
    return buf


def _b64_json(body: bytes | bytearray, label: str) -> bytes:
    """Decode ``data[0].b64_json`` straight out of the raw JSON bytes (no str copies)."""
    at = body.find(_MARK)
    if at < 0:
        raise ProviderFailure("no_image", f"{label}: reply has no b64_json")
    start = body.index(b'"', at + len(_MARK)) + 1
    end = body.index(b'"', start)
    try:
        return binascii.a2b_base64(memoryview(body)[start:end], strict_mode=True)
    except binascii.Error:
        raise ProviderFailure("invalid_response", f"{label}: image data is not valid base64") from None


def bench_provider(alias: str) -> type[Provider]:
    """A :class:`BenchProvider` subclass answering to ``alias``."""
    return type(f"Bench_{alias}", (BenchProvider,), {"alias": alias})
