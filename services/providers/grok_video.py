"""``grok_video``: image-to-video with Grok Imagine, in either of two wire dialects.

* ``api_mode = "chat"`` (the old plugin's way, and what grok2api-style gateways speak):
  one ``POST {root}/v1/chat/completions`` with the prompt and the start frame as a data
  URL; the reply carries a video URL somewhere (see ``_video_urls``). A 200 without a
  URL is asked again up to ``empty_response_retry`` times.
* ``api_mode = "videos"`` (xAI's deferred API): ``POST {root}/v1/videos/generations``
  returns a ``request_id``; ``GET {root}/v1/videos/{id}`` is polled every
  ``poll_interval`` until ``done`` / ``failed`` / ``expired`` or the attempt's deadline (an
  HTTP 202 with an empty body, xAI's "still rendering", counts as ``pending``).

Either way the video is downloaded (size cap ``max_bytes``) and returned with the URL it
came from, so the bridge can send it by URL. ``server_url`` may be a bare host, end in
``/v1`` or be a pasted endpoint: the API root is normalised once, so there is no
``/v1/v1/…`` (an old-plugin bug). ``timeout_seconds`` bounds each HTTP call; the block's
``timeout`` bounds the whole attempt. HTTP errors are not retried here: the router
retries retryable reasons on this provider up to ``max_retries`` (policy.retry_reasons).
"""

from __future__ import annotations

import time
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import anyio
import httpx
import structlog

from ...messages import Reason
from ..domain.errors import ProviderFailure
from ..domain.settings import VideoSection
from ._chat import reply_text
from ._common import b64_text, download, join, normalize_openai_base
from ._errors import Codes, Meaning, error_text, failure_for, http_failure, moderated, scrub, short
from ._json import parse_json
from ._video_urls import find_video_url
from .base import AttemptContext, Output, Provider

__all__ = ("GrokVideoProvider", "VideoSettings", "video_api_root")

log = structlog.get_logger("aiimg.providers.grok_video")

LABEL = "grok_video"
VIDEOS_MODEL = "grok-imagine-video"
"""Model for ``api_mode = "videos"`` when ``video.model`` is empty or still the chat-mode default."""
CHAT_DEFAULT_MODEL = "grok-imagine-0.9"
XAI_RATIOS = frozenset({"1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"})
XAI_RESOLUTIONS = frozenset({"480p", "720p"})

_DONE = frozenset({"done", "completed", "succeeded", "success"})
_FAILED = frozenset({"failed", "error", "cancelled", "canceled", "rejected"})
_EXPIRED = frozenset({"expired"})
_TRANSIENT: frozenset[Reason] = frozenset({"rate_limited", "upstream_error", "network", "timeout"})
_LOST: Codes = {404: Meaning("upstream_error", "the upstream lost the task")}
"""A 404 while polling: the task is gone (not a missing endpoint)."""
_VIDEO_SUFFIXES = ("/v1/videos/generations", "/videos/generations", "/v1/videos", "/videos")


def video_api_root(server_url: str) -> str:
    """The ``…/v1`` API root for a ``server_url`` given bare, with ``/v1`` or as a pasted endpoint."""
    value = server_url.strip().rstrip("/")
    for suffix in _VIDEO_SUFFIXES:
        if value.lower().endswith(suffix):
            value = value[: -len(suffix)]
            break
    return normalize_openai_base(value)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class VideoSettings(VideoSection, kw_only=True):
    """``video.*``: Grok Imagine video (``grok_video``)."""

    provider: str = "grok_video"
    server_url: str = "https://api.x.ai"
    api_mode: Literal["chat", "videos"] = "chat"
    model: str = "grok-imagine-0.9"
    poll_interval: float = 5.0
    """``api_mode = "videos"``: seconds between ``GET /v1/videos/{id}`` polls."""
    max_bytes: int = 200 * 1024 * 1024
    timeout: float = 600.0
    """Whole attempt (request, polling, download). ``timeout_seconds`` bounds each HTTP call."""
    duration: int = 0
    """``api_mode = "videos"``: seconds of video (1-15); 0 leaves it to the upstream."""
    aspect_ratio: str = ""
    """``api_mode = "videos"``: e.g. ``16:9``; empty follows the input image. A job's ratio wins."""
    resolution: str = ""
    """``api_mode = "videos"``: ``480p`` | ``720p``; empty leaves it to the upstream."""

    def configured(self) -> bool:
        return self.enabled and bool(self.server_url.strip() and self.api_key)


class GrokVideoProvider(Provider):
    alias = "grok_video"
    operations = frozenset({"video"})
    settings_type = VideoSettings
    menu_order = 90
    produces_video = True

    async def run(self, ctx: AttemptContext) -> Output:
        s = ctx.settings
        if not isinstance(s, VideoSettings):
            raise ProviderFailure("unsupported", f"{LABEL} only serves the video operation")
        key = s.api_key.strip()
        try:
            return await _Attempt(ctx, s, key).run()
        except ProviderFailure as exc:
            if key and key in exc.message:  # an upstream may echo the key back in its error body
                raise ProviderFailure(
                    exc.reason, exc.message.replace(key, "***"), status=exc.status, retry_after=exc.retry_after
                ) from None
            raise


