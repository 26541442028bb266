"""``gitee_async``: Gitee AI / Moark image edits through the async task API.

Submit ``POST {base}/async/images/edits`` as multipart (files sent as JSON are silently
dropped by Gitee), then poll ``GET {base}/task/{id}`` right away and every
``poll_interval`` seconds, at most ``poll_timeout // poll_interval`` times, and download
``output.file_url``. Status flows ``waiting → in_progress → success | failure |
cancelled``; ``failed`` (what the old plugin checked, and so never saw a real failure
until its timeout) is accepted too. A network error or 5xx while polling is skipped: the
task keeps running upstream, and the next poll will see it.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
import httpx
import msgspec
import structlog

from ..domain.config import ConfigBase
from ..domain.errors import ProviderFailure
from ..domain.settings import ProviderSettings
from ..infra.media import sniff_mime
from ._common import KeyRing, decode_base64, download, each_key, join, normalize_openai_base
from ._errors import Codes, Meaning, scrub
from ._gitee import gitee_failure, gitee_headers, gitee_message, gitee_said
from ._json import json_body, parse_json
from .base import AttemptContext, InputImage, Output, Provider

__all__ = ("TASK_TYPES", "GiteeAsyncProvider", "GiteeAsyncSettings", "task_types_for")

log = structlog.get_logger("aiimg.provider.gitee_async")

LABEL = "gitee_async"

TASK_TYPES = ("id", "style", "subject", "background", "element")
"""``task_types`` values Gitee's edit models take; anything else is dropped."""

SUCCESS = frozenset({"success", "succeeded", "completed"})
FAILED = frozenset({"failure", "failed", "error"})
CANCELLED = frozenset({"cancelled", "canceled"})

_LOST: Codes = {404: Meaning("upstream_error", "the task is unknown upstream")}
"""A 404 on a task poll: the upstream lost the task (not a missing endpoint)."""

_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif", "image/bmp": "bmp"}


class GiteeAsyncSettings(ProviderSettings, kw_only=True):
    base_url: str = "https://ai.gitee.com/v1"
    base_url_exact: bool = False
    """Use ``base_url`` exactly as given (no ``/v1`` appended, no endpoint suffix removed); off:
    ``/v1`` is appended only when the path names no version (``/v1``, ``/v1beta/openai``, ``/api/paas/v4``)."""
    api_keys: list[str] = msgspec.field(default_factory=list)
    model: str = "Qwen-Image-Edit-2511"
    num_inference_steps: int = 4
    guidance_scale: float = 1.0
    poll_interval: float = 5.0
    poll_timeout: float = 300.0
    task_types: list[str] = msgspec.field(default_factory=lambda: ["id"])
    timeout: float = 330.0

    def configured(self) -> bool:
        return bool(self.base_url.strip() and self.api_keys)


class GiteeAsyncProvider(Provider):
    alias = "gitee_async"
    operations = frozenset({"edit", "selfie"})
    settings_type = GiteeAsyncSettings
    short_names = ("gitee",)
    menu_order = 80
    block_order = 70

    def __init__(self, config: ConfigBase) -> None:
        super().__init__(config)
        self._rings: dict[tuple[str, ...], KeyRing] = {}

    async def run(self, ctx: AttemptContext) -> Output:
        settings = ctx.settings
        assert isinstance(settings, GiteeAsyncSettings)
        if ctx.op not in ("edit", "selfie"):
            raise ProviderFailure("unsupported", f"{LABEL} only edits; drawing goes to gitee")
        if not ctx.inputs:
            raise ProviderFailure("bad_request", f"{LABEL}: an edit needs at least one input image")
        if not settings.model.strip():
            raise ProviderFailure("bad_request", f"{LABEL}: no model configured")
        base = normalize_openai_base(settings.base_url, exact=settings.base_url_exact)
        types = task_types_for(ctx)
        ring = self._rings.setdefault(tuple(settings.api_keys), KeyRing(settings.api_keys))

        async def call(position: int, key: str) -> Output:
            task = await _submit(ctx, settings, base, types, position, key)
            ready = _ready_output(task)
            if ready is not None:  # Gitee sometimes answers the submit with the image itself
                return await _fetch(ctx, ready)
            task_id = str(task.get("task_id") or task.get("id") or "")
            if not task_id:
                raise ProviderFailure("invalid_response", f"{LABEL}: the submit reply has no task_id")
            output = await _poll(ctx, settings, base, task_id, position, key)
            return await _fetch(ctx, output)

        return await each_key(ring, call)


def task_types_for(ctx: AttemptContext) -> list[str]:
    """Selfies use ``selfie.gitee_task_types``; edits the block's ``task_types``. Unknown values dropped."""
    settings = ctx.settings
    assert isinstance(settings, GiteeAsyncSettings)
    wanted = ctx.config.selfie.gitee_task_types if ctx.op == "selfie" else settings.task_types
    out: list[str] = []
    for t in wanted:
        value = t.strip().lower()
        if value in TASK_TYPES and value not in out:
            out.append(value)
    return out


