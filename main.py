"""AstrBot plugin entry point: registers the commands and the LLM tools, and wires them to the bridge.

The repository root is the plugin: AstrBot ("install from URL" on this repository, or the
zip from ``deploy/build_astrbot_plugin.py``) puts it at ``data/plugins/astrbot_plugin_aiimg``
and imports this file as ``data.plugins.astrbot_plugin_aiimg.main``. Every import of the
core is relative, so nothing is added to ``sys.path``: the plugin's ``services`` and
``messages`` are ``data.plugins.astrbot_plugin_aiimg.services`` and so on.

Handlers here only hand the event to :class:`~.astrbot_bridge.flows.Bridge`; parsing lives in
``astrbot_bridge.commands``, the work on the bus in ``services``. With ``nats.url`` empty the plugin runs
aiimg inside AstrBot's process; with a URL it bridges to an external deployment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from astrbot.api import AstrBotConfig, logger
from astrbot.api.event import AstrMessageEvent, MessageChain, filter
from astrbot.api.star import Context, Star, StarTools
from astrbot.core.star.filter.custom_filter import CustomFilter
from astrbot.core.utils.astrbot_path import get_astrbot_data_path

from .astrbot_bridge.flows import HANDLED, Bridge, proactive_sink, proactive_target
from .astrbot_bridge.logs import route_core_logs, warn_missing_keys
from .astrbot_bridge.settings import PLUGIN_NAME, load_settings

__all__ = ("AiimgPlugin", "FallbackFilter")

_active: Bridge | None = None
"""The loaded plugin's bridge; :class:`FallbackFilter` asks it (AstrBot builds filters without the plugin)."""


class FallbackFilter(CustomFilter):
    """Activates the fallback handler only for messages that hold a command or preset somewhere.

    A catch-all listener would wake every message of every chat (and make AstrBot fetch
    every inbound image); this keeps ordinary chatter out of the plugin entirely.
    """

    def filter(self, event: AstrMessageEvent, cfg: Any) -> bool:
        bridge = _active
        return bridge is not None and bridge.fallback_request(event) is not None


