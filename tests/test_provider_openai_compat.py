"""openai_compat / gemini_openai against a loopback fake of the OpenAI Images API (and chat mode)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from aiimg.messages import AttemptFailed, JobCompleted
from aiimg.services.app.cli import format_trace
from aiimg.services.app.client import Client
from aiimg.services.app.stack import Stack, running
from aiimg.services.config import Config, config_from_dict
from aiimg.services.domain.errors import ProviderFailure
from aiimg.services.infra.bus import connect
from aiimg.services.providers._common import Cooldown, normalize_openai_base
from aiimg.services.providers.base import InputImage, Output
from aiimg.services.providers.local import LocalProvider
from aiimg.services.providers.openai_compat import (
    GeminiOpenAIProvider,
    OpenAICompatBase,
    OpenAICompatProvider,
    resolve_size,
)

from .conftest import make_config
from .fakes.attempt import attempt_context
from .fakes.openai_chat import OpenAIChatFake
from .fakes.openai_images import GPT_IMAGE_SIZES, OpenAIImagesFake
from .fakes.server import FakeUpstream, json_reply
from .helpers import png

pytestmark = pytest.mark.anyio

KEY = "sk-test-1"


@pytest.fixture(name="fake")
def _fake(upstream: FakeUpstream) -> OpenAIImagesFake:
    return OpenAIImagesFake(upstream, keys=[KEY, "sk-test-2"])


def config_for(base_url: str, alias: str = "openai_compat", **block: Any) -> Config:
    settings = {"base_url": base_url, "api_keys": [KEY], "model": "gpt-image-1", "max_retries": 0, **block}
    return config_from_dict(
        {
            "network": {"allow_private_downloads": True},
            "draw": {alias: settings},
            "edit": {alias: settings},
        }
    )


async def run(provider: OpenAICompatBase, config: Config, http: httpx.AsyncClient, **kw: Any) -> Output:
    return await provider.run(attempt_context(config, provider.alias, http, **kw))


async def fails(provider: OpenAICompatBase, config: Config, http: httpx.AsyncClient, **kw: Any) -> ProviderFailure:
    with pytest.raises(ProviderFailure) as info:
        await run(provider, config, http, **kw)
    return info.value


# ---- sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "default", "expected"),
    [
        ("4K", "4096x4096", "4096x4096"),
        ("2k", "4096x4096", "2048x2048"),
        ("1K", "4096x4096", "1024x1024"),
        ("1536x1024", "4096x4096", "1536x1024"),
        ("16:9", "4096x4096", "4096x2304"),
        ("16:9", "1024x1024", "1024x576"),
        ("9:16 2K", "4096x4096", "1152x2048"),
        ("", "1536x1024", "1536x1024"),
        ("", "2K", "2048x2048"),
        ("", "auto", "auto"),
    ],
)
def test_resolve_size(output: str, default: str, expected: str) -> None:
    assert resolve_size(output, default) == expected


def test_resolve_size_rejects_junk() -> None:
    with pytest.raises(ProviderFailure) as info:
        resolve_size("huge", "4096x4096")
    assert info.value.reason == "bad_request"


# ---- generations ----------------------------------------------------------------------------------


async def test_generate_b64_sends_only_model_prompt_size_and_extra_body(
    fake: OpenAIImagesFake, http: httpx.AsyncClient
) -> None:
    config = config_for(fake.up.url, extra_body={"quality": "high", "background": "auto"})
    out = await run(OpenAICompatProvider(config), config, http, output="1K", prompt="a red fox")
    assert out.data == fake.image and out.source_url == ""
    (req,) = fake.posts("generations")
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.json() == {
        "model": "gpt-image-1",
        "prompt": "a red fox",
        "size": "1024x1024",
        "quality": "high",
        "background": "auto",
    }


async def test_url_result_is_downloaded_from_the_upstream(fake: OpenAIImagesFake, http: httpx.AsyncClient) -> None:
    fake.mode = "url"
    config = config_for(fake.up.url)
    out = await run(OpenAICompatProvider(config), config, http, output="2K")
    assert out.data == fake.image
    assert out.source_url.startswith(fake.up.url + "/files/img-")
    assert len(fake.up.calls("GET", r"/files/.+")) == 1


async def test_configured_size_is_used_without_an_output_intent(
    fake: OpenAIImagesFake, http: httpx.AsyncClient
) -> None:
    config = config_for(fake.up.url, size="1536x1024")
    await run(OpenAICompatProvider(config), config, http)
    assert fake.sizes_sent() == ["1536x1024"]


async def test_ratio_output_becomes_a_concrete_size(fake: OpenAIImagesFake, http: httpx.AsyncClient) -> None:
    fake.sizes = frozenset({"1024x576"})
    config = config_for(fake.up.url, size="1024x1024")
    await run(OpenAICompatProvider(config), config, http, output="16:9")
    assert fake.sizes_sent() == ["1024x576"]


# ---- 4K → 2K ----------------------------------------------------------------------------------


async def test_4k_refused_is_retried_once_at_2k(fake: OpenAIImagesFake, http: httpx.AsyncClient) -> None:
    config = config_for(fake.up.url)  # default size 4096x4096; the fake refuses it
    out = await run(OpenAICompatProvider(config), config, http)
    assert out.data == fake.image
    assert fake.sizes_sent() == ["4096x4096", "2048x2048"]


async def test_2k_refused_again_is_reported_after_exactly_one_retry(
    fake: OpenAIImagesFake, http: httpx.AsyncClient
) -> None:
    fake.sizes = GPT_IMAGE_SIZES - {"2048x2048"}
    config = config_for(fake.up.url)
    failure = await fails(OpenAICompatProvider(config), config, http)
    assert fake.sizes_sent() == ["4096x4096", "2048x2048"]
    assert failure.reason == "bad_request" and failure.status == 400
    assert "2048x2048" in failure.message and "openai_compat" in failure.message


async def test_4k_ratio_refused_is_retried_once_at_2k_same_ratio(
    fake: OpenAIImagesFake, http: httpx.AsyncClient
) -> None:
    fake.sizes = GPT_IMAGE_SIZES | {"2048x1152"}
    config = config_for(fake.up.url)
    out = await run(OpenAICompatProvider(config), config, http, output="16:9")
    assert out.data == fake.image
    assert fake.sizes_sent() == ["4096x2304", "2048x1152"]


async def test_other_400_at_4k_is_not_retried(fake: OpenAIImagesFake, http: httpx.AsyncClient) -> None:
    fake.mode = "moderation"
    config = config_for(fake.up.url)
    failure = await fails(OpenAICompatProvider(config), config, http)
    assert failure.reason == "content_policy"
    assert fake.sizes_sent() == ["4096x4096"]


async def test_edit_4k_refused_is_retried_once_at_2k(fake: OpenAIImagesFake, http: httpx.AsyncClient) -> None:
    config = config_for(fake.up.url)
    out = await run(OpenAICompatProvider(config), config, http, op="edit", inputs=[InputImage(png(), "image/png")])
    assert out.data == fake.image
    assert fake.sizes_sent("edits") == ["4096x4096", "2048x2048"]


# ---- failure reasons ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "reason", "status"),
    [
        ("moderation", "content_policy", 400),
        ("policy", "content_policy", 400),
        ("unauthorized", "auth", 401),
        ("forbidden", "auth", 403),
        ("not_found", "unsupported", 404),
        ("rate_limited", "rate_limited", 429),
        ("quota", "quota_exhausted", 429),
        ("server_error", "upstream_error", 500),
        ("html", "invalid_response", 200),
        ("malformed", "invalid_response", 200),
        ("error_200", "upstream_error", 200),
        ("empty", "no_image", 0),
        ("blank_item", "no_image", 0),
        ("bad_b64", "invalid_response", 0),
    ],
)
async def test_each_failure_has_its_reason(
    fake: OpenAIImagesFake, http: httpx.AsyncClient, scenario: str, reason: str, status: int
) -> None:
    fake.mode = scenario
    config = config_for(fake.up.url)
    failure = await fails(OpenAICompatProvider(config), config, http, output="1K")
    assert failure.reason == reason, failure.message
    assert failure.status == status
    assert KEY not in failure.message
    assert "openai_compat" in failure.message
    assert len(fake.posts("generations")) == 1  # no hidden retries


async def test_rate_limit_carries_retry_after(fake: OpenAIImagesFake, http: httpx.AsyncClient) -> None:
    fake.mode = "rate_limited"
    config = config_for(fake.up.url)
    failure = await fails(OpenAICompatProvider(config), config, http, output="1K")
    assert failure.retry_after == 7.0


# ---- keys ---------------------------------------------------------------------------------------------


async def test_keys_rotate_per_attempt(fake: OpenAIImagesFake, http: httpx.AsyncClient) -> None:
    config = config_for(fake.up.url, api_keys=["sk-test-1", "sk-test-2"])
    provider = OpenAICompatProvider(config)
    for _ in range(3):
        await run(provider, config, http, output="1K")
    assert [r.headers["authorization"] for r in fake.posts("generations")] == [
        "Bearer sk-test-1",
        "Bearer sk-test-2",
        "Bearer sk-test-1",
    ]


async def test_rejected_key_is_named_by_position_and_the_next_key_serves(
    fake: OpenAIImagesFake, http: httpx.AsyncClient
) -> None:
    config = config_for(fake.up.url, api_keys=["sk-revoked-9f8e7d", "sk-test-2"])
    out = await run(OpenAICompatProvider(config), config, http, output="1K")
    assert out.data == fake.image
    assert [r.headers["authorization"] for r in fake.posts("generations")] == [
        "Bearer sk-revoked-9f8e7d",
        "Bearer sk-test-2",
    ]


async def test_every_key_rejected_reports_positions_never_values(
    fake: OpenAIImagesFake, http: httpx.AsyncClient
) -> None:
    keys = ["sk-revoked-aaaa1111", "sk-revoked-bbbb2222"]
    config = config_for(fake.up.url, api_keys=keys)
    failure = await fails(OpenAICompatProvider(config), config, http, output="1K")
    assert failure.reason == "auth"
    assert "#1" in failure.message and "#2" in failure.message
    # The fake echoes each key whole in its 401 body; neither may leak.
    assert all(k not in failure.message for k in keys)
    assert "sk-revoked" not in failure.message


async def test_key_echoed_in_another_error_body_is_stripped(upstream: FakeUpstream, http: httpx.AsyncClient) -> None:
    upstream.route(
        "POST",
        r"/v1/images/generations",
        lambda req: json_reply(
            {"error": {"message": f"Bad request from {req.headers['authorization'][7:]}: prompt too long"}}, 400
        ),
    )
    config = config_for(upstream.url)
    failure = await fails(OpenAICompatProvider(config), config, http, output="1K")
    assert failure.reason == "bad_request"
    assert KEY not in failure.message and "key #1" in failure.message


async def test_no_key_is_an_auth_failure_without_a_call(upstream: FakeUpstream, http: httpx.AsyncClient) -> None:
    config = config_for(upstream.url, api_keys=[])
    failure = await fails(OpenAICompatProvider(config), config, http)
    assert failure.reason == "auth" and upstream.requests == []


# ---- base URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "suffix"),
    [
        ("/v1", ""),  # bare domain
        ("/v1", "/v1"),
        ("/v1", "/v1/"),
        ("/v1", "/v1/images/generations"),  # a pasted endpoint
        ("/v1", "/v1/chat/completions"),
        ("/openai/v1", "/openai/v1/images"),
        ("/api/v1", "/api"),
        # Roots that already name a version get no /v1 (issue 11: Google's was a 404).
        ("/v1beta/openai", "/v1beta/openai"),  # Google's OpenAI-compatible root
        ("/v1beta/openai", "/v1beta/openai/"),
        ("/v1beta/openai", "/v1beta/openai/images/generations"),
        ("/api/paas/v4", "/api/paas/v4"),  # Zhipu-style
        ("/api/v3", "/api/v3"),
        ("/compatible-mode/v2alpha1", "/compatible-mode/v2alpha1"),
    ],
)
@pytest.mark.parametrize("alias", ["openai_compat", "gemini_openai"])
async def test_base_url_variants_reach_the_same_endpoint(
    upstream: FakeUpstream, http: httpx.AsyncClient, prefix: str, suffix: str, alias: str
) -> None:
    fake = OpenAIImagesFake(upstream, prefix=prefix)
    config = config_for(upstream.url + suffix, alias)
    provider = OpenAICompatProvider(config) if alias == "openai_compat" else GeminiOpenAIProvider(config)
    out = await run(provider, config, http, output="1K")
    assert out.data == fake.image
    assert [r.path for r in upstream.requests] == [f"{prefix}/images/generations"]


@pytest.mark.parametrize(("prefix", "suffix"), [("", ""), ("/gateway", "/gateway/"), ("/v1/v1", "/v1/v1")])
async def test_base_url_exact_uses_the_root_as_given(
    upstream: FakeUpstream, http: httpx.AsyncClient, prefix: str, suffix: str
) -> None:
    fake = OpenAIImagesFake(upstream, prefix=prefix)
    config = config_for(upstream.url + suffix, base_url_exact=True)
    out = await run(OpenAICompatProvider(config), config, http, output="1K")
    assert out.data == fake.image
    assert [r.path for r in upstream.requests] == [f"{prefix}/images/generations"]


@pytest.mark.parametrize(
    ("given", "root"),
    [
        (
            "https://generativelanguage.googleapis.com/v1beta/openai/",
            "https://generativelanguage.googleapis.com/v1beta/openai",
        ),
        ("https://open.bigmodel.cn/api/paas/v4", "https://open.bigmodel.cn/api/paas/v4"),
        ("https://h:8443/relay", "https://h:8443/relay/v1"),
        ("https://h/v2ray", "https://h/v2ray/v1"),  # not a version segment
        ("https://h/v1/chat/completions", "https://h/v1"),
    ],
)
def test_normalize_openai_base(given: str, root: str) -> None:
    assert normalize_openai_base(given) == root
    assert normalize_openai_base(given, exact=True) == given.rstrip("/")


# ---- edits ---------------------------------------------------------------------------------------------


async def test_edit_with_one_image_sends_image_part_and_extra_fields(
    fake: OpenAIImagesFake, http: httpx.AsyncClient
) -> None:
    config = config_for(fake.up.url, extra_body={"quality": "high", "stream": False, "meta": {"a": 1}})
    source = png(40, 30)
    out = await run(
        OpenAICompatProvider(config), config, http, op="edit", output="1K", inputs=[InputImage(source, "image/png")]
    )
    assert out.data == fake.image
    (req,) = fake.posts("edits")
    form = req.form()
    assert [(f[0], f[1], f[2]) for f in form["image"]] == [("input_1.png", source, "image/png")]
    assert "image[]" not in form
    fields = {k: v[0][1].decode() for k, v in form.items() if k != "image"}
    assert fields == {
        "model": "gpt-image-1",
        "prompt": "a red fox in the snow",
        "size": "1024x1024",
        "quality": "high",
        "stream": "false",
        "meta": '{"a": 1}',
    }


async def test_edit_with_several_images_uses_image_array(fake: OpenAIImagesFake, http: httpx.AsyncClient) -> None:
    config = config_for(fake.up.url)
    images = [InputImage(png(30, 30, (i * 60, 0, 0)), "image/png") for i in range(3)]
    await run(OpenAICompatProvider(config), config, http, op="edit", output="1K", inputs=images)
    form = fake.posts("edits")[0].form()
    assert [f[1] for f in form["image[]"]] == [img.data for img in images]
    assert "image" not in form


async def test_repeated_image_field_setting_for_gitee_style_gateways(
    fake: OpenAIImagesFake, http: httpx.AsyncClient
) -> None:
    images = [InputImage(png(30, 30), "image/png"), InputImage(png(20, 20), "image/png")]
    config = config_for(fake.up.url, edit_image_field="image")
    # OpenAI itself refuses repeated plain `image` parts…
    failure = await fails(OpenAICompatProvider(config), config, http, op="edit", output="1K", inputs=images)
    assert failure.reason == "bad_request" and "Duplicate parameter" in failure.message
    # …a gateway that takes them gets both.
    fake.repeated_image_ok = True
    await run(OpenAICompatProvider(config), config, http, op="edit", output="1K", inputs=images)
    assert len(fake.posts("edits")[-1].form()["image"]) == 2


async def test_supports_edit_false_never_calls_the_upstream(upstream: FakeUpstream, http: httpx.AsyncClient) -> None:
    config = config_for(upstream.url, supports_edit=False)
    failure = await fails(
        OpenAICompatProvider(config), config, http, op="edit", inputs=[InputImage(png(), "image/png")]
    )
    assert failure.reason == "unsupported" and "supports_edit" in failure.message
    assert upstream.requests == []


async def test_edit_without_input_is_a_bad_request(upstream: FakeUpstream, http: httpx.AsyncClient) -> None:
    config = config_for(upstream.url)
    failure = await fails(OpenAICompatProvider(config), config, http, op="edit")
    assert failure.reason == "bad_request" and upstream.requests == []


# ---- 404 cool-down ---------------------------------------------------------------------------------------


class FakeClock:
    """The cool-down's clock, so it is tested without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


