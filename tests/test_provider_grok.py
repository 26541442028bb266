"""grok against a loopback fake of the xAI Images API (images mode) and a chat gateway (chat mode)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from aiimg.services.config import Config, config_from_dict
from aiimg.services.domain.errors import ProviderFailure
from aiimg.services.providers.base import InputImage, Output
from aiimg.services.providers.grok import GrokProvider, xai_size_fields

from .fakes.attempt import attempt_context
from .fakes.openai_chat import OpenAIChatFake
from .fakes.server import FakeUpstream
from .fakes.xai import XAIFake
from .helpers import png

pytestmark = pytest.mark.anyio

KEY = "xai-test-1"


@pytest.fixture(name="xai")
def _xai(upstream: FakeUpstream) -> XAIFake:
    return XAIFake(upstream, keys=[KEY, "xai-test-2"])


def grok_config(base_url: str, **block: Any) -> Config:
    settings = {"base_url": base_url, "api_keys": [KEY], "api_mode": "images", "max_retries": 0, **block}
    return config_from_dict(
        {"network": {"allow_private_downloads": True}, "draw": {"grok": settings}, "edit": {"grok": settings}}
    )


async def run(config: Config, http: httpx.AsyncClient, provider: GrokProvider | None = None, **kw: Any) -> Output:
    return await (provider or GrokProvider(config)).run(attempt_context(config, "grok", http, **kw))


async def fails(config: Config, http: httpx.AsyncClient, **kw: Any) -> ProviderFailure:
    with pytest.raises(ProviderFailure) as info:
        await run(config, http, **kw)
    assert KEY not in info.value.message
    return info.value


@pytest.mark.parametrize(
    ("output", "model", "fields"),
    [
        ("16:9 2K", "grok-imagine-image", {"aspect_ratio": "16:9", "resolution": "2k"}),
        ("4096x4096", "grok-imagine-image", {"aspect_ratio": "1:1", "resolution": "2k"}),
        ("1536x1024", "grok-imagine-image", {"aspect_ratio": "3:2", "resolution": "2k"}),
        ("1024x576", "grok-imagine-image", {"aspect_ratio": "16:9", "resolution": "1k"}),
        ("1K", "grok-imagine-image", {"resolution": "1k"}),
        ("21:9", "grok-imagine-image", {"aspect_ratio": "20:9"}),
        ("", "grok-imagine-image", {}),
        ("16:9", "grok-2-image", {}),
    ],
)
def test_xai_size_fields(output: str, model: str, fields: dict[str, str]) -> None:
    assert xai_size_fields(output, model) == fields


# ---- generations -----------------------------------------------------------------------------------------


async def test_generate_sends_ratio_and_resolution_never_size(xai: XAIFake, http: httpx.AsyncClient) -> None:
    config = grok_config(xai.up.url)  # model left empty: grok-imagine-image
    out = await run(config, http, output="16:9 2K", prompt="London collage")
    assert out.data == xai.image
    assert out.source_url.startswith(xai.up.url + "/xai-tmp/xai-tmp-imgen-")
    assert xai.bodies("generations") == [
        {"model": "grok-imagine-image", "prompt": "London collage", "aspect_ratio": "16:9", "resolution": "2k"}
    ]
    (req,) = xai.up.calls("POST", r"/v1/images/generations")
    assert req.headers["authorization"] == f"Bearer {KEY}"


async def test_default_size_block_maps_to_square_2k(xai: XAIFake, http: httpx.AsyncClient) -> None:
    config = grok_config(xai.up.url)  # size 4096x4096
    await run(config, http)
    (body,) = xai.bodies("generations")
    assert (body["aspect_ratio"], body["resolution"]) == ("1:1", "2k") and "size" not in body


async def test_b64_when_configured_through_extra_body(xai: XAIFake, http: httpx.AsyncClient) -> None:
    config = grok_config(xai.up.url, extra_body={"response_format": "b64_json"})
    out = await run(config, http)
    assert out.data == xai.image and out.source_url == ""
    assert xai.up.calls("GET", r"/xai-tmp/.+") == []


async def test_legacy_grok2_model_gets_no_ratio_fields(xai: XAIFake, http: httpx.AsyncClient) -> None:
    config = grok_config(xai.up.url, model="grok-2-image")
    await run(config, http, output="16:9")
    assert xai.bodies("generations") == [{"model": "grok-2-image", "prompt": "a red fox in the snow"}]


# ---- edits (JSON only) -----------------------------------------------------------------------------------------


async def test_edit_one_image_is_a_json_image_object(xai: XAIFake, http: httpx.AsyncClient) -> None:
    config = grok_config(xai.up.url)
    source = png(30, 20)
    out = await run(config, http, op="edit", prompt="pencil sketch", inputs=[InputImage(source, "image/png")])
    assert out.data == xai.image
    (req,) = xai.up.calls("POST", r"/v1/images/edits")
    assert req.headers["content-type"].startswith("application/json")
    body = req.json()
    assert set(body) == {"model", "prompt", "image"}  # no ratio: the output follows the input
    assert body["image"]["type"] == "image_url"
    assert body["image"]["url"].startswith("data:image/png;base64,")


async def test_edit_several_images_use_images_array_capped_at_three(xai: XAIFake, http: httpx.AsyncClient) -> None:
    config = grok_config(xai.up.url)
    images = [InputImage(png(20 + i, 20), "image/png") for i in range(5)]
    await run(config, http, op="selfie", output="9:16", inputs=images)
    (body,) = xai.bodies("edits")
    assert len(body["images"]) == 3 and "image" not in body
    assert body["aspect_ratio"] == "9:16"


# ---- moderation and failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "reason", "words"),
    [
        ("moderated_empty", "no_image", "empty data"),
        ("moderated_flag", "content_policy", "moderation"),
        ("moderated_reason", "content_policy", "flagged"),
        ("bad_key", "auth", "key #1 rejected"),
        ("spending_limit", "auth", "key #1"),
        ("rate_limited", "rate_limited", "429"),
        ("server_error", "upstream_error", "500"),
        ("not_found", "unsupported", "404"),
        ("html", "invalid_response", "HTML"),
        ("malformed", "invalid_response", "malformed"),
    ],
)
async def test_failures_have_their_reason(
    xai: XAIFake, http: httpx.AsyncClient, scenario: str, reason: str, words: str
) -> None:
    xai.mode = scenario
    failure = await fails(grok_config(xai.up.url), http)
    assert failure.reason == reason, failure.message
    assert words in failure.message and "grok" in failure.message


async def test_rate_limit_carries_retry_after(xai: XAIFake, http: httpx.AsyncClient) -> None:
    xai.mode = "rate_limited"
    failure = await fails(grok_config(xai.up.url), http)
    assert failure.retry_after == 3.0


async def test_echoed_bad_key_is_reported_by_position(xai: XAIFake, http: httpx.AsyncClient) -> None:
    keys = ["xai-revoked-1234abcd", "xai-revoked-5678efgh"]
    failure = await fails(grok_config(xai.up.url, api_keys=keys), http)
    assert failure.reason == "auth" and "#1" in failure.message and "#2" in failure.message
    assert all(k not in failure.message for k in keys)


async def test_keys_rotate(xai: XAIFake, http: httpx.AsyncClient) -> None:
    config = grok_config(xai.up.url, api_keys=[KEY, "xai-test-2"])
    provider = GrokProvider(config)
    for _ in range(3):
        await run(config, http, provider)
    auth = [r.headers["authorization"] for r in xai.up.calls("POST", r"/v1/images/generations")]
    assert auth == [f"Bearer {KEY}", "Bearer xai-test-2", f"Bearer {KEY}"]


async def test_multipart_edit_would_be_refused_so_json_is_sent(xai: XAIFake, http: httpx.AsyncClient) -> None:
    # The fake refuses multipart edits, as xAI does; a success proves the provider sent JSON.
    config = grok_config(xai.up.url, edit_image_field="image[]")
    out = await run(config, http, op="edit", inputs=[InputImage(png(), "image/png")] * 2)
    assert out.data == xai.image


async def test_404_parks_generations_only(xai: XAIFake, http: httpx.AsyncClient) -> None:
    config = grok_config(xai.up.url)
    provider = GrokProvider(config)
    xai.script = ["not_found"]
    assert (await _failure(run(config, http, provider))).reason == "unsupported"
    blocked = await _failure(run(config, http, provider))
    assert blocked.reason == "unsupported" and "parked" in blocked.message
    assert len(xai.up.calls("POST", r"/v1/images/generations")) == 1
    await run(config, http, provider, op="edit", inputs=[InputImage(png(), "image/png")])


async def _failure(call: Any) -> ProviderFailure:
    with pytest.raises(ProviderFailure) as info:
        await call
    return info.value


# ---- chat mode ------------------------------------------------------------------------------------------------


async def test_chat_mode_reuses_the_chat_parser(upstream: FakeUpstream, http: httpx.AsyncClient) -> None:
    chat = OpenAIChatFake(upstream, keys=[KEY])
    chat.mode = "parts"
    config = grok_config(upstream.url + "/v1", api_mode="chat", model="grok-4-image")
    out = await run(config, http, op="edit", inputs=[InputImage(png(), "image/png")])
    assert out.data == chat.image
    (body,) = chat.bodies()
    assert body["model"] == "grok-4-image"
    assert [p["type"] for p in body["messages"][0]["content"]] == ["text", "image_url"]


async def test_chat_mode_needs_a_model(upstream: FakeUpstream, http: httpx.AsyncClient) -> None:
    config = grok_config(upstream.url, api_mode="chat")
    failure = await fails(config, http)
    assert failure.reason == "bad_request" and upstream.requests == []


def test_grok_defaults_are_the_v3_ones() -> None:
    block = config_from_dict({}).draw.grok
    assert (block.base_url, block.api_mode, block.size) == ("https://api.x.ai/v1", "chat", "4096x4096")
