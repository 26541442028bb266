"""The plugin's files: settings schema (in AstrBot's loader and in the core's), metadata, the built zip."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from astrbot.core.config.astrbot_config import AstrBotConfig
from astrbot.core.config.default import DEFAULT_VALUE_MAP
from astrbot.core.star.updater import _PluginUpdater

from aiimg.astrbot_bridge.feedback import Debouncer, UserSlots, react
from aiimg.astrbot_bridge.schema import render_json, settings_table
from aiimg.astrbot_bridge.settings import PLUGIN_NAME, load_settings
from aiimg.services.app.selfie import looks_like_selfie, selfie_prompt, webui_references
from aiimg.services.config import CAPABILITIES, Config, config_from_dict
from aiimg.services.domain.errors import ConfigError

from ..reliability.procs import deploy_module
from .conftest import ROOT, OneBot, make_event, schema

plugin_sources = deploy_module("plugin_sources")


def _walk(items: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    for key, item in items.items():
        path = f"{prefix}.{key}" if prefix else key
        out.append((path, item))
        if item["type"] == "object":
            out += _walk(item["items"], path)
    return out


def test_committed_plugin_sources_are_current() -> None:
    """``_conf_schema.json``, ``requirements.txt``, the docs table and the README section are generated."""
    assert plugin_sources.main(["--check"]) == 0, "run: python deploy/plugin_sources.py"
    assert (ROOT / "_conf_schema.json").read_text(encoding="utf-8") == render_json()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert (ROOT / "requirements.txt").read_text().splitlines() == deps
    assert settings_table() in (ROOT / "docs" / "astrbot.md").read_text(encoding="utf-8")


def test_schema_loads_in_astrbots_config_loader_and_in_the_core(tmp_path: Path) -> None:
    cfg = AstrBotConfig(config_path=str(tmp_path / f"{PLUGIN_NAME}_config.json"), schema=schema())
    settings = json.loads(json.dumps(dict(cfg)))
    assert settings["nats"]["url"] == "" and settings["draw"]["provider"] == "local"
    config = config_from_dict(settings)
    assert msgspec.to_builtins(config) == msgspec.to_builtins(Config())  # every default is the core's
    # Saved values survive a reload by the loader and still load in the core.
    settings["draw"]["provider"] = "grok"
    settings["draw"]["grok"]["api_keys"] = ["sk-test-1"]
    settings["edit"]["presets"] = ["手办化:Figure style"]
    cfg.save_config(settings)
    again = AstrBotConfig(config_path=str(tmp_path / f"{PLUGIN_NAME}_config.json"), schema=schema())
    loaded = load_settings(dict(again), tmp_path / "data")
    assert loaded.draw.provider == "grok" and loaded.presets() == {"手办化": "Figure style"}
    assert loaded.data_dir == str(tmp_path / "data")
    with pytest.raises(ConfigError, match="draw"):
        load_settings({**settings, "draw": {**settings["draw"], "fallback_1": 3}}, tmp_path)


def test_schema_shape_matches_the_old_plugin() -> None:
    items = dict(_walk(schema()))
    assert all(item["type"] in DEFAULT_VALUE_MAP for item in items.values())
    draw_aliases = [a for a, ops in CAPABILITIES.items() if "draw" in ops]
    assert items["draw.provider"]["options"] == draw_aliases
    for n in (1, 2, 3):
        assert items[f"draw.fallback_{n}"]["options"] == ["", *draw_aliases]
        assert "gitee_async" in items[f"edit.fallback_{n}"]["options"]
    for section in ("draw", "edit"):
        for alias in CAPABILITIES:
            if f"{section}.{alias}" in items:
                assert items[f"{section}.{alias}"]["condition"] == {"provider": alias}
    for key in ("edit.supports_edit", "edit.grok.supports_edit", "edit.fallback.enabled", "edit.presets"):
        assert key in items or key == "edit.supports_edit"
    assert items["selfie.reference_images"]["type"] == "file"
    assert items["nats.url"]["default"] == "" and "video.server_url" in items
    assert items["selfie.prompt_prefix"]["type"] == "text"


_MENUS = ("provider", "fallback_1", "fallback_2", "fallback_3", "prefer_provider")


def test_every_mode_hint_explains_every_option() -> None:
    """A hint on a choice (``api_mode``, ``send_mode``) names each value the code takes, no fewer."""
    checked = []
    for path, item in _walk(schema()):
        if item["type"] != "string" or not item.get("options") or not item.get("hint"):
            continue
        if path.rsplit(".", 1)[-1] in _MENUS:
            continue
        hint = item["hint"]
        # "mode：what it does" hints explain each mode; a plain list ("1K / 2K / 4K") names each value.
        missing = [o for o in item["options"] if (f"{o}：" if "：" in hint else o) not in hint]
        assert not missing, f"{path}: the hint does not explain {missing}: {hint}"
        checked.append(path)
    assert {"draw.grok.api_mode", "video.api_mode", "video.send_mode"} <= set(checked)


def test_video_hints_say_what_grok_video_does() -> None:
    from aiimg.services.providers import grok_video

    items = dict(_walk(schema()))
    api_mode = items["video.api_mode"]["hint"]
    assert "/v1/chat/completions" in api_mode and "/v1/videos/generations" in api_mode
    assert "/v1/images" not in api_mode
    resolution = items["video.resolution"]["hint"]
    assert all(r in resolution for r in grok_video.XAI_RESOLUTIONS) and "4K" not in resolution
    assert all(r in items["video.aspect_ratio"]["hint"] for r in grok_video.XAI_RATIOS)
    assert grok_video.VIDEOS_MODEL in items["video.model"]["hint"]
    assert grok_video.CHAT_DEFAULT_MODEL in items["video.model"]["hint"]
    for key in ("duration", "aspect_ratio", "resolution", "poll_interval"):
        assert "videos 模式" in items[f"video.{key}"]["hint"], key
    assert items["video.supports_edit"].get("invisible") is True


def test_metadata_is_what_astrbot_requires() -> None:
    meta = yaml.safe_load((ROOT / "metadata.yaml").read_text(encoding="utf-8"))
    _PluginUpdater.validate_plugin_metadata(meta, "metadata.yaml")
    assert meta["name"] == PLUGIN_NAME and meta["name"].isidentifier()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["repo"] == project["urls"]["Repository"]
    assert meta["version"] == project["version"]


def test_built_zip_installs_and_loads_in_astrbot_without_the_repo(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "build_astrbot_plugin.py"), "--out", str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        check=True,
    )
    archive = Path(out.stdout.strip())
    assert archive.name == f"{PLUGIN_NAME}.zip"
    info = _PluginUpdater.inspect_plugin_archive(str(archive))  # AstrBot's own upload validation
    assert info["metadata"]["name"] == PLUGIN_NAME
    names = set(zipfile.ZipFile(archive).namelist())
    for needed in ("main.py", "metadata.yaml", "_conf_schema.json", "requirements.txt", "README.md"):
        assert f"{PLUGIN_NAME}/{needed}" in names
    for module in (
        "services/app/stack.py",
        "services/providers/local.py",
        "messages/_events.py",
        "astrbot_bridge/flows.py",
    ):
        assert f"{PLUGIN_NAME}/{module}" in names
    assert not any("__pycache__" in n or "/tests/" in n or "/bench/" in n for n in names)
    root = tmp_path / "astrbot"
    (root / "data" / "plugins").mkdir(parents=True)
    _PluginUpdater()._extract_plugin_archive(str(archive), str(root / "data" / "plugins" / PLUGIN_NAME))
    _load_in_astrbot(root)


def test_the_repository_as_is_loads_as_an_astrbot_plugin(tmp_path: Path) -> None:
    """What AstrBot's "install from URL" does with this repository: its files, unchanged, under data/plugins."""
    root = tmp_path / "astrbot"
    plugin = root / "data" / "plugins" / PLUGIN_NAME
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in tracked.splitlines():
        if (ROOT / name).is_file():
            (plugin / name).parent.mkdir(parents=True, exist_ok=True)
            (plugin / name).write_bytes((ROOT / name).read_bytes())
    _load_in_astrbot(root)


