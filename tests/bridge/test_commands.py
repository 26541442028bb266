"""Every command and alias parses, through AstrBot's own command filters and the bridge's parser."""

from __future__ import annotations

from typing import Any

import pytest
from astrbot.api import message_components as Comp
from astrbot.core.star.filter.command import CommandFilter
from astrbot.core.star.star_handler import star_handlers_registry

import aiimg.main as plugin_main
from aiimg.astrbot_bridge.commands import (
    COMMANDS,
    DEFAULT_EDIT_PROMPT,
    Request,
    find_command,
    parse,
    parse_ref_action,
    resolve_tool_mode,
    valid_output,
)

from .conftest import OneBot, make_event

PRESETS = {"手办化": "Figure style", "赛博": "cyberpunk neon"}
VIDEO_PRESETS = {"电影感": "cinematic"}


def _handlers() -> dict[str, Any]:
    """Handler name → its StarHandlerMetadata, for the handlers main.py registered."""
    return {
        h.handler_name: h
        for h in star_handlers_registry.get_handlers_by_module_name(plugin_main.__name__)
        if h.handler_name != "aiimg_generate"
    }


def _commands_matching(text: str) -> list[str]:
    """Which of the plugin's command handlers AstrBot's CommandFilter activates for ``/text``."""
    event = make_event("/" + text, [Comp.Plain("/" + text)], bot=OneBot())
    hits = []
    for name, md in _handlers().items():
        filters = [f for f in md.event_filters if isinstance(f, CommandFilter)]
        if filters and filters[0].filter(event, {}):
            hits.append(name)
    return hits


HANDLER_OF = {
    "draw": "aiimg",
    "edit": "aiedit",
    "selfie": "selfie",
    "selfie_ref": "selfie_reference",
    "video": "video",
    "video_presets": "video_presets",
    "edit_presets": "edit_presets",
    "edit_help": "edit_help",
    "resend": "resend",
}


@pytest.mark.parametrize(("kind", "name"), [(k, n) for k, names in COMMANDS.items() for n in names])
def test_every_command_and_alias_is_registered_and_parses(kind: str, name: str) -> None:
    text = f"{name} 一只 戴帽子的 猫 16:9"
    assert _commands_matching(text) == [HANDLER_OF[kind]]
    request = parse(text, PRESETS, VIDEO_PRESETS)
    assert request is not None and request.kind == kind and request.command == name


@pytest.mark.parametrize("name", COMMANDS["draw"])
def test_draw_prompt_with_spaces_and_trailing_ratio(name: str) -> None:
    assert parse(f"{name} 一只 戴帽子的 猫 16:9") == Request("draw", "一只 戴帽子的 猫", output="16:9", command=name)
    assert parse(f"{name}   画一张 16:9 的电影海报 4K") == Request(
        "draw", "画一张 16:9 的电影海报", output="4K", command=name
    )
    assert parse(f"{name} a red cat 1024x1536") == Request("draw", "a red cat", output="1024x1536", command=name)
    assert parse(f"{name} 猫") == Request("draw", "猫", command=name)
    assert parse(name) == Request("draw", "", command=name)  # → usage text, no job


def test_edit_presets_and_default_prompt() -> None:
    assert parse("aiedit 手办化", PRESETS) == Request("edit", "Figure style", preset="手办化", command="aiedit")
    assert parse("改图 手办化 加底座", PRESETS) == Request(
        "edit", "Figure style, 加底座", preset="手办化", command="改图"
    )
    assert parse("手办化 加底座", PRESETS) == Request("edit", "Figure style, 加底座", preset="手办化", command="手办化")
    assert parse("手办化", PRESETS) == Request("edit", "Figure style", preset="手办化", command="手办化")
    assert parse("修图 把背景 换成 海边", PRESETS) == Request("edit", "把背景 换成 海边", command="修图")
    assert parse("图生图", PRESETS) == Request("edit", DEFAULT_EDIT_PROMPT, command="图生图")
    assert parse("手办化", {}) is None  # not a preset any more: not a command


def test_selfie_reference_actions_and_selfie_are_distinct() -> None:
    for word, action in [
        ("设置", "set"),
        ("set", "set"),
        ("查看", "show"),
        ("show", "show"),
        ("看", "show"),
        ("删除", "delete"),
        ("del", "delete"),
        ("delete", "delete"),
        ("帮助", "help"),
        ("help", "help"),
        ("h", "help"),
        ("", "help"),
        ("乱写", "unknown"),
    ]:
        request = parse(f"自拍参考 {word}".strip())
        assert request is not None and request.kind == "selfie_ref" and request.action == action, word
        assert parse_ref_action(word) == action
    assert parse("自拍 海边 穿白裙") == Request("selfie", "海边 穿白裙", command="自拍")
    assert parse("自拍") == Request("selfie", "", command="自拍")
    assert _commands_matching("自拍参考 设置") == ["selfie_reference"]
    assert _commands_matching("自拍 海边") == ["selfie"]
    assert parse("自拍参考设置") is None  # no space: neither command


def test_video_prompt_and_presets() -> None:
    assert parse("视频 电影感 拉近", video_presets=VIDEO_PRESETS) == Request(
        "video", "cinematic, 拉近", preset="电影感", command="视频"
    )
    assert parse("视频 让人物 微笑", video_presets=VIDEO_PRESETS) == Request("video", "让人物 微笑", command="视频")
    assert parse("视频") == Request("video", "", command="视频")  # → usage text
    assert parse("视频预设列表") == Request("video_presets", "", command="视频预设列表")


def test_fallback_finds_commands_after_an_image_without_confusing_them() -> None:
    # What message_str looks like when an image or an @ came first and the wake prefix did not match.
    assert find_command("/自拍 海边") == Request("selfie", "海边", command="自拍")
    assert find_command(" @someone(12345) /改图 换个发型") == Request("edit", "换个发型", command="改图")
    ref = find_command("/自拍参考 设置")
    assert ref is not None and ref.kind == "selfie_ref" and ref.action == "set"
    assert find_command("。自拍 海边") == Request("selfie", "海边", command="自拍")
    assert find_command("/手办化 加底座", PRESETS) == Request(
        "edit", "Figure style, 加底座", preset="手办化", command="手办化"
    )
    assert find_command("我想要/自拍") is None  # not at a word boundary
    assert find_command("/自拍照真好看") is None  # the command token must end at a space
    assert find_command("今天天气不错") is None


def test_llm_tool_mode_routing() -> None:
    assert resolve_tool_mode("auto", "来张你的自拍", has_images=False, has_references=True) == "selfie"
    assert resolve_tool_mode("auto", "看看你", has_images=True, has_references=True) == "selfie"
    assert resolve_tool_mode("auto", "来张你的自拍", has_images=False, has_references=False) == "draw"
    assert resolve_tool_mode("auto", "把它变成油画", has_images=True, has_references=True) == "edit"
    assert resolve_tool_mode("auto", "a cat", has_images=False, has_references=True) == "draw"
    assert resolve_tool_mode("edit", "x", has_images=False, has_references=False) == "edit"
    assert resolve_tool_mode("img2img", "x", has_images=False, has_references=False) == "edit"
    assert resolve_tool_mode("selfie_ref", "x", has_images=False, has_references=False) == "selfie"
    assert resolve_tool_mode("text", "自拍", has_images=True, has_references=True) == "draw"
    assert valid_output("4K") and valid_output("1024x1536") and valid_output("16:9") and valid_output("")
    assert not valid_output("huge")
