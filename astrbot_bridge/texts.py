"""Every text the bridge shows a chat user, in one place (Chinese, like the old plugin).

Failure texts name the providers that were tried and why, in a few words; the typed
reasons of ``messages.Reason`` map to short Chinese phrases here.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..messages import FailureSummary, JobCancelled, JobFailed, JobRejected, Reason

__all__ = (
    "ACK",
    "REASONS",
    "edit_help",
    "failure_text",
    "preset_list",
)

USAGE_DRAW = "请提供提示词！使用方法：/aiimg <提示词> [比例]"
USAGE_VIDEO = "用法: /视频 <提示词> 或 /视频 <预设名> [额外提示词]"
NEED_IMAGE_EDIT = "请发送或引用一张图片后再使用 /{command}（也可以 @ 某人，用他的头像）。"
NEED_IMAGE_VIDEO = "请发送或引用一张图片后再使用 /视频。"
NEED_IMAGE_TOOL = "请在消息中附带需要编辑的图片（可发送图片或引用图片）。"
TOO_FAST = "操作太快了，请稍后再试"
TOO_MANY = "你已有 {n} 个任务在进行中，请等完成后再试"
VIDEO_BUSY = "你已有一个视频任务正在进行中，请等待完成后再试"
VIDEO_DISABLED = "视频功能已关闭（video.enabled=false）"
SELFIE_DISABLED = "自拍功能已关闭（selfie.enabled=false）"
SELFIE_NO_REFS = "未设置自拍参考照。请先：发送图片 + /自拍参考 设置，或在 WebUI 配置 selfie.reference_images 上传。"
REF_HELP = (
    "自拍参考照用法：\n"
    "/自拍参考 设置 —— 附带（或引用）1~{limit} 张人像照片发送，保存为参考照\n"
    "/自拍参考 查看 —— 查看当前参考照\n"
    "/自拍参考 删除 —— 删除聊天中设置的参考照\n"
    "WebUI 中的 selfie.reference_images 优先于聊天设置。"
)
REF_UNKNOWN = "未知操作。用法：/自拍参考 设置|查看|删除|帮助"
REF_NEED_IMAGE = "请附带（或引用）参考照片后再发送 /自拍参考 设置"
REF_SAVED = "✅ 已保存 {n} 张自拍参考照。"
REF_SHOWN = "📌 当前自拍参考照来源：{source}，共 {n} 张（已展示 {m} 张）"
REF_NONE = "当前没有设置自拍参考照。"
REF_DELETED = "🗑️ 已删除 {n} 张自拍参考照。"
REF_DELETED_WEBUI = "（WebUI 配置的 selfie.reference_images 仍然有效，请在 WebUI 中移除。）"
BAD_IMAGE = "图片无法使用：{reason}"
BUS_DOWN = "图像服务暂不可用：{reason}"
TIMEOUT = "任务超时（>{seconds:.0f}s），已取消。"
SEND_FAILED = "结果已生成，但发送失败：{reason}"
VIDEO_LINK = "🎬 视频已生成：{url}"
VIDEO_NO_LINK = "视频已生成，但发送失败，且没有可用的链接。"
PREVIEW_NOTE = "原图较大（{size}），已发送压缩预览，原图见文件。"
RESTARTING = "插件正在重新加载，结果生成后会自动发送到这里。"
RESEND_NONE = "这里还没有可以重发的结果。"
RESEND_EXPIRED = "上次的结果已过期（超过保存期限），无法重发，请重新生成。"
TOOL_STARTED = "已开始{what}（任务 {job}），完成后会直接发送给用户，无需再次调用。"
TOOL_BAD_OUTPUT = "output 参数无效：{output}（可用 4K / 2K / 1K / 1024x1536 / 16:9）"
TOOL_EMPTY_PROMPT = "prompt 为空：请提供要生成的画面描述。"
TOOL_EMPTY_VIDEO_PROMPT = "prompt 为空：请描述视频里要发生什么。"
TOOL_VIDEO_FRAME_FIRST = (
    "已开始{what}：消息里没有图片，先按描述生成首帧图片再生成视频（任务 {job}），完成后会直接发送给用户，无需再次调用。"
)
VIDEO_FRAME_FAILED = "视频生成失败：首帧图片没有生成（{text}）"

ACK: Mapping[str, str] = {
    "draw": "🎨 收到，正在生成…",
    "edit": "🖌️ 收到，正在改图…",
    "selfie": "📸 收到，正在自拍…",
    "video": "🎬 收到，正在生成视频，可能需要几分钟…",
}
"""The immediate acknowledgement per operation."""

WHAT: Mapping[str, str] = {"draw": "生成图片", "edit": "编辑图片", "selfie": "生成自拍", "video": "生成视频"}

FAILED_PREFIX: Mapping[str, str] = {
    "draw": "生图失败",
    "edit": "改图失败",
    "selfie": "自拍失败",
    "video": "视频生成失败",
}

REASONS: Mapping[Reason, str] = {
    "rate_limited": "请求太频繁被限流",
    "quota_exhausted": "额度或余额已用完",
    "auth": "密钥无效或无权限",
    "bad_request": "请求被拒绝",
    "content_policy": "内容审核拦截",
    "no_image": "未返回图片",
    "unsupported": "不支持该操作",
    "timeout": "超时",
    "upstream_error": "服务商出错",
    "network": "网络错误",
    "invalid_response": "返回内容无效",
}
"""Typed failure reason → a short Chinese phrase."""


def _attempts(failures: list[FailureSummary]) -> str:
    """``grok（内容审核拦截）→ local ×2（超时）``: consecutive retries on one provider fold together."""
    groups: list[tuple[str, Reason, int]] = []
    for f in failures:
        if groups and groups[-1][0] == f.provider and groups[-1][1] == f.reason:
            provider, reason, n = groups[-1]
            groups[-1] = (provider, reason, n + 1)
        else:
            groups.append((f.provider, f.reason, 1))
    parts = [f"{p}{f' ×{n}' if n > 1 else ''}（{REASONS.get(r, r)}）" for p, r, n in groups]
    return " → ".join(parts)


def failure_text(op: str, end: JobFailed | JobCancelled | JobRejected) -> str:
    """One short line: what failed, which providers were tried, and why."""
    head = FAILED_PREFIX.get(op, "生成失败")
    if isinstance(end, JobCancelled):
        return f"{head}：任务已取消" + (f"（{end.reason}）" if end.reason else "")
    if isinstance(end, JobRejected):
        if end.reason == "too_many_jobs":
            return f"{head}：当前排队的任务太多，请稍后再试"
        return f"{head}：请求无效（{_short(end.message)}）"
    if end.failures:
        return f"{head}：已尝试 {_attempts(end.failures)}"
    return f"{head}：{_short(end.message) or '没有可用的服务商'}"


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def preset_list(title: str, presets: Mapping[str, str], how: str) -> str:
    if not presets:
        return f"{title}：暂无（在插件配置中添加 名称:提示词）"
    lines = [f"{title}（{how}）："] + [f"• {name}：{_short(prompt, 60)}" for name, prompt in presets.items()]
    return "\n".join(lines)


def edit_help(presets: Mapping[str, str]) -> str:
    head = (
        "改图用法：发送（或引用）图片，然后\n"
        "/改图 <要怎么改>（也可 /aiedit /图生图 /修图）\n"
        "/改图 <预设名> [补充] 或 /<预设名> [补充]\n"
        "不附图时可 @ 某人，用他的头像。\n"
        "/重发图片 —— 重发本会话上一次的结果"
    )
    return head + "\n\n" + preset_list("改图预设", presets, "/<预设名> [补充]")
