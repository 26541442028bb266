"""Chat-completions image mode: finding the image in every reply shape gateways use."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from aiimg.services.config import Config, config_from_dict
from aiimg.services.domain.errors import ProviderFailure
from aiimg.services.infra.http import download_client, upstream_client
from aiimg.services.providers._chat import Ref, image_refs, is_placeholder
from aiimg.services.providers.base import Output
from aiimg.services.providers.openai_compat import OpenAICompatProvider

from .fakes.attempt import attempt_context
from .fakes.openai_chat import ONE_PIXEL_PNG, OpenAIChatFake
from .fakes.server import FakeUpstream
from .helpers import png

pytestmark = pytest.mark.anyio

KEY = "sk-test-1"
PNG = png(64, 48, (250, 200, 10))
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


def reply(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {"choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", **message}}]}


# ---- pure parsing ----------------------------------------------------------------------------------


def test_the_base64_under_test_contains_the_letter_s() -> None:
    # The old regex r"(data:image/[^\\s)]+)" stopped at the first "s"; the fixture must exercise that.
    payload = DATA_URL.split(",", 1)[1]
    assert 0 < payload.find("s") < len(payload) // 2


async def test_markdown_data_url_decodes_past_the_first_s(chat: OpenAIChatFake, http: httpx.AsyncClient) -> None:
    assert "s" in base64.b64encode(chat.image).decode()
    out = await draw(chat, http, "markdown_data")
    assert out.data == chat.image


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"content": f"I made it.\n![image]({DATA_URL})"}, [Ref("data", DATA_URL)]),
        ({"content": "x ![a](https://h.example/a.png)"}, [Ref("url", "https://h.example/a.png")]),
        ({"content": '![a](https://h.example/a "title")'}, [Ref("url", "https://h.example/a")]),
        ({"content": "https://cdn.example/out/123"}, [Ref("url", "https://cdn.example/out/123")]),
        ({"content": "see https://docs.example/guide for help"}, []),
        ({"content": "done: https://cdn.example/x.webp."}, [Ref("url", "https://cdn.example/x.webp")]),
        ({"content": f"raw {DATA_URL} end"}, [Ref("data", DATA_URL)]),
        (
            {"content": [{"type": "text", "text": "here"}, {"type": "image_url", "image_url": {"url": DATA_URL}}]},
            [Ref("data", DATA_URL)],
        ),
        ({"content": {"image_url": "https://h.example/dict"}}, [Ref("url", "https://h.example/dict")]),
        (
            {"content": "Here is your image.", "images": [{"type": "image_url", "image_url": {"url": DATA_URL}}]},
            [Ref("data", DATA_URL)],
        ),
        (
            {
                "content": None,
                "tool_calls": [
                    {"type": "function", "function": {"name": "img", "arguments": '{"url": "https://h.example/t"}'}}
                ],
            },
            [Ref("url", "https://h.example/t")],
        ),
        ({"content": "no image here, sorry"}, []),
    ],
)
def test_image_refs_in_each_reply_shape(message: dict[str, Any], expected: list[Ref]) -> None:
    assert image_refs(reply(message)) == expected


def test_refs_keep_reply_order_so_the_last_can_win() -> None:
    message = {
        "content": "draft ![a](https://h.example/1.png) final ![b](https://h.example/2.png)",
        "images": [{"image_url": {"url": "https://h.example/3.png"}}],
    }
    assert [r.value for r in image_refs(reply(message))] == [
        "https://h.example/1.png",
        "https://h.example/2.png",
        "https://h.example/3.png",
    ]


def test_video_refs_are_recognised() -> None:
    refs = image_refs(reply({"content": "clip https://v.example/a.mp4?sig=1 and ![](data:video/mp4;base64,AAAA)"}))
    assert [r.is_video for r in refs] == [True, True]


def test_responses_api_relay_is_searched_when_there_are_no_choices() -> None:
    body = {"output": [{"type": "message", "content": [{"type": "output_text", "text": f"![]({DATA_URL})"}]}]}
    assert image_refs(body) == [Ref("data", DATA_URL)]


def test_placeholders() -> None:
    assert is_placeholder(ONE_PIXEL_PNG)  # 68 bytes and 1x1
    assert is_placeholder(b"\x89PNG" + b"\0" * 100)
    assert not is_placeholder(PNG)


# ---- against the fake gateway ----------------------------------------------------------------------------


@pytest.fixture(name="chat")
def _chat(upstream: FakeUpstream) -> OpenAIChatFake:
    return OpenAIChatFake(upstream)


def chat_config(base_url: str, **block: Any) -> Config:
    settings = {"base_url": base_url, "api_keys": [KEY], "api_mode": "chat", "model": "gemini-2.5-flash-image", **block}
    return config_from_dict({"network": {"allow_private_downloads": True}, "draw": {"openai_compat": settings}})


async def draw(chat: OpenAIChatFake, http: httpx.AsyncClient, scenario: str, **kw: Any) -> Output:
    chat.mode = scenario
    config = chat_config(chat.up.url)
    return await OpenAICompatProvider(config).run(attempt_context(config, "openai_compat", http, **kw))


async def draw_fails(chat: OpenAIChatFake, http: httpx.AsyncClient, scenario: str) -> ProviderFailure:
    with pytest.raises(ProviderFailure) as info:
        await draw(chat, http, scenario)
    assert KEY not in info.value.message
    return info.value


@pytest.mark.parametrize(
    ("scenario", "downloaded"),
    [
        ("markdown_data", False),
        ("markdown_url", True),
        ("bare_url", True),
        ("parts", False),
        ("dict_content", True),
        ("images_field", False),
        ("tool_calls", False),
        ("responses_api", False),
    ],
)
async def test_each_reply_shape_yields_the_exact_image(
    chat: OpenAIChatFake, http: httpx.AsyncClient, scenario: str, downloaded: bool
) -> None:
    out = await draw(chat, http, scenario)
    assert out.data == chat.image  # decoded whole, byte for byte
    assert bool(out.source_url) is downloaded
    assert len(chat.up.calls("GET", r"/chat-files/.+")) == int(downloaded)


async def test_the_last_image_wins(chat: OpenAIChatFake, http: httpx.AsyncClient) -> None:
    out = await draw(chat, http, "two_images")
    assert out.data == chat.second


async def test_a_trailing_placeholder_is_skipped_for_the_real_image(
    chat: OpenAIChatFake, http: httpx.AsyncClient
) -> None:
    out = await draw(chat, http, "placeholder_last")
    assert out.data == chat.image


@pytest.mark.parametrize(
    ("scenario", "reason", "words"),
    [
        ("only_placeholder", "no_image", "placeholder"),
        ("video", "no_image", "video"),
        ("text_only", "no_image", "I can describe a fox"),
        ("content_filter", "content_policy", "content_filter"),
        ("refusal", "content_policy", "can't help"),
        ("unauthorized", "auth", "key #1"),
        ("moderation", "content_policy", "safety system"),
        ("rate_limited", "rate_limited", "Rate limit"),
        ("server_error", "upstream_error", "500"),
        ("html", "invalid_response", "HTML"),
        ("malformed", "invalid_response", "malformed"),
        ("not_found", "unsupported", "404"),
    ],
)
async def test_failures_have_their_reason(
    chat: OpenAIChatFake, http: httpx.AsyncClient, scenario: str, reason: str, words: str
) -> None:
    failure = await draw_fails(chat, http, scenario)
    assert failure.reason == reason, failure.message
    assert words in failure.message and "openai_compat" in failure.message


async def test_plain_text_excerpt_is_short(chat: OpenAIChatFake, http: httpx.AsyncClient) -> None:
    failure = await draw_fails(chat, http, "text_only")
    assert len(failure.message) < 200


@pytest.mark.parametrize(
    ("output", "hint"),
    [
        ("", " Output size target: 4096x4096."),
        ("4K", " Output resolution target: 4K."),
        ("1024x1536", " Output size target: 1024x1536."),
        ("16:9 2K", " Output size target: 2048x1152."),
    ],
)
async def test_size_hint_variants(chat: OpenAIChatFake, http: httpx.AsyncClient, output: str, hint: str) -> None:
    await draw(chat, http, "markdown_data", output=output)
    (body,) = chat.bodies()
    assert body["messages"][0]["content"].endswith("![](data:image/png;base64,...)" + hint)


@pytest.mark.parametrize("suffix", ["", "/v1", "/v1/chat/completions", "/chat/completions"])
async def test_chat_base_url_variants(chat: OpenAIChatFake, http: httpx.AsyncClient, suffix: str) -> None:
    config = chat_config(chat.up.url + suffix)
    out = await OpenAICompatProvider(config).run(attempt_context(config, "openai_compat", http))
    assert out.data == chat.image
    assert [r.path for r in chat.up.requests] == ["/v1/chat/completions"]


async def test_private_download_is_refused_unless_allowed(chat: OpenAIChatFake, http: httpx.AsyncClient) -> None:
    chat.mode = "markdown_url"
    config = config_from_dict(
        {"draw": {"openai_compat": {"base_url": chat.up.url, "api_keys": [KEY], "api_mode": "chat", "model": "m"}}}
    )
    # The actor's two clients: the API on loopback is reachable (a LAN gateway may be
    # configured), the image URL its reply names on loopback is not.
    async with upstream_client(config, 2) as api, download_client(config, 2) as downloads:
        with pytest.raises(ProviderFailure) as info:
            await OpenAICompatProvider(config).run(attempt_context(config, "openai_compat", api, downloads=downloads))
    assert info.value.reason == "invalid_response" and "private" in info.value.message
    assert [r.path for r in chat.up.requests] == ["/v1/chat/completions"]
    assert chat.up.calls("GET", r"/chat-files/.+") == []
