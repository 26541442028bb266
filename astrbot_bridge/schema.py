"""The plugin's ``_conf_schema.json``, generated from ``services.config.Config``.

Types and defaults come from the Config structs themselves, so the settings page can
never offer a key the core rejects or miss one it has; this module adds only what a
settings page needs on top: Chinese descriptions, dropdowns of provider aliases, and the
``condition`` that shows a provider's block only while that provider is selected (like
the old plugin). ``deploy/build_astrbot_plugin.py --schema`` writes the file; a test
checks the committed file is current.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgspec
import msgspec.inspect as mi

from ..services.config import Config
from ..services.domain.config import ConfigBase

__all__ = ("ADVANCED", "build_schema", "render_json")

ADVANCED = frozenset({"retention", "policy", "actors", "network", "limits", "log", "data_dir", "max_cached_images"})
"""Top-level keys shown folded ("more settings"): defaults suit almost everyone."""

_LEAF: dict[str, tuple[str, str]] = {
    "provider": ("服务商", "从下拉框选择；下方只显示所选服务商的参数"),
    "fallback_1": ("降级服务商 1", "主服务商失败时按 1 → 2 → 3 依次尝试；留空表示不启用"),
    "fallback_2": ("降级服务商 2", "留空表示不启用"),
    "fallback_3": ("降级服务商 3", "留空表示不启用"),
    "fallback_providers": ("降级服务商（旧版列表）", "旧版字段，在 fallback_1..3 之后读取"),
    "base_url": (
        "Base URL",
        "填 API 根地址，不要填 /chat/completions 这类具体接口。路径里已有版本段（/v1、/v1beta/openai、"
        "/api/paas/v4、/api/v3 等）时原样使用，否则自动补 /v1；特殊网关请打开下面的“Base URL 原样使用”",
    ),
    "base_url_exact": (
        "Base URL 原样使用",
        "打开后不补 /v1、不去掉接口后缀，请求直接发到 <Base URL>/images/generations 等；"
        "如 Google 填 https://generativelanguage.googleapis.com/v1beta/openai",
    ),
    "api_url": ("API 地址", ""),
    "api_keys": ("API Keys", "可填多个，轮流使用"),
    "api_key": ("API Key", ""),
    "apikey": ("API Key", ""),
    "model": ("模型", ""),
    "size": ("默认尺寸", "如 1024x1024、4096x4096；消息里写的比例/尺寸优先"),
    "resolution": ("默认分辨率", "1K / 2K / 4K"),
    "timeout": ("超时（秒）", "一次尝试的最长时间"),
    "max_retries": ("重试次数", "限流/网络/服务端错误时在同一服务商上重试的次数"),
    "supports_edit": ("支持改图", "网关不支持图片输入时关闭，改图会直接交给降级服务商"),
    "api_mode": (
        "接口模式",
        "chat：请求 <API 根地址>/chat/completions，从回复中解析图片；images：请求 <API 根地址>/images/generations"
        "（改图 /images/edits）",
    ),
    "extra_body": ("额外请求参数", "原样合并进请求体的 JSON 对象"),
    "use_proxy": ("使用代理", ""),
    "proxy_url": ("代理地址", ""),
    "cookie_list": ("Cookie 列表", "每行 conversation_id:Cookie，轮流使用"),
    "default_style": ("默认风格", ""),
    "default_ratio": ("默认比例", ""),
    "default_model": ("默认模型", ""),
    "negative_prompt": ("反向提示词", ""),
    "num_inference_steps": ("推理步数", ""),
    "guidance_scale": ("引导系数", ""),
    "poll_interval": ("轮询间隔（秒）", ""),
    "poll_timeout": ("轮询超时（秒）", ""),
    "task_types": ("任务类型", "Gitee 改图任务类型：id / style / subject / background / element"),
    "enabled": ("启用", ""),
    "delay": ("模拟延迟（秒）", "仅用于演示/压测"),
}

_PATH: dict[str, tuple[str, str]] = {
    "draw": ("生图（文生图）", "先选 draw.provider，再把对应的服务商参数填完整"),
    "edit": ("改图（图生图）", "先选 edit.provider，再把对应的服务商参数填完整"),
    "edit.fallback": ("改图降级策略", ""),
    "edit.fallback.enabled": ("启用降级", "关闭后只使用 edit.provider"),
    "edit.fallback.max_retries": ("每个服务商的重试次数", ""),
    "edit.fallback.retry_delay": (
        "重试间隔（秒）",
        "改图/自拍在同一服务商重试前等待的秒数，之后每次翻倍，最多 policy.max_backoff 秒",
    ),
    "edit.presets": ("改图预设", "每行 名称:提示词，可用 /<名称> [补充] 或 /改图 <名称> 触发"),
    "selfie": ("自拍", "Bot 自拍：参考照 + 改图链"),
    "selfie.enabled": ("启用自拍", ""),
    "selfie.reference_images": ("自拍参考照（WebUI 上传）", "优先于聊天中 /自拍参考 设置 的参考照；最多 8 张"),
    "selfie.prefer_provider": ("自拍优先服务商", "auto：使用改图链"),
    "selfie.gitee_task_types": ("Gitee 自拍任务类型", ""),
    "selfie.prompt_prefix": ("自拍提示词前缀", "留空使用默认的人脸一致性提示词"),
    "selfie.max_references": ("参考照数量上限", ""),
    "video": ("视频", "Grok Imagine 图生视频：/视频 <提示词>"),
    "video.provider": ("视频服务商", ""),
    "video.server_url": (
        "服务地址",
        "如 https://api.x.ai 或网关根地址；/v1 可带可不带，粘贴的 /v1/chat/completions 等接口地址也会还原成根地址",
    ),
    "video.api_mode": (
        "接口模式",
        "chat：POST /v1/chat/completions（提示词 + 首帧图），从回复中找视频链接，grok2api 类网关用这个；"
        "videos：xAI 官方异步接口，POST /v1/videos/generations 后每隔“轮询间隔”GET /v1/videos/{id} 直到完成。"
        "时长、比例、分辨率只在 videos 模式下发送",
    ),
    "video.model": (
        "模型",
        "chat 模式默认 grok-imagine-0.9；videos 模式下留空或仍为 grok-imagine-0.9 时改用 grok-imagine-video",
    ),
    "video.timeout_seconds": ("单次请求超时（秒）", "每个 HTTP 请求（提交、每次轮询）的上限；整个任务见“整个任务超时”"),
    "video.empty_response_retry": ("空响应重试次数", "chat 模式：回复里没有视频链接时再问几次"),
    "video.retry_delay": ("重试间隔（秒）", "chat 模式：两次空响应重试之间等待的秒数"),
    "video.poll_interval": ("轮询间隔（秒）", "videos 模式：两次查询任务状态之间的秒数"),
    "video.duration": ("时长（秒）", "videos 模式：1–15 秒；0 表示由服务端决定"),
    "video.aspect_ratio": (
        "画面比例",
        "videos 模式：1:1、16:9、9:16、4:3、3:4、3:2、2:3；留空跟随首帧图片",
    ),
    "video.resolution": ("分辨率", "videos 模式：480p 或 720p；留空由服务端决定"),
    "video.send_mode": (
        "发送方式",
        "auto：先按链接发视频，失败再发文件，最后发文字链接；url：只试链接，再发文字链接；file：只试文件，再发文字链接",
    ),
    "video.send_timeout_seconds": ("发送超时（秒）", ""),
    "video.download_timeout_seconds": ("下载超时（秒）", ""),
    "video.max_cached_videos": ("缓存视频数量", "0 表示不清理"),
    "video.presets": ("视频预设", "每行 名称:提示词，用 /视频 <名称> [补充] 触发"),
    "video.max_bytes": ("视频大小上限（字节）", ""),
    "video.timeout": ("整个任务超时（秒）", ""),
    "nats": ("消息总线（NATS）", "url 留空：在 AstrBot 内启动内置的 aiimg；填写：连接外部的 aiimg 部署"),
    "nats.url": ("NATS 地址", "留空 = 内置模式；例如 nats://127.0.0.1:4222，多个用逗号分隔"),
    "nats.prefix": ("主题前缀", "同一 NATS 上区分多套部署；需与外部 aiimg 一致"),
    "retention": ("保留时间", ""),
    "policy": ("重试与熔断策略", "哪些失败原因在同一服务商上重试；连续失败的服务商暂时跳过（熔断）"),
    "policy.breaker_reasons": ("计入熔断的失败原因", "这些原因连续出现会让服务商被暂时跳过，所有路由共享"),
    "policy.breaker_threshold": ("熔断阈值", "连续失败多少次后暂时跳过该服务商（带 Retry-After 的失败立即熔断）"),
    "policy.breaker_cooldown": ("熔断时长（秒）", "之后放行一个任务试探；再次失败则时长翻倍"),
    "policy.breaker_max_cooldown": ("最长熔断时长（秒）", ""),
    "actors": ("并发", ""),
    "network": ("网络", "下载上游返回的 URL 时的限制"),
    "limits": ("请求上限", "单个任务的输入图片数量/大小、图片像素上限、每个客户端/用户同时进行的任务数"),
    "log": ("日志", "插件内运行时，核心日志写入 AstrBot 日志（带任务 ID，密钥已打码）"),
    "log.level": ("日志级别", "低于所选级别（debug < info < warning < error）的核心日志不输出"),
    "log.format": (
        "日志格式",
        "auto：插件内为 事件 键=值，独立运行时终端用 console、否则 json；console：事件 键=值；json：每行一个 JSON 对象",
    ),
    "data_dir": ("数据目录", "留空：AstrBot 的 data/plugin_data/<插件名>"),
    "max_cached_images": ("缓存图片数量", "超出后删除最旧的结果图片"),
    "debounce_interval": ("防抖间隔（秒）", "同一用户两次请求的最短间隔；被拒绝的请求不会延长间隔"),
    "max_user_concurrency": ("每用户并发上限", "同一用户同时进行的图片任务数；0 表示不限"),
}


@dataclass(frozen=True, slots=True)
class _Page:
    """What the settings page needs from the provider catalog: the aliases and the provider menus."""

    aliases: frozenset[str]
    options: dict[str, list[str]]

    @classmethod
    def of(cls, config_type: type[ConfigBase]) -> _Page:
        """Each menu lists every alias that can do the section's operation, in menu order."""
        caps = config_type.capabilities
        draw, edit, video = ([a for a, ops in caps.items() if op in ops] for op in ("draw", "edit", "video"))
        options = {
            "draw.provider": draw,
            "draw.fallback_1": ["", *draw],
            "draw.fallback_2": ["", *draw],
            "draw.fallback_3": ["", *draw],
            "edit.provider": edit,
            "edit.fallback_1": ["", *edit],
            "edit.fallback_2": ["", *edit],
            "edit.fallback_3": ["", *edit],
            "selfie.prefer_provider": ["auto", *edit],
            "video.provider": video,
        }
        return cls(frozenset(caps), options)