class _Attempt:
    """One attempt's state: settings, key, API root and the HTTP calls."""

    def __init__(self, ctx: AttemptContext, settings: VideoSettings, key: str) -> None:
        self.ctx = ctx
        self.s = settings
        self.key = key
        self.root = video_api_root(settings.server_url)
        self.origin = _origin(self.root)

    async def run(self) -> Output:
        ctx, s = self.ctx, self.s
        if not s.enabled:
            raise ProviderFailure("unsupported", f"{LABEL}: video is disabled (video.enabled = false)")
        if not self.key:
            raise ProviderFailure("auth", f"{LABEL}: no API key configured (video.api_key)")
        if ctx.op != "video":
            raise ProviderFailure("unsupported", f"{LABEL} cannot {ctx.op}")
        if not ctx.inputs:
            raise ProviderFailure("bad_request", f"{LABEL}: a video needs an input image (the start frame)")
        if not ctx.prompt.strip():
            raise ProviderFailure("bad_request", f"{LABEL}: a video needs a prompt")
        url = await (self.videos() if s.api_mode == "videos" else self.chat())
        log.info("video_url_found", host=urlsplit(url).hostname, mode=s.api_mode)
        # A gateway that serves results from its own origin may want the key; another host never gets it.
        same_origin = _origin(url) == self.origin
        data, _ = await download(
            ctx.downloads,
            url,
            ctx.config.network,
            label=f"{LABEL} download",
            max_bytes=s.max_bytes,
            timeout=max(1.0, min(s.download_timeout_seconds, ctx.remaining())),
            headers={"Authorization": f"Bearer {self.key}"} if same_origin else None,
        )
        return Output(data=data, source_url=url)

    # ---- chat mode -------------------------------------------------------------

    async def chat(self) -> str:
        s = self.s
        url = join(self.root, "chat/completions")
        body = {
            "model": s.model or CHAT_DEFAULT_MODEL,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": self.ctx.prompt.strip()},
                        {"type": "image_url", "image_url": {"url": self._data_url()}},
                    ],
                }
            ],
        }
        passes = max(0, s.empty_response_retry) + 1
        said = ""
        for n in range(passes):
            if n and s.retry_delay > 0:
                await anyio.sleep(min(s.retry_delay, self.ctx.remaining()))
            reply = parse_json(LABEL, await self._send("POST", url, json=body))
            self._raise_for_error_body(reply)
            if found := find_video_url(reply, origin=self.origin):
                return found
            said = _content_text(reply)
            log.info("video_reply_without_url", pass_=n + 1, passes=passes)
        reason: Reason = "content_policy" if moderated(said) else "no_image"
        tail = f": {short(said, 120)}" if said else ""
        raise ProviderFailure(reason, f"{LABEL}: no video URL in the reply after {passes} tries{tail}")

    # ---- videos mode -----------------------------------------------------------

    async def videos(self) -> str:
        s, ctx = self.s, self.ctx
        ratio, resolution = _video_options(ctx.output)
        model = s.model if s.model and s.model != CHAT_DEFAULT_MODEL else VIDEOS_MODEL
        payload: dict[str, Any] = {"model": model, "prompt": ctx.prompt.strip(), "image": {"url": self._data_url()}}
        if s.duration > 0:
            payload["duration"] = max(1, min(15, s.duration))
        if ratio := ratio or s.aspect_ratio.strip():
            payload["aspect_ratio"] = ratio
        if resolution := resolution or s.resolution.strip().lower():
            payload["resolution"] = resolution
        created = parse_json(LABEL, await self._send("POST", join(self.root, "videos/generations"), json=payload))
        if not isinstance(created, dict):
            raise ProviderFailure("invalid_response", f"{LABEL}: create reply is not a JSON object")
        task = next((str(created[k]) for k in ("request_id", "task_id", "id") if created.get(k)), "")
        if not task:
            if url := self._finished(created):  # a gateway that answers synchronously
                return url
            raise ProviderFailure("invalid_response", f"{LABEL}: create reply has no request_id")
        log.info("video_task_created", request_id=task)
        status_url = join(self.root, f"videos/{quote(task, safe='')}")
        started = time.monotonic()
        state: Any = created
        misses = 0
        while True:
            if url := self._finished(state):
                return url
            status = str(state.get("status") or "pending").lower() if isinstance(state, dict) else "pending"
            if time.monotonic() + s.poll_interval >= ctx.deadline:
                waited = time.monotonic() - started
                raise ProviderFailure("timeout", f"{LABEL}: task still {status} after {waited:.0f}s")
            await anyio.sleep(s.poll_interval)
            try:
                state = _poll_state(await self._send("GET", status_url, poll=True))
                misses = 0
            except Exception as exc:
                # A hiccup while polling must not throw away a paid generation: keep polling.
                failure = failure_for(exc)
                misses += 1
                if failure is None or failure.reason not in _TRANSIENT or misses > max(0, s.max_retries):
                    raise
                log.info("video_poll_failed", reason=failure.reason, error=failure.message, misses=misses)

    def _finished(self, state: Any) -> str | None:
        """The video URL if ``state`` is done; raise for failed/expired; None while pending."""
        if not isinstance(state, dict):
            raise ProviderFailure("invalid_response", f"{LABEL}: task status is not a JSON object")
        status = str(state.get("status") or "").lower()
        raw_video = state.get("video")
        video: dict[str, Any] = raw_video if isinstance(raw_video, dict) else {}
        if status in _FAILED:
            detail = error_text(state.get("error")) if state.get("error") else status
            body = str(state.get("error") or "") + " " + detail
            reason: Reason = "content_policy" if moderated(body) else "upstream_error"
            raise ProviderFailure(reason, f"{LABEL}: generation failed: {short(detail, 160)}")
        if status in _EXPIRED:
            # The upstream gave up on the request before it finished: the same outcome as our own
            # deadline, so ``timeout``. Not retried on this provider by default (a retry would pay for
            # another multi-minute generation); add "timeout" to policy.retry_reasons to opt in.
            raise ProviderFailure("timeout", f"{LABEL}: the upstream expired the request before it finished")
        if status and status not in _DONE:
            return None
        if video.get("respect_moderation") is False:
            raise ProviderFailure("content_policy", f"{LABEL}: the video was withheld by moderation")
        for value in (video.get("url"), video.get("video_url"), state.get("video_url"), state.get("url")):
            if isinstance(value, str) and value.strip():
                url = value.strip()
                if url.startswith("/"):
                    url = self.origin + url
                if urlsplit(url).scheme in ("http", "https"):
                    return url
        if status:  # done, but nothing to fetch
            raise ProviderFailure("no_image", f"{LABEL}: task is done but has no video URL")
        return None

    # ---- HTTP ------------------------------------------------------------------

    def _data_url(self) -> str:
        image = self.ctx.inputs[0]
        return f"data:{image.mime};base64,{b64_text(image.data)}"

    async def _send(self, method: str, url: str, *, json: Any = None, poll: bool = False) -> httpx.Response:
        left = max(1.0, self.ctx.remaining())
        read = min(self.s.timeout_seconds, left)
        timeout = httpx.Timeout(read, connect=min(10.0, left), write=min(60.0, left), pool=min(10.0, left))
        headers = {"Authorization": f"Bearer {self.key}", "Accept": "application/json"}
        # Transport errors and timeouts go up as they are: the actor maps them (_errors.failure_for).
        resp = await self.ctx.http.request(method, url, json=json, headers=headers, timeout=timeout)
        if resp.status_code >= 400:
            # xAI answers a wrong key with 400 "Incorrect API key provided" (provider-wire-formats §3.4):
            # auth, by the shared words.
            raise http_failure(
                LABEL,
                resp,
                credential="the API key",
                clean=lambda text: scrub(text, self.key),
                codes=_LOST if poll else None,
                html="an HTML error page",
            )
        return resp

    def _raise_for_error_body(self, reply: Any) -> None:
        """A 200 whose body is an error object (some gateways do this) is a failure, not an empty reply."""
        if isinstance(reply, dict) and reply.get("error") and not reply.get("choices"):
            text = error_text(reply)
            reason: Reason = "content_policy" if moderated(text) else "upstream_error"
            raise ProviderFailure(reason, f"{LABEL}: {short(text, 160)}", status=200)


def _poll_state(resp: httpx.Response) -> Any:
    """A status poll's body. xAI's deferred API answers a request that is still rendering with
    HTTP 202 and no body at all: that is ``pending``, not a malformed reply."""
    if resp.status_code == 202 and not resp.content.strip():
        return {"status": "pending"}
    return parse_json(LABEL, resp)


def _content_text(reply: Any) -> str:
    """The assistant's text, for the error message when no URL came back."""
    return reply_text(reply)


def _video_options(output: str) -> tuple[str, str]:
    """``(aspect_ratio, resolution)`` from a job's output intent such as ``16:9 720p``."""
    ratio = resolution = ""
    for token in output.split():
        t = token.strip().lower().replace("：", ":")
        if t in XAI_RESOLUTIONS:
            resolution = t
        elif t in XAI_RATIOS:
            ratio = t
        else:
            allowed = ", ".join(sorted(XAI_RATIOS)) + ", 480p, 720p"
            raise ProviderFailure("bad_request", f"{LABEL}: output {token!r} is not a video option ({allowed})")
    return ratio, resolution
