"""gemini_native against a loopback fake of Gemini ``generateContent`` (real request and error shapes)."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from aiimg.messages import Operation
from aiimg.services.config import Config, config_from_dict
from aiimg.services.domain.errors import ProviderFailure
from aiimg.services.providers.base import InputImage
from aiimg.services.providers.gemini_native import GeminiNativeProvider, image_config

from .fakes.attempt import attempt_context
from .fakes.gemini import FIRST, SECOND, GeminiFake
from .fakes.server import FakeUpstream
from .helpers import png

pytestmark = pytest.mark.anyio

KEY = "g-test-key-1"
KEY2 = "g-test-key-2"


@pytest.fixture(name="fake")
def _fake(upstream: FakeUpstream) -> GeminiFake:
    return GeminiFake(upstream, keys=[KEY, KEY2])


def config_for(api_url: str, **block: Any) -> Config:
    settings = {"api_url": api_url, "api_keys": [KEY], "max_retries": 0, **block}
    return config_from_dict(
        {
            "network": {"allow_private_downloads": True},
            "draw": {"gemini_native": settings},
            "edit": {"gemini_native": settings},
        }
    )


async def run(
    config: Config,
    http: httpx.AsyncClient,
    *,
    op: Operation = "draw",
    provider: GeminiNativeProvider | None = None,
    **kw: Any,
) -> bytes:
    prov = provider or GeminiNativeProvider(config)
    out = await prov.run(attempt_context(config, "gemini_native", http, op=op, **kw))
    return out.data


async def fail(config: Config, http: httpx.AsyncClient, **kw: Any) -> ProviderFailure:
    with pytest.raises(ProviderFailure) as info:
        await run(config, http, **kw)
    return info.value


async def test_draw_sends_key_header_only_and_the_documented_body(
    fake: GeminiFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    data = await run(config_for(upstream.url), http, prompt="a lighthouse")
    assert data == FIRST
    req = upstream.requests[-1]
    assert req.path == "/v1beta/models/gemini-3-pro-image-preview:generateContent"
    assert req.headers["x-goog-api-key"] == KEY and "authorization" not in req.headers
    body = fake.bodies[-1]
    assert body["contents"][0]["role"] == "user"
    [part] = body["contents"][0]["parts"]
    assert "a lighthouse" in part["text"] and "4K" in part["text"]
    assert body["generationConfig"] == {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": {"imageSize": "4K"}}
    assert {s["threshold"] for s in body["safetySettings"]} == {"BLOCK_NONE"}
    assert len(body["safetySettings"]) == 4


async def test_edit_sends_each_input_as_inline_data_after_the_text(
    fake: GeminiFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    first, second = png(40, 30), png(20, 20, (0, 200, 0))
    inputs = [InputImage(first, "image/png"), InputImage(second, "image/png")]
    await run(config_for(upstream.url), http, op="edit", prompt="make it night", output="16:9 2K", inputs=inputs)
    body = fake.bodies[-1]
    text, a, b = body["contents"][0]["parts"]
    assert "make it night" in text["text"] and text["text"].startswith("Re-imagine the attached image")
    assert base64.b64decode(a["inlineData"]["data"]) == first and a["inlineData"]["mimeType"] == "image/png"
    assert base64.b64decode(b["inlineData"]["data"]) == second
    assert body["generationConfig"]["imageConfig"] == {"imageSize": "2K", "aspectRatio": "16:9"}


async def test_block_resolution_is_the_default_image_size(
    fake: GeminiFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    await run(config_for(upstream.url, resolution="2K"), http)
    assert fake.bodies[-1]["generationConfig"]["imageConfig"] == {"imageSize": "2K"}
    await run(config_for(upstream.url, resolution="2K"), http, output="1K")
    assert fake.bodies[-1]["generationConfig"]["imageConfig"] == {"imageSize": "1K"}


@pytest.mark.parametrize(
    ("output", "model", "expected"),
    [
        ("", "gemini-3-pro-image-preview", {"imageSize": "4K"}),
        ("2K", "gemini-3-pro-image-preview", {"imageSize": "2K"}),
        ("1024x1536", "gemini-3-pro-image-preview", {"imageSize": "2K", "aspectRatio": "2:3"}),
        ("3840x2160", "gemini-3-pro-image-preview", {"imageSize": "4K", "aspectRatio": "16:9"}),
        ("9:21", "gemini-3-pro-image-preview", {"imageSize": "4K", "aspectRatio": "9:16"}),
        ("16:9", "gemini-2.5-flash-image", {"aspectRatio": "16:9"}),
        ("4K", "gemini-2.5-flash-image", {}),
    ],
)
def test_output_intent_maps_to_image_config(output: str, model: str, expected: dict[str, str]) -> None:
    assert image_config(output, "4K", model) == expected


def test_unparsable_output_is_a_bad_request() -> None:
    with pytest.raises(ProviderFailure) as info:
        image_config("huge", "4K", "gemini-3-pro-image-preview")
    assert info.value.reason == "bad_request"


@pytest.mark.parametrize("suffix", ["", "/", "/v1beta", "/v1beta/", "/v1beta/models", "/v1beta/models/", "/v1"])
async def test_api_url_variants_never_double_the_path(
    suffix: str, fake: GeminiFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    await run(config_for(upstream.url + suffix, model="gemini-2.5-flash-image"), http)
    assert upstream.requests[-1].path == "/v1beta/models/gemini-2.5-flash-image:generateContent"


async def test_the_last_image_wins_and_thought_images_are_skipped(
    fake: GeminiFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    config = config_for(upstream.url)
    fake.script = ["two_images", "thought_image"]
    assert await run(config, http) == SECOND
    assert await run(config, http) == FIRST


@pytest.mark.parametrize(
    ("scenario", "reason", "status", "retry_after", "fragment"),
    [
        ("prompt_blocked", "content_policy", 0, 0.0, "PROHIBITED_CONTENT"),
        ("image_safety", "content_policy", 0, 0.0, "IMAGE_SAFETY"),
        ("text_only", "no_image", 0, 0.0, "can't create that image"),
        ("no_image", "no_image", 0, 0.0, "NO_IMAGE"),
        ("rate_limited", "rate_limited", 429, 16.0, "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"),
        ("rate_limited_header", "rate_limited", 429, 7.0, "RESOURCE_EXHAUSTED"),
        ("quota_402", "auth", 402, 0.0, "key #1"),
        ("permission_denied", "auth", 403, 0.0, "key #1"),
        ("not_found", "unsupported", 404, 0.0, "NOT_FOUND"),
        ("failed_precondition", "unsupported", 400, 0.0, "FAILED_PRECONDITION"),
        ("overloaded", "upstream_error", 503, 0.0, "UNAVAILABLE"),
        ("internal", "upstream_error", 500, 0.0, "INTERNAL"),
        ("deadline", "timeout", 504, 0.0, "DEADLINE_EXCEEDED"),
        ("error_200", "upstream_error", 503, 0.0, "overloaded"),
        ("html", "invalid_response", 200, 0.0, "HTML"),
    ],
)
async def test_each_failure_has_its_reason(
    scenario: str,
    reason: str,
    status: int,
    retry_after: float,
    fragment: str,
    fake: GeminiFake,
    upstream: FakeUpstream,
    http: httpx.AsyncClient,
) -> None:
    fake.script = [scenario]
    failure = await fail(config_for(upstream.url), http)
    assert (failure.reason, failure.status, failure.retry_after) == (reason, status, retry_after)
    assert fragment in failure.message and failure.message.startswith("gemini_native")


async def test_unknown_model_is_unsupported(fake: GeminiFake, upstream: FakeUpstream, http: httpx.AsyncClient) -> None:
    failure = await fail(config_for(upstream.url, model="gemini-9-imaginary"), http)
    assert failure.reason == "unsupported" and failure.status == 404


async def test_retry_hint_in_the_message_is_used_without_retry_info(
    fake: GeminiFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    fake.retry_delay = "not-a-duration"
    fake.script = ["rate_limited"]
    failure = await fail(config_for(upstream.url), http)
    assert failure.reason == "rate_limited" and failure.retry_after == pytest.approx(16.28)


async def test_keys_rotate_round_robin(fake: GeminiFake, upstream: FakeUpstream, http: httpx.AsyncClient) -> None:
    config = config_for(upstream.url, api_keys=[KEY, KEY2])
    provider = GeminiNativeProvider(config)
    for _ in range(3):
        await run(config, http, provider=provider)
    assert fake.used_keys == [KEY, KEY2, KEY]


async def test_a_rejected_key_hands_the_attempt_to_the_next_key(
    fake: GeminiFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    config = config_for(upstream.url, api_keys=["g-revoked-key-0", KEY])
    assert await run(config, http) == FIRST
    assert fake.used_keys == ["g-revoked-key-0", KEY]


async def test_every_key_rejected_is_auth_by_position_never_value(
    fake: GeminiFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    bad = ["g-revoked-key-0", "g-revoked-key-9"]
    failure = await fail(config_for(upstream.url, api_keys=bad), http)
    assert failure.reason == "auth" and failure.status == 400
    assert "API_KEY_INVALID" in failure.message and "#1" in failure.message and "#2" in failure.message
    assert not any(k in failure.message for k in bad)


async def test_a_key_echoed_back_by_the_upstream_is_scrubbed(
    fake: GeminiFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    fake.script = ["echo_key"]
    failure = await fail(config_for(upstream.url), http)
    assert failure.reason == "bad_request"
    assert KEY not in failure.message and "***" in failure.message


async def test_edit_without_an_image_is_refused_before_any_call(
    fake: GeminiFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    failure = await fail(config_for(upstream.url), http, op="edit")
    assert failure.reason == "bad_request" and not upstream.requests


async def test_use_proxy_sends_the_call_through_proxy_url(http: httpx.AsyncClient) -> None:
    # A FakeUpstream answers absolute-form requests, so it can stand in for an HTTP proxy.
    with FakeUpstream() as proxy:
        fake = GeminiFake(proxy, keys=[KEY])
        config = config_for("http://gemini.invalid", use_proxy=True, proxy_url=proxy.url)
        provider = GeminiNativeProvider(config)
        try:
            assert await run(config, http, provider=provider) == FIRST
        finally:
            await provider.aclose()
    assert fake.used_keys == [KEY]
    assert proxy.requests[-1].path == "/v1beta/models/gemini-3-pro-image-preview:generateContent"