class AiimgPlugin(Star):
    """文生图 / 改图 / 自拍 / 视频, on aiimg's event-sourced bus with automatic provider fallback."""

    def __init__(self, context: Context, config: AstrBotConfig | None = None) -> None:
        super().__init__(context)
        self.settings: dict[str, Any] = dict(config or {})
        self.config_error = ""
        self.bridge: Bridge | None = None
        data_dir = Path(StarTools.get_data_dir(PLUGIN_NAME))
        try:
            cfg = load_settings(self.settings, data_dir)
        except Exception as exc:  # ConfigError names the key; anything else is reported the same way
            self.config_error = str(exc)
            logger.error(f"aiimg: invalid plugin settings: {exc}")
            return
        route_core_logs(cfg)
        warn_missing_keys(cfg)
        # AstrBot's desktop build pip-installs plugin requirements into data/site-packages.
        site_packages = Path(get_astrbot_data_path()) / "site-packages"
        # Results that finish while nobody here waits (after a reload or restart) go to the chat directly.
        self.bridge = Bridge(
            cfg, data_dir=data_dir, site_packages=site_packages, reach=lambda s: proactive_target(context, s)
        )
        global _active
        _active = self.bridge

    async def initialize(self) -> None:
        if self.bridge is not None:
            await self.bridge.start()

    async def terminate(self) -> None:
        global _active
        if self.bridge is not None:
            if _active is self.bridge:
                _active = None
            await self.bridge.stop()

    # ---- commands -------------------------------------------------------------------

    async def _command(self, event: AstrMessageEvent) -> None:
        event.should_call_llm(True)
        event.set_extra(HANDLED, True)
        if self.bridge is None:
            await event.send(MessageChain().message(f"aiimg 插件配置错误：{self.config_error}"))
        else:
            request = self.bridge.parse(event.message_str) or self.bridge.fallback_request(event)
            if request is not None:
                await self.bridge.handle(event, request)
        event.stop_event()

    @filter.command("aiimg", alias={"文生图", "生图", "画图", "绘图", "出图"})
    async def aiimg(self, event: AstrMessageEvent) -> None:
        """文生图：/aiimg <提示词> [比例或尺寸，如 16:9、4K、1024x1536]"""
        await self._command(event)

    @filter.command("aiedit", alias={"图生图", "改图", "修图"})
    async def aiedit(self, event: AstrMessageEvent) -> None:
        """改图：发送或引用图片，/aiedit <要怎么改> 或 /aiedit <预设名>"""
        await self._command(event)

    @filter.command("gedit", alias={"g改图"})
    async def gedit(self, event: AstrMessageEvent) -> None:
        """改图，优先用 Gemini 原生（之后仍按降级顺序）：/gedit <要怎么改>"""
        await self._command(event)

    @filter.command("qedit", alias={"q改图"})
    async def qedit(self, event: AstrMessageEvent) -> None:
        """改图，优先用 Gitee 千问异步（之后仍按降级顺序）：/qedit <要怎么改>"""
        await self._command(event)

    @filter.command("g自拍")
    async def gselfie(self, event: AstrMessageEvent) -> None:
        """自拍，优先用 Gemini 原生：/g自拍 [要求]"""
        await self._command(event)

    @filter.command("q自拍")
    async def qselfie(self, event: AstrMessageEvent) -> None:
        """自拍，优先用 Gitee 千问异步：/q自拍 [要求]"""
        await self._command(event)

    @filter.command("自拍")
    async def selfie(self, event: AstrMessageEvent) -> None:
        """Bot 自拍：/自拍 [要求]（需先设置自拍参考照）"""
        await self._command(event)

    @filter.command("自拍参考")
    async def selfie_reference(self, event: AstrMessageEvent) -> None:
        """自拍参考照：/自拍参考 设置|查看|删除|帮助"""
        await self._command(event)

    @filter.command("视频")
    async def video(self, event: AstrMessageEvent) -> None:
        """图生视频：发送或引用图片，/视频 <提示词> 或 /视频 <预设名> [补充]"""
        await self._command(event)

    @filter.command("视频预设列表")
    async def video_presets(self, event: AstrMessageEvent) -> None:
        """列出视频预设"""
        await self._command(event)

    @filter.command("预设列表")
    async def edit_presets(self, event: AstrMessageEvent) -> None:
        """列出改图预设"""
        await self._command(event)

    @filter.command("改图帮助")
    async def edit_help(self, event: AstrMessageEvent) -> None:
        """改图用法与预设"""
        await self._command(event)

    @filter.command("重发图片")
    async def resend(self, event: AstrMessageEvent) -> None:
        """重发本会话上一次生成的结果：/重发图片"""
        await self._command(event)

    @filter.custom_filter(FallbackFilter, priority=-10)
    async def fallback(self, event: AstrMessageEvent) -> None:
        """Preset commands (/<预设名>) and commands that follow an image or an @ in the message."""
        if self.bridge is None or event.get_extra(HANDLED):
            return
        request = self.bridge.fallback_request(event)
        if request is None:
            return
        event.should_call_llm(True)
        await self.bridge.handle(event, request)
        event.stop_event()

    # ---- LLM tools -----------------------------------------------------------------

    @filter.llm_tool(name="aiimg_generate")
    async def aiimg_generate(
        self,
        event: AstrMessageEvent,
        prompt: str = "",
        mode: str = "auto",
        backend: str = "auto",
        output: str = "",
    ) -> str:
        """生成或编辑图片，也可以生成 Bot 自己的自拍。任务提交后立即返回，图片稍后直接发送给用户，不要重复调用。

        Args:
            prompt(string): 画面描述（用户的原话即可）；自拍时为对自拍的要求
            mode(string): auto（默认：像自拍请求且有参考照→自拍，消息带图→改图，否则文生图）、text（文生图）、edit（改图，需要用户发送或引用图片）、selfie_ref（用参考照自拍）
            backend(string): auto（默认，按配置的服务商和降级顺序）或服务商别名，如 grok、gemini、gemini_native、openai_compat、gitee、gitee_async、jimeng
            output(string): 输出尺寸，可空；如 4K、2K、1K、1024x1536 或比例 16:9
        """
        if self.bridge is None:
            return f"aiimg 插件配置错误：{self.config_error}"
        later = proactive_sink(self.context, event.unified_msg_origin)
        return await self.bridge.tool(event, prompt=prompt, mode=mode, backend=backend, output=output, later=later)

    @filter.llm_tool(name="aiimg_generate_video")
    async def aiimg_generate_video(self, event: AstrMessageEvent, prompt: str = "") -> str:
        """生成一段短视频（图生视频）。消息里有图片（发送、引用或 @ 某人的头像）时用它作为首帧，没有时先按描述生成首帧图片。任务提交后立即返回，视频几分钟后直接发送给用户，不要重复调用。

        Args:
            prompt(string): 视频内容描述：画面里有什么、发生什么动作、镜头怎么动（用户的原话即可）
        """
        if self.bridge is None:
            return f"aiimg 插件配置错误：{self.config_error}"
        later = proactive_sink(self.context, event.unified_msg_origin)
        return await self.bridge.video_tool(event, prompt=prompt, later=later)
