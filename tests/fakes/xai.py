"""A fake xAI Images API (provider-wire-formats §3.1, §3.2, §3.4).

Generations and edits are JSON only: a multipart edit is refused, as the docs say.
``size`` and ``style`` are refused (xAI does not support them; whether it ignores or
rejects them is unverified, so the strict reading is tested). Results are served as
temporary URLs (the default ``response_format``) or as ``b64_json`` when asked.

Scenarios (``script`` per request, then ``mode``): ``ok``, ``moderated_empty``
(``data: []``), ``moderated_flag`` (an item with ``respect_moderation: false``),
``moderated_reason`` (empty ``data`` with a top-level reason), ``bad_key`` (gRPC-style
400), ``spending_limit`` (403), ``rate_limited`` (429), ``server_error`` (500),
``not_found`` (404), ``html``, ``malformed``.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterable
from typing import Any

from ..helpers import png
from .openai_images import bearer
from .server import FakeUpstream, Reply, Request, json_reply

__all__ = ("RATIOS", "XAIFake")

RATIOS = frozenset(
    {"1:1", "3:4", "4:3", "9:16", "16:9", "2:3", "3:2", "9:19.5", "19.5:9", "9:20", "20:9", "1:2", "2:1", "auto"}
)
MODELS = frozenset({"grok-imagine-image", "grok-imagine-image-quality", "grok-imagine-image-2.0", "grok-2-image"})


def _grpc_error(status: int, code: str, error: str) -> Reply:
    return json_reply({"code": code, "error": error}, status)


def _openai_style(status: int, message: str, code: str = "invalid_value") -> Reply:
    return json_reply({"error": {"message": message, "type": "invalid_request_error", "code": code}}, status)


class XAIFake:
    """``POST /v1/images/generations`` and ``/v1/images/edits``; serves ``/xai-tmp/<name>``."""

    def __init__(
        self, upstream: FakeUpstream, *, keys: Iterable[str] = ("xai-test-1",), image: bytes | None = None
    ) -> None:
        self.up = upstream
        self.keys = set(keys)
        self.image = image or png(72, 40, (30, 160, 90))
        self.mode = "ok"
        self.script: list[str] = []
        self.files: dict[str, bytes] = {}
        self._ids = itertools.count(1)
        upstream.route("POST", r"/v1/images/generations", self._generations)
        upstream.route("POST", r"/v1/images/edits", self._edits)
        upstream.route("GET", r"/xai-tmp/(.+)", self._file)

    def bodies(self, endpoint: str) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.up.calls("POST", rf"/v1/images/{endpoint}")]

    def _file(self, req: Request) -> Reply:
        data = self.files.get(req.path.rsplit("/", 1)[-1])
        if data is None:
            return Reply(404, b"expired", {"content-type": "text/plain"})
        return Reply(200, data, {"content-type": "image/png"})

    def _json(self, req: Request) -> dict[str, Any] | Reply:
        if not req.headers.get("content-type", "").startswith("application/json"):
            return _openai_style(400, "Only JSON bodies are supported for this endpoint; multipart is not.")
        try:
            body = req.json()
        except ValueError:
            return _openai_style(400, "Failed to deserialize the JSON body into the target type")
        if not isinstance(body, dict):
            return _openai_style(400, "Body must be a JSON object")
        return body

    def _generations(self, req: Request) -> Reply:
        body = self._json(req)
        return body if isinstance(body, Reply) else self._answer(req, body)

    def _edits(self, req: Request) -> Reply:
        body = self._json(req)
        if isinstance(body, Reply):
            return body
        images = [body["image"]] if "image" in body else body.get("images")
        if not isinstance(images, list) or not images:
            return _openai_style(400, "An image is required for edits: set `image` or `images`.")
        if len(images) > 3:
            return _openai_style(400, "At most 3 images are supported.")
        for part in images:
            url = part.get("url", "") if isinstance(part, dict) else ""
            if not (url.startswith("data:image/") or url.startswith("http")):
                return _openai_style(400, "image.url must be a public URL or a data URI")
            if url.startswith("data:image/"):
                try:
                    base64.b64decode(url.split(",", 1)[1], validate=True)
                except ValueError:
                    return _openai_style(400, "image data URI is not valid base64")
        if "mask" in body:
            return _openai_style(400, "mask is not supported")
        return self._answer(req, body)

    def _answer(self, req: Request, body: dict[str, Any]) -> Reply:
        key = bearer(req)
        scenario = self.script.pop(0) if self.script else self.mode
        if key not in self.keys or scenario == "bad_key":
            # xAI answers a bad key with 400 and a gRPC-style body; this fake echoes the key whole.
            return _grpc_error(
                400,
                "Client specified an invalid argument",
                f"Incorrect API key provided: {key}. You can obtain an API key from https://console.x.ai.",
            )
        match scenario:
            case "spending_limit":
                return _grpc_error(
                    403,
                    "The caller does not have permission to execute the specified operation",
                    "personal-team-blocked:spending-limit: Your team has reached its monthly spending limit.",
                )
            case "rate_limited":
                return Reply(
                    429,
                    b'{"code":"Too many requests","error":"Rate limit reached for grok-imagine-image."}',
                    {"content-type": "application/json", "retry-after": "3"},
                )
            case "server_error":
                return _grpc_error(500, "Internal error", "Service temporarily unavailable")
            case "not_found":
                return _grpc_error(404, "Some requested entity was not found", "The model does not exist")
            case "html":
                return Reply(200, b"<html><body>502 Bad Gateway</body></html>", {"content-type": "text/html"})
            case "malformed":
                return Reply(200, b'{"data": [{"url": ', {"content-type": "application/json"})
            case "moderated_empty":
                return json_reply({"data": [], "usage": {"cost_in_usd_ticks": 0}})
            case "moderated_flag":
                return json_reply({"data": [{"respect_moderation": False, "revised_prompt": ""}]})
            case "moderated_reason":
                return json_reply({"data": [], "moderation_reason": "Input prompt was flagged: sexual content"})
        model = body.get("model")
        if model not in MODELS:
            return _grpc_error(404, "Some requested entity was not found", f"The model {model} does not exist")
        for unsupported in ("size", "style"):
            if unsupported in body:
                return _openai_style(400, f"Argument not supported: {unsupported}")
        if "aspect_ratio" in body and (body["aspect_ratio"] not in RATIOS or str(model).startswith("grok-2")):
            return _openai_style(400, f"Invalid aspect_ratio: {body['aspect_ratio']}")
        if "resolution" in body and body["resolution"] not in ("1k", "2k"):
            return _openai_style(400, f"Invalid resolution: {body['resolution']}")
        if not str(body.get("prompt") or "").strip():
            return _openai_style(400, "prompt must not be empty")
        usage = {"cost_in_usd_ticks": 200000000}
        if body.get("response_format") == "b64_json":
            item = {"b64_json": base64.b64encode(self.image).decode(), "mime_type": "image/png", "revised_prompt": ""}
            return json_reply({"data": [item], "usage": usage})
        name = f"xai-tmp-imgen-{next(self._ids)}.png"
        self.files[name] = self.image
        item = {"url": f"{self.up.url}/xai-tmp/{name}", "mime_type": "image/png", "revised_prompt": ""}
        return json_reply({"data": [item], "usage": usage})
