"""End to end: AstrBot event → plugin → real NATS → router → provider → image back as OneBot segments.

The plugin runs in bridge mode against an aiimg "deployment" that the test runs (a Stack
on the session's nats-server, same settings); one test runs the embedded mode, where the
plugin starts its own nats-server and stack inside the (AstrBot) process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import os
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from astrbot.api import message_components as Comp
from astrbot.core.provider.register import llm_tools
from astrbot.core.star.star_handler import star_handlers_registry
from PIL import Image

import aiimg.main as plugin_main
from aiimg.astrbot_bridge import sending
from aiimg.services.app.stack import Stack, running
from aiimg.services.config import Config, config_from_dict
from aiimg.services.infra.bus import connect
from aiimg.services.providers.base import AttemptContext, Output, Provider
from aiimg.services.providers.grok_video import GrokVideoProvider
from aiimg.services.providers.local import LocalProvider
from tests.fakes.server import FakeUpstream, Reply
from tests.fakes.xai_video import XaiVideoFake
from tests.helpers import ScriptedProvider, failing, png

from .conftest import GROUP, USER, OneBot, make_event, plugin_running, plugin_settings

pytestmark = pytest.mark.anyio

KEY = "sk-test-1"


def settings_for(nats_url: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "nats": {"url": nats_url, "prefix": "t" + uuid.uuid4().hex[:10]},
        "data_dir": str(tmp_path / "aiimg"),
        "retention": {"job_max_age": 3600.0, "blob_max_age": 3600.0},
        "network": {"allow_private_downloads": True},
        "debounce_interval": 0,
    }
    return plugin_settings(tmp_path, **_merge(base, overrides))


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@contextlib.asynccontextmanager
async def deployment(
    settings: dict[str, Any], providers: Callable[[Config], Sequence[Provider]] = lambda c: [LocalProvider(c)]
) -> AsyncIterator[Config]:
    """The external aiimg the bridge talks to: router + providers on the same bus and prefix."""
    config = config_from_dict(settings)
    bus = await connect(config)
    await bus.ensure_layout()
    try:
        async with running(Stack(bus, providers=list(providers(config)))):
            yield config
    finally:
        await bus.close()


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def image(data: bytes) -> Any:
    return Comp.Image.fromBytes(data)


# ---- draw / edit ------------------------------------------------------------------------


async def test_draw_with_alias_prompt_spaces_and_ratio(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path)
    bot = OneBot()
    async with deployment(settings), plugin_running(settings, bot) as plugin:
        event = make_event("/画图 一只 戴帽子的 猫 16:9", [Comp.Plain("/画图 一只 戴帽子的 猫 16:9")], bot=bot)
        await plugin.aiimg(event)
    assert "🎨 收到，正在生成…" in bot.texts()
    [result] = bot.images()
    assert size_of(result) == (1024, 576)  # the 16:9 intent reached the provider; no 256x256 default
    assert bot.reactions() == [125, 79]
    assert event.is_stopped() and event.call_llm  # call_llm=True means: no default LLM reply


async def test_draw_without_prompt_replies_usage(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path)
    bot = OneBot()
    async with plugin_running(settings, bot) as plugin:
        await plugin.aiimg(make_event("/aiimg", [Comp.Plain("/aiimg")], bot=bot))
    assert bot.texts() == ["请提供提示词！使用方法：/aiimg <提示词> [比例]"]
    assert bot.images() == []


async def test_edit_uses_the_quoted_image_first(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path)
    bot = OneBot()
    seen: list[AttemptContext] = []

    def providers(config: Config) -> list[Provider]:
        local = LocalProvider(config)

        async def run(ctx: AttemptContext) -> Output:
            seen.append(ctx)
            return await local.run(ctx)

        return [ScriptedProvider(config, "local", run)]

    quoted, inline = png(300, 200, (0, 0, 255)), png(120, 90, (0, 255, 0))
    chain = [
        Comp.Reply(id="777", chain=[image(quoted)], sender_id="40001"),
        image(inline),
        Comp.Plain("/改图 把背景 换成 海边"),
    ]
    async with deployment(settings, providers), plugin_running(settings, bot) as plugin:
        await plugin.aiedit(make_event("/改图 把背景 换成 海边", chain, bot=bot))
    [ctx] = seen
    assert ctx.op == "edit" and ctx.prompt == "把背景 换成 海边"
    assert [i.data for i in ctx.inputs] == [quoted, inline]
    [result] = bot.images()
    assert size_of(result) == (300, 200)  # the local provider draws on the first input


async def test_edit_without_any_image_asks_for_one(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path)
    bot = OneBot()
    async with plugin_running(settings, bot) as plugin:
        await plugin.aiedit(make_event("/修图 变成油画", [Comp.Plain("/修图 变成油画")], bot=bot))
    assert bot.texts() == ["请发送或引用一张图片后再使用 /修图（也可以 @ 某人，用他的头像）。"]
    assert bot.images() == [] and bot.reactions() == []


async def test_images_come_in_quote_message_mention_order(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path)
    bot = OneBot()
    avatar = png(64, 64, (9, 9, 9))
    with FakeUpstream() as qlogo:
        qlogo.route("GET", r"/headimg_dl", lambda req: Reply(200, avatar, {"content-type": "image/png"}))
        quoted, inline = png(80, 60, (1, 1, 1)), png(70, 50, (2, 2, 2))
        chain = [
            Comp.At(qq="40002", name="friend"),
            Comp.At(qq="30001", name="bot"),  # the bot itself: never an input
            Comp.AtAll(),
            image(inline),
            Comp.Reply(id="1", chain=[image(quoted)], sender_id="40003"),
            Comp.Plain("/aiedit 合影"),
        ]
        async with plugin_running(settings, bot) as plugin:
            assert plugin.bridge is not None and await plugin.bridge.start()
            plugin.bridge.avatar_template = qlogo.url + "/headimg_dl?dst_uin={user}&spec=640"
            got = await plugin.bridge._images(make_event("/aiedit 合影", chain, bot=bot), mentions=True)
        assert got == [quoted, inline, avatar]
        assert [r.query["dst_uin"] for r in qlogo.requests] == [["40002"]]


async def test_quoted_message_is_refetched_when_astrbot_could_not(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path)
    bot = OneBot()
    picture = png(50, 40, (5, 6, 7))
    path = tmp_path / "quoted.png"
    path.write_bytes(picture)
    bot.stored[778] = {"message": [{"type": "image", "data": {"file": "x.png", "url": str(path)}}]}
    async with plugin_running(settings, bot) as plugin:
        assert plugin.bridge is not None and await plugin.bridge.start()
        event = make_event("/改图 x", [Comp.Reply(id="778", chain=[]), Comp.Plain("/改图 x")], bot=bot)
        assert await plugin.bridge._images(event, mentions=False) == [picture]
    assert ("get_msg", {"message_id": 778}) in bot.actions


# ---- fallback, failures, pacing --------------------------------------------------------------


async def test_failing_primary_falls_back_and_every_failure_is_explained(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(
        nats_url,
        tmp_path,
        draw={"provider": "grok", "fallback_1": "local", "grok": {"api_keys": [KEY], "max_retries": 0}},
    )
    bot = OneBot()
    calls: list[ScriptedProvider] = []

    def providers(config: Config) -> list[Provider]:
        grok = ScriptedProvider(config, "grok", failing("content_policy", "blocked by moderation"))
        calls.append(grok)
        return [grok, LocalProvider(config)]

    async with deployment(settings, providers), plugin_running(settings, bot) as plugin:
        await plugin.aiimg(make_event("/aiimg 猫", [Comp.Plain("/aiimg 猫")], bot=bot))
    assert len(calls[0].calls) == 1
    assert len(bot.images()) == 1 and bot.reactions() == [125, 79]

    settings = settings_for(
        nats_url,
        tmp_path,
        draw={"provider": "grok", "fallback_1": "local", "grok": {"api_keys": [KEY], "max_retries": 0}},
    )
    bot = OneBot()

    def all_fail(config: Config) -> list[Provider]:
        return [
            ScriptedProvider(config, "grok", failing("content_policy", "blocked")),
            ScriptedProvider(config, "local", failing("timeout", "slow")),
        ]

    async with deployment(settings, all_fail), plugin_running(settings, bot) as plugin:
        await plugin.aiimg(make_event("/aiimg 猫", [Comp.Plain("/aiimg 猫")], bot=bot))
    assert bot.images() == []
    assert bot.texts()[-1] == "生图失败：已尝试 grok（内容审核拦截） → local（超时）"
    assert bot.reactions() == [125, 106]


async def test_second_request_within_debounce_is_refused_other_users_are_not(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path, debounce_interval=600)
    bot = OneBot()
    async with deployment(settings), plugin_running(settings, bot) as plugin:
        await plugin.aiimg(make_event("/aiimg 猫", [Comp.Plain("/aiimg 猫")], bot=bot))
        await plugin.aiimg(make_event("/生图 狗", [Comp.Plain("/生图 狗")], bot=bot))
        await plugin.aiimg(make_event("/aiimg 鸟", [Comp.Plain("/aiimg 鸟")], bot=bot, user="20002"))
    assert len(bot.images()) == 2
    assert bot.texts().count("操作太快了，请稍后再试") == 1


async def test_concurrency_cap_per_user(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path, max_user_concurrency=1)
    bot = OneBot()
    release = anyio.Event()
    started = anyio.Event()

    def gated(config: Config) -> list[Provider]:
        local = LocalProvider(config)

        async def run(ctx: AttemptContext) -> Output:
            started.set()
            await release.wait()
            return await local.run(ctx)

        return [ScriptedProvider(config, "local", run)]

    async with deployment(settings, gated), plugin_running(settings, bot) as plugin:
        first = asyncio.ensure_future(plugin.aiimg(make_event("/aiimg 猫", [Comp.Plain("/aiimg 猫")], bot=bot)))
        with anyio.fail_after(20):
            await started.wait()
        await plugin.aiimg(make_event("/aiimg 狗", [Comp.Plain("/aiimg 狗")], bot=bot))
        assert "你已有 1 个任务在进行中，请等完成后再试" in bot.texts()
        release.set()
        with anyio.fail_after(20):
            await first
    assert len(bot.images()) == 1


# ---- selfie -------------------------------------------------------------------------------


async def test_selfie_after_setting_references(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path)
    bot = OneBot()
    seen: list[AttemptContext] = []

    def providers(config: Config) -> list[Provider]:
        local = LocalProvider(config)

        async def run(ctx: AttemptContext) -> Output:
            seen.append(ctx)
            return await local.run(ctx)

        return [ScriptedProvider(config, "local", run)]

    face, outfit, extra = png(160, 120, (200, 150, 120)), png(90, 90, (10, 10, 90)), png(70, 70, (1, 99, 1))
    async with deployment(settings, providers), plugin_running(settings, bot) as plugin:
        await plugin.selfie(make_event("/自拍 海边", [Comp.Plain("/自拍 海边")], bot=bot))
        assert bot.texts()[-1].startswith("未设置自拍参考照")
        set_chain = [image(face), image(outfit), Comp.Plain("/自拍参考 设置")]
        await plugin.selfie_reference(make_event("/自拍参考 设置", set_chain, bot=bot))
        assert bot.texts()[-1] == "✅ 已保存 2 张自拍参考照。"
        await plugin.selfie_reference(make_event("/自拍参考 查看", [Comp.Plain("/自拍参考 查看")], bot=bot))
        assert bot.images() == [face, outfit]
        assert "📌 当前自拍参考照来源：store，共 2 张（已展示 2 张）" in bot.texts()
        # Image first, then the command: AstrBot did not route it, the fallback does (once).
        event = make_event("/自拍 海边", [image(extra), Comp.Plain("/自拍 海边")], bot=bot, woken=False)
        event.message_str = "/自拍 海边"
        [md] = [
            h
            for h in star_handlers_registry.get_handlers_by_module_name(plugin_main.__name__)
            if h.handler_name == "fallback"
        ]
        assert [f.filter(event, {}) for f in md.event_filters] == [True]
        chatter = make_event("今天天气不错", [image(extra), Comp.Plain("今天天气不错")], bot=bot, woken=False)
        assert [f.filter(chatter, {}) for f in md.event_filters] == [False]  # ordinary chat never wakes
        await plugin.fallback(event)
        await plugin.fallback(event)  # already handled: not a second job
    [ctx] = seen
    assert ctx.op == "selfie"
    assert [i.data for i in ctx.inputs] == [face, outfit, extra]
    assert ctx.prompt.startswith("请根据参考图生成一张新的自拍照")
    assert ctx.prompt.endswith("用户要求：海边\n（额外参考图数量：1）")
    assert size_of(bot.images()[-1]) == (160, 120)


async def test_webui_references_win_and_delete_keeps_them(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(
        nats_url, tmp_path, selfie={"reference_images": ["files/selfie_reference_images/me.png", "../escape.png"]}
    )
    data_dir = Path(os.environ["ASTRBOT_ROOT"]) / "data" / "plugin_data" / "astrbot_plugin_aiimg"
    (data_dir / "files" / "selfie_reference_images").mkdir(parents=True)
    me = png(100, 100, (120, 60, 30))
    (data_dir / "files" / "selfie_reference_images" / "me.png").write_bytes(me)
    (data_dir.parent / "escape.png").write_bytes(png())
    bot = OneBot()
    async with deployment(settings), plugin_running(settings, bot) as plugin:
        await plugin.selfie_reference(
            make_event("/自拍参考 set", [image(png(90, 90)), Comp.Plain("/自拍参考 set")], bot=bot)
        )
        await plugin.selfie_reference(make_event("/自拍参考 show", [Comp.Plain("/自拍参考 show")], bot=bot))
        assert bot.images()[-1] == me
        assert "📌 当前自拍参考照来源：webui，共 1 张（已展示 1 张）" in bot.texts()
        await plugin.selfie_reference(make_event("/自拍参考 删除", [Comp.Plain("/自拍参考 删除")], bot=bot))
        assert bot.texts()[-1].startswith("🗑️ 已删除 1 张自拍参考照。") and "WebUI" in bot.texts()[-1]
        await plugin.selfie_reference(make_event("/自拍参考 乱写", [Comp.Plain("/自拍参考 乱写")], bot=bot))
        assert bot.texts()[-1] == "未知操作。用法：/自拍参考 设置|查看|删除|帮助"


# ---- video --------------------------------------------------------------------------------


async def test_video_is_sent_by_url_and_one_per_user(nats_url: str, tmp_path: Path) -> None:
    with XaiVideoFake(KEY) as fake:
        settings = settings_for(
            nats_url,
            tmp_path,
            video={
                "server_url": fake.url,
                "api_key": KEY,
                "retry_delay": 0,
                "max_retries": 0,
                "presets": ["电影感:cinematic"],
            },
        )
        bot = OneBot()
        release = anyio.Event()

        def providers(config: Config) -> list[Provider]:
            real = GrokVideoProvider(config)

            async def run(ctx: AttemptContext) -> Output:
                await release.wait()
                return await real.run(ctx)

            video = ScriptedProvider(config, "grok_video", run)
            video.produces_video = True  # type: ignore[misc]
            return [video]

        frame = png(64, 64, (50, 100, 150))
        async with deployment(settings, providers), plugin_running(settings, bot) as plugin:
            await plugin.video(make_event("/视频 拉近", [Comp.Plain("/视频 拉近")], bot=bot))
            assert bot.texts()[-1] == "请发送或引用一张图片后再使用 /视频。"
            chain = [image(frame), Comp.Plain("/视频 电影感 拉近")]
            first = asyncio.ensure_future(plugin.video(make_event("/视频 电影感 拉近", chain, bot=bot)))
            with anyio.fail_after(20):
                while "🎬 收到，正在生成视频，可能需要几分钟…" not in bot.texts():
                    await anyio.sleep(0.02)
            await plugin.video(make_event("/视频 再来", [image(frame), Comp.Plain("/视频 再来")], bot=bot))
            assert bot.texts()[-1] == "你已有一个视频任务正在进行中，请等待完成后再试"
            release.set()
            with anyio.fail_after(30):
                await first
        [video] = bot.of_type("video")
        assert video["data"]["file"].startswith(fake.cdn.url) and video["data"]["file"].endswith(".mp4")
        [chat] = fake.api.calls("POST", r"/v1/chat/completions")
        assert "cinematic, 拉近" in str(chat.json())
        assert bot.reactions() == [125, 79]


# ---- LLM tool -----------------------------------------------------------------------------


def test_llm_tool_schema_has_all_four_parameters() -> None:
    import aiimg.main  # noqa: F401  (registers the tool)

    tool = next(t for t in llm_tools.func_list if t.name == "aiimg_generate")
    props = tool.parameters["properties"]
    assert sorted(props) == ["backend", "mode", "output", "prompt"]
    assert all(p["type"] == "string" and p["description"] for p in props.values())
    assert "selfie_ref" in props["mode"]["description"]
    assert tool.description


async def test_llm_tool_returns_at_once_and_delivers_later(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path)
    bot = OneBot()
    release = anyio.Event()

    def gated(config: Config) -> list[Provider]:
        local = LocalProvider(config)

        async def run(ctx: AttemptContext) -> Output:
            await release.wait()
            return await local.run(ctx)

        return [ScriptedProvider(config, "local", run)]

    async with deployment(settings, gated), plugin_running(settings, bot) as plugin:
        event = make_event("帮我画一只猫", [Comp.Plain("帮我画一只猫")], bot=bot, woken=True)
        with anyio.fail_after(10):
            answer = await plugin.aiimg_generate(event, prompt="一只猫", output="2K")
        assert answer.startswith("已开始生成图片") and bot.images() == []  # returned while the job runs
        assert await plugin.aiimg_generate(event, prompt="x", output="huge") == (
            "output 参数无效：huge（可用 4K / 2K / 1K / 1024x1536 / 16:9）"
        )
        release.set()
        with anyio.fail_after(30):
            while plugin.bridge.tasks:
                await asyncio.gather(*plugin.bridge.tasks)
    [result] = bot.images()  # sent by context.send_message → the aiocqhttp adapter
    assert size_of(result) == (2048, 2048)
    assert bot.reactions() == [125, 79]


async def test_llm_tool_selfie_intent_and_edit_without_image(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path)
    bot = OneBot()
    ops: list[str] = []

    def providers(config: Config) -> list[Provider]:
        local = LocalProvider(config)

        async def run(ctx: AttemptContext) -> Output:
            ops.append(ctx.op)
            return await local.run(ctx)

        return [ScriptedProvider(config, "local", run)]

    async with deployment(settings, providers), plugin_running(settings, bot) as plugin:
        plain = make_event("x", [Comp.Plain("x")], bot=bot, woken=True)
        assert await plugin.aiimg_generate(plain, prompt="改一下", mode="edit") == (
            "请在消息中附带需要编辑的图片（可发送图片或引用图片）。"
        )
        set_chain = [image(png(80, 80)), Comp.Plain("/自拍参考 设置")]
        await plugin.selfie_reference(make_event("/自拍参考 设置", set_chain, bot=bot))
        answer = await plugin.aiimg_generate(plain, prompt="来张你的自拍")
        assert answer.startswith("已开始生成自拍")
        with anyio.fail_after(30):
            while plugin.bridge.tasks:
                await asyncio.gather(*plugin.bridge.tasks)
    assert ops == ["selfie"]


# ---- video LLM tool -------------------------------------------------------------------------


def test_video_llm_tool_is_registered_with_a_prompt() -> None:
    import aiimg.main  # noqa: F401  (registers the tools)

    tool = next(t for t in llm_tools.func_list if t.name == "aiimg_generate_video")
    props = tool.parameters["properties"]
    assert list(props) == ["prompt"] and props["prompt"]["type"] == "string" and props["prompt"]["description"]
    assert "视频" in tool.description and "不要重复调用" in tool.description


async def _tasks_done(plugin: Any) -> None:
    with anyio.fail_after(30):
        while plugin.bridge.tasks:
            await asyncio.gather(*plugin.bridge.tasks)


def _sent_frame(fake: XaiVideoFake) -> bytes:
    [chat] = fake.api.calls("POST", r"/v1/chat/completions")
    [part] = [p for p in chat.json()["messages"][0]["content"] if p["type"] == "image_url"]
    return base64.b64decode(part["image_url"]["url"].split(",", 1)[1])


async def test_video_llm_tool_animates_the_message_image_and_sends_the_video_later(
    nats_url: str, tmp_path: Path
) -> None:
    with XaiVideoFake(KEY) as fake:
        video = {"server_url": fake.url, "api_key": KEY, "retry_delay": 0, "max_retries": 0}
        settings = settings_for(nats_url, tmp_path, video=video)
        bot = OneBot()
        frame = png(64, 48, (50, 100, 150))
        drawn: list[AttemptContext] = []

        def providers(config: Config) -> list[Provider]:
            local = LocalProvider(config)

            async def draw(ctx: AttemptContext) -> Output:
                drawn.append(ctx)
                return await local.run(ctx)

            return [GrokVideoProvider(config), ScriptedProvider(config, "local", draw)]

        async with deployment(settings, providers), plugin_running(settings, bot) as plugin:
            event = make_event("做成视频", [image(frame), Comp.Plain("做成视频")], bot=bot, woken=True)
            assert await plugin.aiimg_generate_video(event, prompt="  ") == "prompt 为空：请描述视频里要发生什么。"
            with anyio.fail_after(10):
                answer = await plugin.aiimg_generate_video(event, prompt="镜头缓缓推进")
            assert answer.startswith("已开始生成视频（任务 ") and bot.of_type("video") == []
            await _tasks_done(plugin)
        [sent] = bot.of_type("video")  # sent by context.send_message → the aiocqhttp adapter
        assert sent["data"]["file"].startswith(fake.cdn.url) and sent["data"]["file"].endswith(".mp4")
        assert size_of(_sent_frame(fake)) == (64, 48) and drawn == []  # the message's image is the start frame
        [chat] = fake.api.calls("POST", r"/v1/chat/completions")
        assert {"type": "text", "text": "镜头缓缓推进"} in chat.json()["messages"][0]["content"]
        assert bot.reactions() == [125, 79]


async def test_video_llm_tool_without_an_image_draws_the_start_frame_first(nats_url: str, tmp_path: Path) -> None:
    with XaiVideoFake(KEY) as fake:
        video = {"server_url": fake.url, "api_key": KEY, "retry_delay": 0, "max_retries": 0}
        settings = settings_for(nats_url, tmp_path, video=video)
        bot = OneBot()
        drawn: list[AttemptContext] = []

        def providers(config: Config) -> list[Provider]:
            local = LocalProvider(config)

            async def draw(ctx: AttemptContext) -> Output:
                drawn.append(ctx)
                return await local.run(ctx)

            return [GrokVideoProvider(config), ScriptedProvider(config, "local", draw)]

        async with deployment(settings, providers), plugin_running(settings, bot) as plugin:
            event = make_event("来段猫的视频", [Comp.Plain("来段猫的视频")], bot=bot, woken=True)
            answer = await plugin.aiimg_generate_video(event, prompt="一只猫在雪地里奔跑")
            assert answer.startswith("已开始生成视频：消息里没有图片")
            await _tasks_done(plugin)
        [ctx] = drawn
        assert (ctx.op, ctx.prompt, ctx.output) == ("draw", "一只猫在雪地里奔跑", "16:9 1K")
        assert size_of(_sent_frame(fake)) == (1024, 576)  # the drawn frame went to the video API
        [sent] = bot.of_type("video")
        assert sent["data"]["file"].startswith(fake.cdn.url)
        assert bot.images() == [] and bot.reactions() == [125, 79]

        # The frame cannot be drawn: the chat hears why, and no video is asked for.
        fake.reset()
        settings = settings_for(nats_url, tmp_path, video=video)
        bot = OneBot()

        def no_frame(config: Config) -> list[Provider]:
            return [GrokVideoProvider(config), ScriptedProvider(config, "local", failing("content_policy", "no"))]

        async with deployment(settings, no_frame), plugin_running(settings, bot) as plugin:
            event = make_event("x", [Comp.Plain("x")], bot=bot, woken=True)
            assert (await plugin.aiimg_generate_video(event, prompt="一只猫")).startswith("已开始生成视频")
            await _tasks_done(plugin)
        assert bot.texts() == ["视频生成失败：首帧图片没有生成（生图失败：已尝试 local（内容审核拦截））"]
        assert fake.api.requests == [] and bot.reactions() == [125, 106]


async def test_video_llm_tool_when_video_is_off(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path, video={"enabled": False})
    bot = OneBot()
    async with plugin_running(settings, bot) as plugin:
        event = make_event("x", [Comp.Plain("x")], bot=bot, woken=True)
        assert await plugin.aiimg_generate_video(event, prompt="一只猫") == "视频功能已关闭（video.enabled=false）"
    assert bot.sent == []


# ---- sending limits -------------------------------------------------------------------------


def noise_png(width: int, height: int) -> bytes:
    img = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


async def test_big_result_goes_as_preview_plus_file(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(nats_url, tmp_path)
    big = noise_png(1200, 800)

    def providers(config: Config) -> list[Provider]:
        async def run(ctx: AttemptContext) -> Output:
            return Output(data=big)

        return [ScriptedProvider(config, "local", run)]

    monkeypatch.setitem(sending.PLATFORM_LIMITS, "aiocqhttp", sending.Limits(5 * 1024 * 1024, 1000))
    bot = OneBot()
    async with deployment(settings, providers), plugin_running(settings, bot) as plugin:
        await plugin.aiimg(make_event("/aiimg 噪点", [Comp.Plain("/aiimg 噪点")], bot=bot))
        # The platform refuses a big image outright: the same fallback.
        monkeypatch.setitem(sending.PLATFORM_LIMITS, "aiocqhttp", sending.QQ_LIMITS)
        bot.refuse_images_over = len(big) - 1
        await plugin.aiimg(make_event("/aiimg 噪点2", [Comp.Plain("/aiimg 噪点2")], bot=bot, user="20009"))
    previews = bot.images()
    assert len(previews) == 2 and all(p[:3] == b"\xff\xd8\xff" for p in previews)
    assert size_of(previews[0]) == (1000, 667) and size_of(previews[1]) == (1200, 800)
    files = bot.of_type("file")
    assert len(files) == 2
    original = Path(files[0]["data"]["file"].removeprefix("file://"))
    assert await anyio.Path(original).read_bytes() == big
    assert sum("原图较大" in t for t in bot.texts()) == 2


# ---- embedded mode --------------------------------------------------------------------------


async def test_embedded_mode_runs_the_whole_stack_in_process(tmp_path: Path) -> None:
    settings = settings_for("", tmp_path)
    bot = OneBot()
    async with plugin_running(settings, bot) as plugin:
        assert plugin.bridge is not None and plugin.bridge.runtime.embedded and plugin.bridge.runtime.ready
        await plugin.aiimg(make_event("/出图 灯塔 1:1", [Comp.Plain("/出图 灯塔 1:1")], bot=bot, group=GROUP))
    [result] = bot.images()
    assert size_of(result) == (1024, 1024)
    assert (tmp_path / "aiimg" / "nats" / "jetstream").is_dir()
    assert USER  # the sender id the reactions and pacing used
