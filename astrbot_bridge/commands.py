"""Chat commands as plain data: names, aliases, and parsing of the text after them.

Pure functions, no AstrBot import, so every command and alias is testable without a
running bot. The wake prefix (``/``) is already stripped from the text AstrBot hands a
command handler; :func:`find_command` is the fallback that looks for a prefixed command
anywhere in a message (an image before the command, an @ before it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

from ..services.app.selfie import looks_like_selfie
from ..services.domain.sizes import parse_output, split_output_suffix

__all__ = (
    "COMMANDS",
    "DEFAULT_EDIT_PROMPT",
    "Kind",
    "Request",
    "find_command",
    "parse",
    "parse_ref_action",
    "resolve_tool_mode",
    "valid_output",
)

Kind: TypeAlias = Literal[
    "draw", "edit", "selfie", "selfie_ref", "video", "video_presets", "edit_presets", "edit_help", "resend"
]

COMMANDS: dict[Kind, tuple[str, ...]] = {
    "draw": ("aiimg", "文生图", "生图", "画图", "绘图", "出图"),
    "edit": ("aiedit", "图生图", "改图", "修图"),
    "selfie": ("自拍",),
    "selfie_ref": ("自拍参考",),
    "video": ("视频",),
    "video_presets": ("视频预设列表",),
    "edit_presets": ("预设列表",),
    "edit_help": ("改图帮助",),
    "resend": ("重发图片",),
}
"""Command → its names. The first name is what AstrBot registers; the rest are aliases."""

BACKEND_VARIANTS: dict[str, str] = {"g": "gemini", "q": "gitee"}
"""The old plugin's forced-backend variants: ``/gedit`` ``/g改图`` ``/g自拍`` ``/g<预设>`` put
gemini_native first, the ``q`` forms gitee_async; the configured fallbacks still follow."""

_VARIANT_BASES: dict[Kind, tuple[str, ...]] = {"edit": ("edit", "改图"), "selfie": ("自拍",)}

DEFAULT_EDIT_PROMPT = "Transform this image with artistic style"
"""The prompt of an edit that names no change (the old plugin's default)."""

PREFIX_CHARS = "/!！.。．"
"""Characters that may introduce a command in the fallback search (the old plugin's set)."""

RefAction: TypeAlias = Literal["set", "show", "delete", "help", "unknown"]

_REF_ACTIONS: dict[str, RefAction] = {
    "设置": "set",
    "set": "set",
    "查看": "show",
    "看": "show",
    "show": "show",
    "删除": "delete",
    "del": "delete",
    "delete": "delete",
    "": "help",
    "帮助": "help",
    "help": "help",
    "h": "help",
}


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed command. ``prompt`` is final (presets expanded); ``output`` is a size intent."""

    kind: Kind
    prompt: str = ""
    output: str = ""
    preset: str = ""
    action: RefAction = "help"
    """``selfie_ref`` only: what to do with the references."""
    command: str = ""
    """The name the user typed (for usage texts)."""
    backend: str = ""
    """A provider to try first (the ``g``/``q`` variants); empty = the configured chain."""


def _with_preset(preset_prompt: str, extra: str) -> str:
    extra = extra.strip()
    return f"{preset_prompt}, {extra}" if extra else preset_prompt


def parse_ref_action(text: str) -> RefAction:
    """``/自拍参考`` argument → action; anything unknown is ``unknown``."""
    token = text.strip().split(" ", 1)[0].strip().lower() if text.strip() else ""
    return _REF_ACTIONS.get(token, "unknown")


def _split_head(text: str, names: Mapping[str, Kind | str]) -> tuple[str, str] | None:
    """``(name, rest)`` when ``text`` starts with one of ``names`` followed by a space or the end.

    Longest names first, so ``自拍参考`` is never read as ``自拍`` + ``参考``.
    """
    for name in sorted(names, key=len, reverse=True):
        if text == name:
            return name, ""
        if text.startswith(name) and text[len(name)].isspace():
            return name, text[len(name) :].strip()
    return None


def _name_table(edit_presets: Mapping[str, str]) -> dict[str, Kind | str]:
    table: dict[str, Kind | str] = {}
    for preset in edit_presets:
        for letter in BACKEND_VARIANTS:
            table[letter + preset] = "preset"
        table[preset] = "preset"
    for kind, bases in _VARIANT_BASES.items():
        for base in bases:
            for letter in BACKEND_VARIANTS:
                table[letter + base] = kind
    for kind, names in COMMANDS.items():  # built-in names win over a preset of the same name
        for name in names:
            table[name] = kind
    return table


def _variant(name: str, known: Mapping[str, object] | tuple[str, ...]) -> tuple[str, str]:
    """``("gitee", "改图")`` for ``q改图``; ``("", name)`` for a plain name."""
    if name[:1] in BACKEND_VARIANTS and name[1:] in known and name not in COMMANDS["edit"] + COMMANDS["selfie"]:
        return BACKEND_VARIANTS[name[:1]], name[1:]
    return "", name


def parse(
    text: str,
    edit_presets: Mapping[str, str] | None = None,
    video_presets: Mapping[str, str] | None = None,
) -> Request | None:
    """Parse a message whose wake prefix is already stripped; ``None`` if it is not a command."""
    text = text.strip()
    edit_presets = edit_presets or {}
    video_presets = video_presets or {}
    table = _name_table(edit_presets)
    head = _split_head(text, table)
    if head is None:
        return None
    name, rest = head
    kind = table[name]
    if kind == "preset":
        backend, preset = _variant(name, edit_presets) if name not in edit_presets else ("", name)
        return Request("edit", _with_preset(edit_presets[preset], rest), preset=preset, command=name, backend=backend)
    if kind == "draw":
        prompt, output = split_output_suffix(rest) if rest else ("", "")
        return Request("draw", prompt, output=output, command=name)
    if kind == "edit":
        backend = _variant(name, _VARIANT_BASES["edit"])[0]
        first, _, extra = rest.partition(" ")
        if first in edit_presets:
            return Request(
                "edit", _with_preset(edit_presets[first], extra), preset=first, command=name, backend=backend
            )
        return Request("edit", rest or DEFAULT_EDIT_PROMPT, command=name, backend=backend)
    if kind == "selfie":
        return Request("selfie", rest, command=name, backend=_variant(name, _VARIANT_BASES["selfie"])[0])
    if kind == "selfie_ref":
        return Request("selfie_ref", rest, action=parse_ref_action(rest), command=name)
    if kind == "video":
        first, _, extra = rest.partition(" ")
        if first in video_presets:
            return Request("video", _with_preset(video_presets[first], extra), preset=first, command=name)
        return Request("video", rest, command=name)
    assert kind in ("video_presets", "edit_presets", "edit_help", "resend")
    return Request(kind, rest, command=name)  # type: ignore[arg-type]


def find_command(
    text: str,
    edit_presets: Mapping[str, str] | None = None,
    video_presets: Mapping[str, str] | None = None,
) -> Request | None:
    """A prefixed command anywhere in ``text`` (at the start or after whitespace), parsed.

    This is the fallback for messages AstrBot did not route to a command handler, e.g.
    an image or an @ before ``/自拍``. The command token must end at a space or the end
    of the text, and longer names win, so ``/自拍参考`` never triggers ``/自拍``.
    """
    names = sorted(_name_table(edit_presets or {}), key=len, reverse=True)
    pattern = r"(?:^|\s)[" + re.escape(PREFIX_CHARS) + r"](" + "|".join(re.escape(n) for n in names) + r")(?=\s|$)"
    m = re.search(pattern, text)
    if m is None:
        return None
    return parse(text[m.start(1) :], edit_presets, video_presets)


ToolOp: TypeAlias = Literal["draw", "edit", "selfie"]

_TOOL_MODES: dict[str, ToolOp | Literal["auto"]] = {
    "auto": "auto",
    "": "auto",
    "text": "draw",
    "draw": "draw",
    "txt2img": "draw",
    "edit": "edit",
    "img2img": "edit",
    "aiedit": "edit",
    "selfie_ref": "selfie",
    "selfie": "selfie",
    "ref": "selfie",
}


def resolve_tool_mode(mode: str, prompt: str, *, has_images: bool, has_references: bool) -> ToolOp:
    """What ``aiimg_generate(mode=…)`` does (the old plugin's routing, without the avatar edit).

    Explicit modes win. ``auto``: a selfie-like prompt with references set → selfie; a
    message with images → edit; otherwise draw. An unknown mode counts as ``auto``.
    """
    chosen = _TOOL_MODES.get(mode.strip().lower(), "auto")
    if chosen != "auto":
        return chosen
    if has_references and looks_like_selfie(prompt):
        return "selfie"
    return "edit" if has_images else "draw"


def valid_output(output: str) -> bool:
    """Whether ``output`` is a size intent the core understands (empty is valid: the default)."""
    if not output.strip():
        return True
    try:
        parse_output(output)
    except ValueError:
        return False
    return True
