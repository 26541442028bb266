"""A fake Volcengine Ark Seedream API (provider-wire-formats §6) on a :class:`FakeUpstream`.

``POST /api/v3/images/generations`` with Bearer keys. It checks what Ark checks: a known
model, ``size`` as a preset the model takes or ``WxH`` inside its pixel range and ratio
[1/16, 16] (400 ``InvalidParameter`` with ``param: size`` otherwise), and ``image`` as a
string or a list of at most 14 URLs / lowercase data URLs. ``watermark`` defaults to
true, as on Ark; ``response_format`` picks ``url`` (served at ``GET /files/<name>``) or
``b64_json``. Errors use the official ``{"error":{"code","message","param","type"}}``
table. ``script`` queues scenarios (then ``mode``): ``ok`` ``input_sensitive``
``output_sensitive`` ``item_sensitive`` ``rate_limited`` ``overdue`` ``model_not_open``
``overloaded`` ``echo_key`` ``empty``.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterable
from typing import Any

from ..helpers import png
from .server import FakeUpstream, Reply, Request, json_reply

__all__ = ("IMAGE", "ArkFake", "ark_error")

IMAGE = png(96, 64, (40, 160, 80))

MODELS: dict[str, tuple[frozenset[str], int]] = {
    "doubao-seedream-4-0-250828": (frozenset({"1K", "2K", "4K"}), 921_600),
    "doubao-seedream-4-5-251128": (frozenset({"2K", "4K"}), 3_686_400),
    "doubao-seedream-5-0-260128": (frozenset({"2K", "3K", "4K"}), 3_686_400),
}
"""model → (presets, minimum pixels). The maximum is 16,777,216 for all of them."""

_DATA_URL = re.compile(r"^data:image/(png|jpeg|webp|bmp|tiff|gif);base64,[A-Za-z0-9+/=]+$")
_REQUEST_ID = "021757321139abcdef"


def ark_error(status: int, code: str, message: str, type_: str, param: str | None = None, **headers: str) -> Reply:
    err: dict[str, Any] = {"code": code, "message": f"{message} Request id: {_REQUEST_ID}", "type": type_}
    if param is not None:
        err["param"] = param
    return json_reply({"error": err}, status, headers={k.replace("_", "-"): v for k, v in headers.items()})


def _size_ok(size: Any, model: str) -> bool:
    presets, low = MODELS[model]
    if size in presets:
        return True
    m = re.fullmatch(r"(\d+)x(\d+)", str(size))
    if not m:
        return False
    w, h = int(m.group(1)), int(m.group(2))
    return low <= w * h <= 16_777_216 and 1 / 16 <= w / h <= 16


class ArkFake:
    def __init__(self, upstream: FakeUpstream, *, keys: Iterable[str] = ("ark-test-1",)) -> None:
        self.upstream = upstream
        self.keys = set(keys)
        self.mode = "ok"
        self.script: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.used_keys: list[str] = []
        upstream.route("POST", r"/api/v3/images/generations", self.generate)
        upstream.route("GET", r"/files/([A-Za-z0-9_.-]+)", self.file)

    def generate(self, req: Request) -> Reply:
        value = req.headers.get("authorization", "")
        key = value[7:] if value.lower().startswith("bearer ") else ""
        self.used_keys.append(key)
        if key not in self.keys:
            return ark_error(401, "AuthenticationError", "The API key format is incorrect.", "Unauthorized")
        body = req.json()
        self.bodies.append(body)
        model = body.get("model")
        if model not in MODELS:
            return ark_error(
                404,
                "InvalidEndpointOrModel.NotFound",
                f"The model or endpoint {model} does not exist or you do not have access to it.",
                "NotFound",
            )
        if not body.get("prompt"):
            return ark_error(
                400, "MissingParameter", "The request failed because it is missing `prompt`.", "BadRequest", "prompt"
            )
        if "size" in body and not _size_ok(body["size"], model):
            return ark_error(
                400,
                "InvalidParameter",
                f"The parameter `size` specified in the request is not valid: {body['size']}.",
                "BadRequest",
                "size",
            )
        if "image" in body:
            images = body["image"] if isinstance(body["image"], list) else [body["image"]]
            if (
                not images
                or len(images) > 14
                or not all(isinstance(i, str) and (i.startswith("https://") or _DATA_URL.match(i)) for i in images)
            ):
                return ark_error(
                    400,
                    "InvalidParameter",
                    "The parameter `image` specified in the request is not valid.",
                    "BadRequest",
                    "image",
                )
        scenario = self.script.pop(0) if self.script else self.mode
        match scenario:
            case "ok":
                return json_reply(self._success(body))
            case "empty":
                return json_reply({"model": model, "created": int(time.time()), "data": []})
            case "input_sensitive":
                return ark_error(
                    400,
                    "InputTextSensitiveContentDetected",
                    "The request failed because the input text may contain sensitive information.",
                    "BadRequest",
                )
            case "output_sensitive":
                return ark_error(
                    400,
                    "OutputImageSensitiveContentDetected",
                    "The request failed because the output image may contain sensitive information.",
                    "BadRequest",
                )
            case "item_sensitive":
                return json_reply(
                    {
                        "model": model,
                        "created": int(time.time()),
                        "data": [
                            {
                                "error": {
                                    "code": "OutputImageSensitiveContentDetected",
                                    "message": "The output image may contain sensitive information.",
                                }
                            }
                        ],
                        "usage": {"generated_images": 0, "output_tokens": 0, "total_tokens": 0},
                    }
                )
            case "rate_limited":
                return ark_error(
                    429,
                    "RateLimitExceeded.EndpointRPMExceeded",
                    "The request has exceeded the rate limit of requests per minute for the endpoint.",
                    "TooManyRequests",
                    retry_after="3",
                )
            case "overdue":
                return ark_error(
                    403,
                    "AccountOverdueError",
                    "The request failed because your account has an overdue balance.",
                    "Forbidden",
                )
            case "model_not_open":
                return ark_error(404, "ModelNotOpen", f"Your account has not activated the model {model}.", "NotFound")
            case "overloaded":
                return ark_error(500, "InternalServiceError", "服务负载高，请稍后重试。", "InternalServerError")
            case "echo_key":
                return ark_error(
                    400, "InvalidParameter", f"The parameter `api_key` ({key}) is not valid here.", "BadRequest"
                )
        raise AssertionError(f"unknown scenario {scenario!r}")

    def _success(self, body: dict[str, Any]) -> dict[str, Any]:
        item: dict[str, Any] = {"size": "3104x1312"}
        if body.get("response_format", "url") == "b64_json":
            item["b64_json"] = base64.b64encode(IMAGE).decode()
        else:
            item["url"] = f"{self.upstream.url}/files/seedream-{len(self.bodies)}.png"
        return {
            "model": body["model"],
            "created": int(time.time()),
            "data": [item],
            "usage": {"generated_images": 1, "output_tokens": 15912, "total_tokens": 15912},
        }

    def watermarked(self) -> bool:
        """Whether the last request would get Ark's watermark (its default is true)."""
        return bool(self.bodies[-1].get("watermark", True))

    def file(self, req: Request) -> Reply:
        return Reply(200, IMAGE, {"content-type": "image/png"})