def _load_in_astrbot(root: Path) -> None:
    """Load the plugin under ``root/data/plugins`` with AstrBot's PluginManager, in a fresh Python
    whose sys.path has no checkout and no ``aiimg``: only the plugin's own, relative imports work."""
    (root / "data" / "config").mkdir(parents=True)
    (root / "data" / "config" / f"{PLUGIN_NAME}_config.json").write_text(json.dumps({"debounce_interval": 3}))
    script = textwrap.dedent(
        f"""
        import asyncio, os, sys
        from types import SimpleNamespace
        def checkout(p):  # this project's checkout (the editable install's, or any other worktree)
            return os.path.isfile(os.path.join(p, "aiimg", "__init__.py")) and os.path.isdir(os.path.join(p, "services"))
        sys.path = [p for p in sys.path if p not in ("", ".") and not checkout(p)]
        sys.path.insert(0, {str(root)!r})
        import importlib.util
        for name in ("aiimg", "services"):
            spec = importlib.util.find_spec(name)
            assert spec is None, f"{{name}} importable from {{spec.origin or list(spec.submodule_search_locations or [])}}"
        from astrbot.core.star.context import Context
        from astrbot.core.star.star import star_map
        from astrbot.core.star.star_manager import PluginManager
        from astrbot.core.provider.register import llm_tools

        async def main():
            ctx = Context(asyncio.Queue(), {{}}, None, None, SimpleNamespace(platform_insts=[]),
                          None, None, None, SimpleNamespace(get_conf=lambda umo: {{}}), None, None)
            pm = PluginManager(ctx, {{}})
            ok, err = await pm.load(specified_dir_name={PLUGIN_NAME!r})
            assert ok, (err, pm.failed_plugin_dict)
            md = star_map["data.plugins.{PLUGIN_NAME}.main"]
            plugin = md.star_cls
            here = os.path.join({str(root)!r}, "data", "plugins", {PLUGIN_NAME!r})
            core = sys.modules["data.plugins.{PLUGIN_NAME}.services.app.stack"]
            assert core.__file__.startswith(here), core.__file__
            # Nothing generic reached the process's top level.
            assert not {{"services", "messages", "astrbot_bridge", "aiimg", "main"}} & set(sys.modules)
            assert plugin.bridge is not None and plugin.bridge.config.debounce_interval == 3
            assert plugin.bridge.runtime.embedded and plugin.bridge.runtime.ready, plugin.bridge.runtime.error
            assert any(t.name == "aiimg_generate" for t in llm_tools.func_list)
            await plugin.terminate()
            print("LOADED", md.name, len(md.star_handler_full_names))

        asyncio.run(main())
        """
    )
    env = {"ASTRBOT_ROOT": str(root), "ASTRBOT_DISABLE_METRICS": "1", "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=str(root), env=env, timeout=120
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"LOADED {PLUGIN_NAME}" in run.stdout


# ---- small pieces ----------------------------------------------------------------------------


def test_debounce_rejected_hits_do_not_extend_the_window() -> None:
    now = [100.0]
    d = Debouncer(10, clock=lambda: now[0])
    assert d.hit("draw:u1")
    now[0] = 105
    assert not d.hit("draw:u1")  # rejected: the window still ends at 110
    assert d.hit("draw:u2")  # another user is unaffected
    now[0] = 110.5
    assert d.hit("draw:u1")
    slots = UserSlots(2)
    assert slots.try_acquire("u") and slots.try_acquire("u") and not slots.try_acquire("u")
    slots.release("u")
    assert slots.try_acquire("u")


async def test_reactions_only_on_qq_and_never_raise() -> None:
    bot = OneBot()
    event = make_event("/aiimg x", [], bot=bot, message_id="123")
    assert await react(event, 125)
    assert bot.actions == [
        ("set_msg_emoji_like", {"message_id": 123, "emoji_id": "125", "emoji_type": "1", "set": True})
    ]

    class Refusing(OneBot):
        async def call_action(self, action: str, **params: Any) -> Any:
            raise RuntimeError("unsupported api")

    assert not await react(make_event("/aiimg x", [], bot=Refusing()), 125)
    other = make_event("/aiimg x", [], bot=bot)
    other.platform_meta.name = "telegram"
    assert not await react(other, 125)


pytestmark = pytest.mark.anyio


def test_selfie_prompt_and_intent() -> None:
    prompt = selfie_prompt("海边", 1)
    assert prompt.startswith("请根据参考图生成一张新的自拍照：\n1) 以第1张参考图的人脸身份为准")
    assert prompt.endswith("\n\n用户要求：海边\n（额外参考图数量：1）")
    assert selfie_prompt("", 0).endswith("用户要求：日常自拍照")
    assert selfie_prompt("x", 0, prefix="Keep my face.") == "Keep my face.\n\n用户要求：x"
    for text in ("", "来张你的自拍", "Selfie please", "看看你", "你来张照片"):
        assert looks_like_selfie(text), text
    assert not looks_like_selfie("画一只猫")


def test_webui_references_stay_inside_the_data_dir(tmp_path: Path) -> None:
    base = tmp_path / "plugin"
    (base / "files").mkdir(parents=True)
    (base / "files" / "a.png").write_bytes(b"x")
    (tmp_path / "outside.png").write_bytes(b"x")
    config = config_from_dict(
        {"selfie": {"reference_images": ["files/a.png", "../outside.png", str(tmp_path / "outside.png"), "nope.png"]}}
    )
    assert webui_references(config, base) == [(base / "files" / "a.png").resolve()]


async def test_video_send_falls_back_from_url_to_file_to_link(tmp_path: Path) -> None:
    from astrbot.api import message_components as Comp
    from astrbot.api.event import MessageChain

    from aiimg.astrbot_bridge.sending import ResultCache, send_video

    sent: list[list[Any]] = []

    cache = ResultCache(tmp_path / "videos", 5)
    url = "https://cdn.example/v.mp4"

    async def refuse_url(chain: MessageChain) -> None:
        video = chain.chain[0]
        if isinstance(video, Comp.Video) and str(video.file).startswith("https:"):
            raise RuntimeError("url refused")
        sent.append(chain.chain)

    assert await send_video(
        refuse_url, b"\x00\x00\x00\x18ftypmp42" + b"0" * 2000, source_url=url, name="j1", cache=cache
    )
    [chain] = sent
    assert isinstance(chain[0], Comp.Video) and chain[0].file.startswith("file:")  # the file, never base64
    assert (tmp_path / "videos" / "j1.mp4").is_file()

    sent.clear()

    async def refuse_videos(chain: MessageChain) -> None:
        if any(isinstance(c, Comp.Video) for c in chain.chain):
            raise RuntimeError("video refused")
        sent.append(chain.chain)

    assert await send_video(refuse_videos, b"x" * 2000, source_url=url, name="j2", cache=cache)
    assert [c.text for c in sent[0]] == [f"🎬 视频已生成：{url}"]