def _filename(i: int, img: InputImage) -> tuple[str, str]:
    mime = sniff_mime(img.data) or img.mime or "application/octet-stream"
    return f"image_{i}.{_EXT.get(mime, 'bin')}", mime


async def _submit(
    ctx: AttemptContext, settings: GiteeAsyncSettings, base: str, types: list[str], position: int, key: str
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "prompt": ctx.prompt,
        "model": settings.model.strip(),
        "num_inference_steps": str(settings.num_inference_steps),
        "guidance_scale": f"{settings.guidance_scale:g}",
    }
    if types:
        fields["task_types"] = types
    files = []
    for i, img in enumerate(ctx.inputs):
        name, mime = _filename(i, img)
        files.append(("image", (name, img.data, mime)))
    resp = await ctx.http.post(join(base, "async/images/edits"), data=fields, files=files, headers=gitee_headers(key))
    if resp.status_code >= 400:
        raise gitee_failure(f"{LABEL} submit", resp, position=position, key=key)
    body = parse_json(LABEL, resp)
    if not isinstance(body, dict):
        raise ProviderFailure("invalid_response", f"{LABEL}: the submit reply is not a JSON object")
    if body.get("error") and not body.get("task_id"):
        raise gitee_said(
            f"{LABEL} submit", scrub(gitee_message(body), key), position=position, status=200, default="bad_request"
        )
    return body


async def _poll(
    ctx: AttemptContext, settings: GiteeAsyncSettings, base: str, task_id: str, position: int, key: str
) -> dict[str, Any]:
    """Poll until a terminal status; returns the task's ``output`` on success."""
    interval = max(0.001, settings.poll_interval)
    rounds = max(1, math.floor(settings.poll_timeout / interval + 1e-9))
    url = join(base, f"task/{task_id}")
    status = "waiting"
    for _ in range(rounds):
        task = await _poll_once(ctx.http, url, position, key)
        if task is not None:
            status = str(task.get("status") or "").lower() or status
            if status in SUCCESS:
                ready = _ready_output(task)
                if ready is None:
                    raise ProviderFailure("invalid_response", f"{LABEL}: task {task_id} succeeded without a file_url")
                return ready
            if status in FAILED:
                raise gitee_said(LABEL, f"task failed: {scrub(_task_error(task), key)}", position=position)
            if status in CANCELLED:
                raise ProviderFailure("upstream_error", f"{LABEL}: task {task_id} was cancelled upstream")
        await anyio.sleep(interval)
    raise ProviderFailure(
        "timeout", f"{LABEL}: task {task_id} not finished within {settings.poll_timeout:g}s (last status {status})"
    )


async def _poll_once(http: httpx.AsyncClient, url: str, position: int, key: str) -> dict[str, Any] | None:
    """One task GET; ``None`` for a blip worth polling through (network error, 5xx, junk body)."""
    try:
        resp = await http.get(url, headers=gitee_headers(key))
    except httpx.TransportError as exc:
        log.info("poll_network_error", error=type(exc).__name__)
        return None
    if resp.status_code >= 500:
        log.info("poll_upstream_error", status=resp.status_code)
        return None
    if resp.status_code >= 400:
        raise gitee_failure(f"{LABEL} task", resp, position=position, key=key, codes=_LOST)
    try:
        task = json_body(LABEL, resp)
    except ValueError:
        log.info("poll_invalid_body")
        return None
    if not isinstance(task, dict):
        return None
    if task.get("error") and not task.get("status"):
        # The task API reports a bad id or token as a top-level {"error": code, "message": …}.
        raise gitee_said(f"{LABEL} task", scrub(gitee_message(task), key), position=position, status=resp.status_code)
    return task


def _ready_output(task: dict[str, Any]) -> dict[str, Any] | None:
    output = task.get("output")
    if isinstance(output, dict) and (output.get("file_url") or output.get("image") or output.get("url")):
        return output
    return None


def _task_error(task: dict[str, Any]) -> str:
    output = task.get("output")
    if isinstance(output, dict) and output.get("error"):
        err = output["error"]
        if isinstance(err, dict):
            return str(err.get("message") or err.get("code") or "unknown error")
        return str(err)
    if isinstance(task.get("error"), (str, dict)) and task["error"]:
        return gitee_message(task)
    return str(task.get("message") or task.get("status") or "unknown error")


async def _fetch(ctx: AttemptContext, output: dict[str, Any]) -> Output:
    url = output.get("file_url") or output.get("url")
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        data, final = await download(ctx.downloads, url, ctx.config.network, label=f"{LABEL} result")
        return Output(data=data, source_url=final)
    image = output.get("image") or url
    if isinstance(image, str) and image:
        if image.startswith(("http://", "https://")):
            data, final = await download(ctx.downloads, image, ctx.config.network, label=f"{LABEL} result")
            return Output(data=data, source_url=final)
        return Output(data=decode_base64(image))
    raise ProviderFailure("invalid_response", f"{LABEL}: the task output has no file_url")
