"""ark against a loopback fake of Volcengine Ark's Seedream ``images/generations``."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from aiimg.messages import Operation
from aiimg.services.config import Config, config_from_dict
from aiimg.services.domain.errors import ProviderFailure
from aiimg.services.providers.ark import ArkProvider, build_body, pick_size
from aiimg.services.providers.base import InputImage

from .fakes.ark import IMAGE, MODELS, ArkFake
from .fakes.attempt import attempt_context
from .fakes.server import FakeUpstream
from .helpers import png

pytestmark = pytest.mark.anyio

KEY = "ark-test-1"
KEY2 = "ark-test-2"
V40, V45, V50 = "doubao-seedream-4-0-250828", "doubao-seedream-4-5-251128", "doubao-seedream-5-0-260128"


@pytest.fixture(name="fake")
def _fake(upstream: FakeUpstream) -> ArkFake:
    return ArkFake(upstream, keys=[KEY, KEY2])


def config_for(base_url: str, **block: Any) -> Config:
    settings = {"base_url": base_url, "api_keys": [KEY], "max_retries": 0, **block}
    return config_from_dict(
        {"network": {"allow_private_downloads": True}, "draw": {"ark": settings}, "edit": {"ark": settings}}
    )


async def run(
    config: Config, http: httpx.AsyncClient, *, op: Operation = "draw", provider: ArkProvider | None = None, **kw: Any
) -> bytes:
    prov = provider or ArkProvider(config)
    return (await prov.run(attempt_context(config, "ark", http, op=op, **kw))).data


async def fail(config: Config, http: httpx.AsyncClient, **kw: Any) -> ProviderFailure:
    with pytest.raises(ProviderFailure) as info:
        await run(config, http, **kw)
    return info.value


async def test_draw_sends_the_seedream_body_without_watermark(
    fake: ArkFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    assert await run(config_for(upstream.url + "/api/v3"), http, prompt="狗狗趴在草地上") == IMAGE
    req = upstream.calls("POST", r"/api/v3/images/generations")[-1]
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert fake.bodies[-1] == {
        "model": V40,
        "prompt": "狗狗趴在草地上",
        "size": "4K",
        "response_format": "b64_json",
        "watermark": False,
    }
    assert not fake.watermarked()


async def test_url_results_are_downloaded(fake: ArkFake, upstream: FakeUpstream, http: httpx.AsyncClient) -> None:
    config = config_for(upstream.url + "/api/v3", response_format="url")
    out = await ArkProvider(config).run(attempt_context(config, "ark", http))
    assert out.data == IMAGE and out.source_url == f"{upstream.url}/files/seedream-1.png"


async def test_edit_sends_inputs_as_lowercase_data_urls(
    fake: ArkFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    first, second = png(40, 30), png(20, 20, (0, 0, 255))
    inputs = [InputImage(first, "image/PNG"), InputImage(second, "image/png")]
    await run(config_for(upstream.url + "/api/v3"), http, op="edit", inputs=inputs)
    images = fake.bodies[-1]["image"]
    assert isinstance(images, list) and len(images) == 2
    assert all(i.startswith("data:image/png;base64,") for i in images)
    assert [base64.b64decode(i.split(",", 1)[1]) for i in images] == [first, second]


async def test_legacy_seededit_gets_one_image_string_and_a_pixel_size(http: httpx.AsyncClient) -> None:
    config = config_for("https://ark.invalid/api/v3", model="doubao-seededit-3-0-i2i-250628")
    ctx = attempt_context(config, "ark", http, op="edit", inputs=[InputImage(png(), "image/png")], output="2K")
    body = build_body(ctx, ctx.settings)  # type: ignore[arg-type]
    assert isinstance(body["image"], str) and body["image"].startswith("data:image/png;base64,")
    assert body["size"] == "2048x2048"


async def test_extra_body_adds_fields_but_cannot_replace_ours(
    fake: ArkFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    extra = {"optimize_prompt_options": {"mode": "standard"}, "watermark": True, "model": "other"}
    await run(config_for(upstream.url + "/api/v3", extra_body=extra), http)
    body = fake.bodies[-1]
    assert body["optimize_prompt_options"] == {"mode": "standard"}
    assert body["watermark"] is False and body["model"] == V40


@pytest.mark.parametrize(
    ("output", "default", "model", "expected"),
    [
        ("", "4K", V40, "4K"),
        ("2K", "4K", V40, "2K"),
        ("4096", "4K", V40, "4K"),
        ("1K", "4K", V45, "2K"),
        ("3K", "4K", V40, "4K"),
        ("3K", "4K", V50, "3K"),
        ("", "3K", V50, "3K"),
        ("16:9", "4K", V40, "4096x2304"),
        ("16:9 2K", "4K", V40, "2048x1152"),
        ("2048x1152", "4K", V40, "2048x1152"),
        ("640x480", "4K", V40, "1109x832"),
        ("1024x1024", "4K", V45, "1920x1920"),
        ("8192x8192", "4K", V40, "4096x4096"),
        ("2K", "4K", "doubao-seedream-3-0-t2i-250415", "2048x2048"),
        ("1K", "4K", "doubao-seedream-3-0-t2i-250415", "1024x1024"),
    ],
)
def test_size_intent_maps_to_what_the_model_takes(output: str, default: str, model: str, expected: str) -> None:
    assert pick_size(output, default, model) == expected


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("output", ["", "1K", "2K", "4K", "16:9", "9:16 1K", "640x480", "8192x4096", "21:9"])
async def test_every_size_we_send_is_accepted(
    model: str, output: str, fake: ArkFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    assert await run(config_for(upstream.url + "/api/v3", model=model), http, output=output) == IMAGE


@pytest.mark.parametrize("base", ["/api/v3", "/api/v3/", "/api/v3/images/generations", "/api/v3/images/generations/"])
async def test_base_url_variants(base: str, fake: ArkFake, upstream: FakeUpstream, http: httpx.AsyncClient) -> None:
    await run(config_for(upstream.url + base), http)
    assert upstream.requests[-1].path == "/api/v3/images/generations"


@pytest.mark.parametrize(
    ("scenario", "reason", "status", "retry_after", "fragment"),
    [
        ("input_sensitive", "content_policy", 400, 0.0, "InputTextSensitiveContentDetected"),
        ("output_sensitive", "content_policy", 400, 0.0, "OutputImageSensitiveContentDetected"),
        ("item_sensitive", "content_policy", 200, 0.0, "OutputImageSensitiveContentDetected"),
        ("rate_limited", "rate_limited", 429, 3.0, "EndpointRPMExceeded"),
        ("overdue", "quota_exhausted", 403, 0.0, "account overdue"),
        ("model_not_open", "unsupported", 404, 0.0, "ModelNotOpen"),
        ("overloaded", "upstream_error", 500, 0.0, "服务负载高"),
        ("empty", "no_image", 0, 0.0, "no image"),
    ],
)
async def test_each_failure_has_its_reason(
    scenario: str,
    reason: str,
    status: int,
    retry_after: float,
    fragment: str,
    fake: ArkFake,
    upstream: FakeUpstream,
    http: httpx.AsyncClient,
) -> None:
    fake.script = [scenario]
    failure = await fail(config_for(upstream.url + "/api/v3"), http)
    assert (failure.reason, failure.status, failure.retry_after) == (reason, status, retry_after)
    assert fragment in failure.message and failure.message.startswith("ark")


async def test_unknown_model_is_unsupported(fake: ArkFake, upstream: FakeUpstream, http: httpx.AsyncClient) -> None:
    failure = await fail(config_for(upstream.url + "/api/v3", model="ep-20250101-nope"), http)
    assert failure.reason == "unsupported" and failure.status == 404


async def test_keys_rotate_and_a_rejected_key_fails_over(
    fake: ArkFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    config = config_for(upstream.url + "/api/v3", api_keys=[KEY, KEY2])
    provider = ArkProvider(config)
    for _ in range(3):
        await run(config, http, provider=provider)
    assert fake.used_keys == [KEY, KEY2, KEY]
    fake.used_keys.clear()
    await run(config_for(upstream.url + "/api/v3", api_keys=["ark-revoked-0", KEY2]), http)
    assert fake.used_keys == ["ark-revoked-0", KEY2]


async def test_rejected_keys_are_reported_by_position_never_value(
    fake: ArkFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    failure = await fail(config_for(upstream.url + "/api/v3", api_keys=["ark-revoked-0"]), http)
    assert failure.reason == "auth" and failure.status == 401 and "key #1" in failure.message
    assert "ark-revoked-0" not in failure.message


async def test_a_key_echoed_back_is_scrubbed(fake: ArkFake, upstream: FakeUpstream, http: httpx.AsyncClient) -> None:
    fake.script = ["echo_key"]
    failure = await fail(config_for(upstream.url + "/api/v3"), http)
    assert failure.reason == "bad_request" and KEY not in failure.message and "***" in failure.message


async def test_too_many_inputs_fail_before_any_call(
    fake: ArkFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    inputs = [InputImage(png(), "image/png")] * 15
    failure = await fail(config_for(upstream.url + "/api/v3"), http, op="edit", inputs=inputs)
    assert failure.reason == "bad_request" and "14" in failure.message and not upstream.requests