_TEXT = frozenset({"selfie.prompt_prefix", "edit.negative_prompt", "draw.gitee.negative_prompt"})
_INVISIBLE = frozenset({"draw.fallback_providers", "edit.fallback_providers", "video.supports_edit"})
"""Keys the page hides: legacy lists, and ``video.supports_edit`` (every block has it; a video is no edit)."""
_IMAGE_TYPES = ["png", "jpg", "jpeg", "webp"]


def _describe(path: str, key: str) -> tuple[str, str]:
    return _PATH.get(path) or _LEAF.get(key) or (key, "")


def _item(path: str, key: str, t: Any, default: Any, page: _Page) -> dict[str, Any]:
    description, hint = _describe(path, key)
    item: dict[str, Any] = {"description": description}
    if hint:
        item["hint"] = hint
    if isinstance(t, mi.StructType):
        item["type"] = "object"
        item["items"] = _items(path, t, default, page)
        return item
    if isinstance(t, mi.BoolType):
        item["type"] = "bool"
    elif isinstance(t, mi.IntType):
        item["type"] = "int"
    elif isinstance(t, mi.FloatType):
        item["type"] = "float"
    elif isinstance(t, mi.LiteralType):
        item["type"] = "string"
        item["options"] = list(t.values)
    elif isinstance(t, mi.StrType):
        item["type"] = "text" if path in _TEXT else "string"
    elif isinstance(t, mi.ListType):
        if path == "selfie.reference_images":
            item["type"] = "file"
            item["file_types"] = _IMAGE_TYPES
        else:
            item["type"] = "list"
            if isinstance(t.item_type, mi.LiteralType):
                item["options"] = list(t.item_type.values)
    elif isinstance(t, mi.DictType):
        item["type"] = "dict"
    else:  # a new field type the settings page cannot show: fail the build, not the user
        raise TypeError(f"{path}: no AstrBot settings type for {t!r}")
    item["default"] = default
    if path in page.options:
        item["options"] = page.options[path]
    if path in _INVISIBLE:
        item["invisible"] = True
    return item


