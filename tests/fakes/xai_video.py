"""A fake Grok Imagine video upstream, speaking both dialects ``grok_video`` uses.

* ``POST /v1/chat/completions`` — the gateway style the old plugin used: the reply
  carries the video URL in one of several shapes (``<video src>``, markdown link,
  content parts, attachments, extension-less ``/v1/files/video?id=``).
* ``POST /v1/videos/generations`` → ``{"request_id"}``; ``GET /v1/videos/{id}`` walks a
  per-task script of states (``pending`` … ``done`` / ``failed`` / ``expired``), all HTTP 200,
  with the bodies of provider-wire-formats.md §3.3 — except ``deferred``: HTTP 202 with an
  empty body, how xAI's deferred API answers a poll while the video is still rendering.
* Errors on demand (``fail_next``): 401/403/429 (+Retry-After)/500, HTML pages, echoed keys.

Results are served as a small but structurally valid MP4 (``ftyp`` + ``moov/mvhd`` +
``mdat`` boxes) from a second server standing in for the ``vidgen.x.ai`` CDN, and from
the API host itself (``/v1/files/video?id=``, and ``/v1/videos/{id}/content`` behind auth).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from .server import FakeUpstream, Reply, Request, json_reply

__all__ = (
    "BAD_KEY_BODY",
    "XaiVideoFake",
    "boxes",
    "chat_attachments",
    "chat_files_route",
    "chat_html_video",
    "chat_markdown_link",
    "chat_parts",
    "chat_text",
    "html_page",
    "tiny_mp4",
)

XAI_RATIOS = {"1:1", "16:9", "9:16", "4:3", "3:4", "3:2", "2:3"}


# ---- a valid little MP4 -------------------------------------------------------------


def _box(kind: bytes, payload: bytes) -> bytes:
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload


def tiny_mp4(size: int = 2048) -> bytes:
    """An ISO-BMFF file of exactly ``size`` bytes: ``ftyp`` (isom), ``moov`` with an ``mvhd``, ``mdat``."""
    ftyp = _box(b"ftyp", b"isom" + (0x200).to_bytes(4, "big") + b"isomiso2avc1mp41")
    matrix = b"".join(v.to_bytes(4, "big") for v in (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000))
    mvhd = _box(
        b"mvhd",
        bytes(4)  # version 0, flags
        + bytes(8)  # creation, modification time
        + (1000).to_bytes(4, "big")  # timescale
        + (1000).to_bytes(4, "big")  # duration: 1 s
        + (0x10000).to_bytes(4, "big")  # rate 1.0
        + (0x100).to_bytes(2, "big")  # volume 1.0
        + bytes(10)
        + matrix
        + bytes(24)
        + (2).to_bytes(4, "big"),  # next track id
    )
    head = ftyp + _box(b"moov", mvhd)
    pad = size - len(head) - 8
    if pad < 0:
        raise ValueError(f"an mp4 needs at least {len(head) + 8} bytes")
    return head + _box(b"mdat", bytes((i * 7) % 251 for i in range(pad)))


def boxes(data: bytes) -> list[tuple[bytes, int]]:
    """Top-level ``(type, size)`` of an ISO-BMFF file; raises if the sizes do not tile the file."""
    out, pos = [], 0
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        if size < 8 or pos + size > len(data):
            raise ValueError(f"bad box size {size} at {pos}")
        out.append((data[pos + 4 : pos + 8], size))
        pos += size
    return out


# ---- chat reply shapes -----------------------------------------------------------------


def _envelope(message: dict[str, Any], model: str = "grok-imagine-0.9") -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52},
    }


def chat_html_video(url: str) -> dict[str, Any]:
    return _envelope({"content": f'视频已生成：\n<video src="{url}" controls="controls" width="500"></video>'})


def chat_markdown_link(url: str) -> dict[str, Any]:
    return _envelope({"content": f"Here is your clip: [watch the video]({url}) — enjoy!"})


def chat_parts(url: str) -> dict[str, Any]:
    return _envelope({"content": [{"type": "text", "text": "done"}, {"type": "video_url", "video_url": {"url": url}}]})


def chat_attachments(url: str) -> dict[str, Any]:
    return _envelope({"content": "", "attachments": [{"type": "video", "mime_type": "video/mp4", "url": url}]})


def chat_files_route(url: str) -> dict[str, Any]:
    """The URL is ignored: the gateway answers with its own extension-less files route (PR #31)."""
    return _envelope({"content": "FILES_ROUTE"})


def chat_text(text: str) -> Callable[[str], dict[str, Any]]:
    """A 200 whose content has no video URL at all."""
    return lambda _url: _envelope({"content": text})


BAD_KEY_BODY = {
    "code": "Client specified an invalid argument",
    "error": "Incorrect API key provided: xa***. You can obtain an API key from https://console.x.ai.",
}


# ---- the fake ----------------------------------------------------------------------------


class XaiVideoFake:
    """Both servers (API + CDN). Use as a context manager; ``url`` is the API root without ``/v1``."""

    def __init__(self, key: str = "xai-test-key-1", *, video: bytes | None = None) -> None:
        self.key = key
        self.video = video if video is not None else tiny_mp4()
        self.api = FakeUpstream()
        self.cdn = FakeUpstream()
        self.url = ""
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Back to the default scripts with empty logs, so one running fake can serve many tests."""
        self.chat_script: list[Callable[[str], dict[str, Any]]] = [chat_html_video]
        """Reply builders for successive chat calls (the last one repeats)."""
        self.task_script: list[str] = ["pending", "pending", "done"]
        """States a new task walks through, one per GET (the last one repeats)."""
        self.failure_message = "Video generation failed"
        self.moderated = False
        """``done`` with ``respect_moderation: false`` and no URL (xAI's silent block)."""
        self.result_url: Callable[[str], str] | None = None
        """Overrides the URL a finished task/chat reply names (given the task id)."""
        with self._lock:
            self.tasks: dict[str, int] = {}
            self._fail: dict[str, list[Reply]] = {"chat": [], "create": [], "poll": []}
            self._ids = itertools.count(1)
            self._chat_calls = 0
            self.api.requests.clear()
            self.cdn.requests.clear()

    # ---- lifecycle ----

    def __enter__(self) -> XaiVideoFake:
        self.api.__enter__()
        self.cdn.__enter__()
        self.url = self.api.url
        self.api.route("POST", r"/v1/chat/completions", self._chat)
        self.api.route("POST", r"/v1/videos/generations", self._create)
        self.api.route("GET", r"/v1/videos/(?P<id>[^/]+)", self._poll)
        self.api.route("GET", r"/v1/videos/(?P<id>[^/]+)/content", self._content)
        self.api.route("GET", r"/v1/files/video", self._files)
        self.cdn.route("GET", r"/xai-vidgen-bucket/xai-video-[\w-]+\.mp4", self._cdn_file)
        return self

    def __exit__(self, *exc: object) -> None:
        self.api.__exit__(*exc)
        self.cdn.__exit__(*exc)

    # ---- scripting ----

    def fail_next(self, endpoint: str, reply: Reply, times: int = 1) -> None:
        """The next ``times`` calls to ``chat`` / ``create`` / ``poll`` get ``reply`` instead."""
        with self._lock:
            self._fail[endpoint].extend([reply] * times)

    def cdn_url(self, task: str) -> str:
        return f"{self.cdn.url}/xai-vidgen-bucket/xai-video-{task}.mp4"

    def files_url(self, task: str) -> str:
        return f"{self.api.url}/v1/files/video?id={task}"

    # ---- handlers ----

    def _authorized(self, req: Request) -> bool:
        return req.headers.get("authorization") == f"Bearer {self.key}"

    def _gate(self, endpoint: str, req: Request) -> Reply | None:
        with self._lock:
            forced = self._fail[endpoint].pop(0) if self._fail[endpoint] else None
        if forced is not None:
            return forced
        if not self._authorized(req):
            return json_reply(BAD_KEY_BODY, 401)
        return None

    def _chat(self, req: Request) -> Reply:
        if (early := self._gate("chat", req)) is not None:
            return early
        try:
            body = req.json()
            content = body["messages"][0]["content"]
            assert body.get("model"), "model is required"
            assert body["messages"][0]["role"] == "user"
            text = [p for p in content if p["type"] == "text"]
            images = [p for p in content if p["type"] == "image_url"]
            assert text and text[0]["text"].strip(), "a text part is required"
            assert len(images) == 1, "exactly one image_url part"
            _decode_data_url(images[0]["image_url"]["url"])
        except (AssertionError, KeyError, TypeError, ValueError, IndexError) as exc:
            return json_reply({"error": {"message": f"invalid request: {exc}", "type": "invalid_request_error"}}, 400)
        with self._lock:
            n = self._chat_calls
            self._chat_calls += 1
            task = f"chat{next(self._ids)}"
        builder = self.chat_script[min(n, len(self.chat_script) - 1)]
        url = self.result_url(task) if self.result_url else self.cdn_url(task)
        reply = builder(url)
        if builder is chat_files_route:
            reply["choices"][0]["message"]["content"] = f"视频生成完成 {self.files_url(task)}"
        return json_reply(reply)

    def _create(self, req: Request) -> Reply:
        if (early := self._gate("create", req)) is not None:
            return early
        try:
            body = req.json()
            assert isinstance(body.get("model"), str) and body["model"], "model is required"
            assert isinstance(body.get("prompt"), str) and body["prompt"], "prompt is required"
            _decode_data_url(body["image"]["url"])
            if "duration" in body:
                assert isinstance(body["duration"], int) and 1 <= body["duration"] <= 15, "duration must be 1-15"
            if "aspect_ratio" in body:
                assert body["aspect_ratio"] in XAI_RATIOS, "unsupported aspect_ratio"
            if "resolution" in body:
                assert body["resolution"] in ("480p", "720p"), "resolution must be 480p or 720p"
        except (AssertionError, KeyError, TypeError, ValueError) as exc:
            return json_reply({"code": "Client specified an invalid argument", "error": str(exc)}, 422)
        with self._lock:
            task = f"9f2b8b6a-{next(self._ids):04d}-4a0c-9a1a-2d3c4e5f6a7b"
            self.tasks[task] = 0
        return json_reply({"request_id": task})

    def _poll(self, req: Request) -> Reply:
        if (early := self._gate("poll", req)) is not None:
            return early
        task = req.path.rsplit("/", 1)[1]
        with self._lock:
            if task not in self.tasks:
                return json_reply({"code": "Some requested entity was not found", "error": f"no request {task}"}, 404)
            step = self.tasks[task]
            self.tasks[task] = step + 1
        state = self.task_script[min(step, len(self.task_script) - 1)]
        model = "grok-imagine-video"
        if state == "done":
            if self.moderated:
                return json_reply({"status": "done", "model": model, "video": {"respect_moderation": False}})
            url = self.result_url(task) if self.result_url else self.cdn_url(task)
            return json_reply(
                {
                    "status": "done",
                    "model": model,
                    "video": {"url": url, "duration": 6, "respect_moderation": True},
                    "usage": {"cost_in_usd_ticks": 500000000},
                    "progress": 100,
                }
            )
        if state == "failed":
            return json_reply(
                {
                    "status": "failed",
                    "model": "",
                    "video": {"duration": 0, "respect_moderation": True},
                    "error": {"code": "internal_error", "message": self.failure_message},
                }
            )
        if state == "expired":
            return json_reply({"status": "expired", "model": model})
        if state == "deferred":
            return Reply(202, b"")
        return json_reply({"status": state, "progress": min(90, 30 * (step + 1))})

    def _content(self, req: Request) -> Reply:
        if not self._authorized(req):
            return json_reply(BAD_KEY_BODY, 401)
        return self._mp4()

    def _files(self, req: Request) -> Reply:
        if not req.query.get("id"):
            return json_reply({"error": {"message": "id is required"}}, 400)
        return self._mp4()

    def _cdn_file(self, req: Request) -> Reply:
        return self._mp4()

    def _mp4(self) -> Reply:
        return Reply(200, self.video, {"content-type": "video/mp4"})

    # ---- assertions ----

    def calls(self, method: str, pattern: str) -> list[Request]:
        return self.api.calls(method, pattern)


def _decode_data_url(url: str) -> bytes:
    head, sep, data = url.partition(",")
    if not (sep and head.startswith("data:image/") and head.endswith(";base64")):
        raise ValueError("image must be a data:image/...;base64 URL")
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"bad base64: {exc}") from None
    if not raw.startswith((b"\x89PNG", b"\xff\xd8\xff", b"RIFF")):
        raise ValueError("image bytes are not PNG/JPEG/WebP")
    return raw


def html_page(status: int = 502) -> Reply:
    """What a reverse proxy answers when the gateway behind it is down."""
    body = b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    return Reply(status, body, {"content-type": "text/html"})