async def test_404_parks_the_operation_and_blocked_calls_do_not_renew_it(
    fake: OpenAIImagesFake, http: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    config = config_for(fake.up.url, not_found_cooldown=600.0)
    provider = OpenAICompatProvider(config)
    provider.images.cooldown = Cooldown(clock=clock.monotonic)  # shared by images and chat mode
    fake.script = ["not_found"]
    first = await fails(provider, config, http, output="1K")
    assert first.reason == "unsupported" and first.status == 404
    assert len(fake.posts("generations")) == 1

    for offset in (1.0, 300.0, 599.0):  # blocked calls inside the window: no HTTP, and no renewal
        clock.now = 1000.0 + offset
        blocked = await fails(provider, config, http, output="1K")
        assert blocked.reason == "unsupported" and "parked" in blocked.message
        assert "404" in blocked.message  # names why, yet does not re-arm (unlike the old plugin)
    assert len(fake.posts("generations")) == 1

    # Edits are a different operation and still go through.
    await run(provider, config, http, op="edit", output="1K", inputs=[InputImage(png(), "image/png")])

    clock.now = 1000.0 + 601.0  # the original window has passed: had a blocked call renewed it, this would fail
    out = await run(provider, config, http, output="1K")
    assert out.data == fake.image
    assert len(fake.posts("generations")) == 2
    clock.now += 1.0  # success cleared the parking: the next call goes out at once
    await run(provider, config, http, output="1K")
    assert len(fake.posts("generations")) == 3


# ---- chat mode through openai_compat / gemini_openai -----------------------------------------------------------


async def test_chat_mode_generate_uses_the_old_template_and_hint(
    upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    chat = OpenAIChatFake(upstream)
    config = config_for(upstream.url, api_mode="chat", model="gemini-2.5-flash-image", size="2048x2048")
    out = await run(OpenAICompatProvider(config), config, http, prompt="a cat")
    assert out.data == chat.image
    (body,) = chat.bodies()
    assert body == {
        "model": "gemini-2.5-flash-image",
        "messages": [
            {
                "role": "user",
                "content": "a cat\n\nReturn ONLY one markdown image in the format:\n![](data:image/png;base64,...)"
                " Output size target: 2048x2048.",
            }
        ],
    }


async def test_gemini_openai_chat_edit_sends_text_then_one_data_url_per_image(
    upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    chat = OpenAIChatFake(upstream)
    chat.mode = "images_field"
    config = config_for(
        upstream.url + "/v1/chat/completions",
        alias="gemini_openai",
        api_mode="chat",
        model="google/gemini-2.5-flash-image",
        extra_body={"modalities": ["image", "text"]},
    )
    images = [InputImage(png(30, 20), "image/png"), InputImage(b"\xff\xd8\xff" + b"j" * 200, "image/jpeg")]
    out = await run(
        GeminiOpenAIProvider(config), config, http, op="edit", prompt="make it blue", output="4K", inputs=images
    )
    assert out.data == chat.image
    (body,) = chat.bodies()
    assert body["modalities"] == ["image", "text"]
    content = body["messages"][0]["content"]
    assert content[0] == {
        "type": "text",
        "text": "make it blue\n\nEdit the attached image(s). Return ONLY one markdown image in the format:\n"
        "![](data:image/png;base64,...) Output resolution target: 4K.",
    }
    assert [p["image_url"]["url"] for p in content[1:]] == [
        f"data:{img.mime};base64,{base64.b64encode(img.data).decode()}" for img in images
    ]


async def test_chat_mode_without_model_fails_without_a_call(upstream: FakeUpstream, http: httpx.AsyncClient) -> None:
    config = config_for(upstream.url, api_mode="chat", model="")
    failure = await fails(OpenAICompatProvider(config), config, http)
    assert failure.reason == "bad_request" and "model" in failure.message
    assert upstream.requests == []


# ---- through the bus -----------------------------------------------------------------------------------------


async def test_content_policy_block_falls_back_to_local_and_trace_shows_both(
    nats_url: str, tmp_path: Path, fake: OpenAIImagesFake
) -> None:
    config = make_config(
        nats_url,
        tmp_path,
        network={"allow_private_downloads": True},
        draw={
            "provider": "openai_compat",
            "fallback_1": "local",
            "openai_compat": {"base_url": fake.up.url, "api_keys": [KEY], "model": "gpt-image-1", "max_retries": 0},
        },
    )
    bus = await connect(config)
    await bus.ensure_layout()
    try:
        async with running(Stack(bus, providers=[OpenAICompatProvider(config), LocalProvider(config)])):
            client = Client(bus)
            fake.mode = "moderation"
            blocked = await client.submit("draw", "something the safety system refuses", output="1K")
            end = await client.wait(blocked, timeout=30)
            assert isinstance(end, JobCompleted) and end.provider == "local" and end.attempt == 2

            fake.mode = "b64"  # and a served job: the upstream PNG passes the actor's validation
            served, data = await client.result(await client.submit("draw", "a fox", output="1K"), timeout=30)
        assert served.provider == "openai_compat" and data == fake.image
        with Image.open(io.BytesIO(data)) as img:
            assert img.size == (64, 48)

        events = [e for _, e in await bus.history(blocked)]
        failed = [e for e in events if isinstance(e, AttemptFailed)]
        assert [(f.provider, f.reason, f.status) for f in failed] == [("openai_compat", "content_policy", 400)]
        assert KEY not in failed[0].message
        trace = "\n".join(format_trace(events))
        assert trace.count("attempt.dispatched.v1") == 2
        assert "openai_compat" in trace and "reason=content_policy" in trace and "safety system" in trace
        assert "local" in trace and "job.completed.v1" in trace
    finally:
        await bus.close()