def _items(prefix: str, t: mi.StructType, defaults: dict[str, Any], page: _Page) -> dict[str, Any]:
    out: dict[str, Any] = {}
    section = prefix.split(".")[0] if prefix else ""
    for field in t.fields:
        path = f"{prefix}.{field.name}" if prefix else field.name
        item = _item(path, field.name, field.type, defaults[field.name], page)
        # draw.<alias> / edit.<alias>: only while that alias is the selected provider.
        if section in ("draw", "edit") and prefix == section and field.name in page.aliases:
            item["condition"] = {"provider": field.name}
        if not prefix and field.name in ADVANCED:
            item["collapsed"] = True
        out[field.name] = item
    return out


def build_schema(config_type: type[ConfigBase] = Config) -> dict[str, Any]:
    """The AstrBot settings schema of the whole config tree (``Config``: every provider's
    block), defaults included."""
    info = mi.type_info(config_type)
    assert isinstance(info, mi.StructType)
    defaults = msgspec.to_builtins(config_type())
    return _items("", info, defaults, _Page.of(config_type))


def render_json() -> str:
    return json.dumps(build_schema(), ensure_ascii=False, indent=2) + "\n"


def _fmt(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else (value or '""')
    return text.replace("|", "\\|").replace("\n", " ")


def settings_table() -> str:
    """A Markdown table of the settings page (provider blocks folded to one row each), for the docs."""
    rows = ["| Key | Type | Default | Meaning |", "|---|---|---|---|"]

    def walk(items: dict[str, Any], prefix: str) -> None:
        for key, item in items.items():
            path = f"{prefix}.{key}" if prefix else key
            meaning = item["description"] + (f"：{item['hint']}" if item.get("hint") else "")
            if item["type"] == "object" and "condition" in item:
                keys = ", ".join(f"{k}={_fmt(v.get('default', {}))}" for k, v in item["items"].items())
                rows.append(f"| `{path}` | block | {keys} | shown while `provider` = `{key}` |")
            elif item["type"] == "object":
                rows.append(f"| `{path}` | object | | {meaning} |")
                walk(item["items"], path)
            elif not item.get("invisible"):
                options = f" ({' / '.join(o or '空' for o in item['options'])})" if item.get("options") else ""
                rows.append(f"| `{path}` | {item['type']}{options} | {_fmt(item['default'])} | {meaning} |")

    walk(build_schema(), "")
    return "\n".join(rows) + "\n"
