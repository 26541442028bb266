"""A fake OpenAI Images API (provider-wire-formats §1) on a loopback :class:`FakeUpstream`.

It checks requests the way the real API does (Bearer key, ``model``, allowed ``size``
values, ``response_format`` refused for GPT-image models, multipart edits with ``image``
or ``image[]`` and 400 ``duplicate_parameter`` for repeated plain ``image``) and answers
with the real bodies. ``script`` queues one scenario per request (then ``mode`` applies):

``b64`` ``url`` ``empty`` ``moderation`` ``policy`` ``unauthorized`` ``forbidden``
``not_found`` ``rate_limited`` ``quota`` ``server_error`` ``html`` ``malformed``
``error_200`` ``blank_item`` ``bad_b64``.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterable
from typing import Any

from ..helpers import png
from .server import FakeUpstream, Reply, Request, json_reply

__all__ = ("GPT_IMAGE_SIZES", "OpenAIImagesFake", "bearer", "openai_error", "scenario_reply")

GPT_IMAGE_SIZES = frozenset({"1024x1024", "1536x1024", "1024x1536", "2048x2048", "auto"})
"""What this fake's model accepts: 4096x4096 is refused, 2048x2048 (as gateways do) is not."""


def openai_error(
    status: int, message: str, type_: str, code: str | None, param: str | None = None, **headers: str
) -> Reply:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return json_reply(body, status, headers={k.replace("_", "-"): v for k, v in headers.items()})


def bearer(req: Request) -> str:
    value = req.headers.get("authorization", "")
    return value[7:] if value.lower().startswith("bearer ") else ""


def unauthorized(key: str) -> Reply:
    # The real API masks the key ("sk-abc***"); this fake echoes it whole, the worst case.
    return openai_error(
        401,
        f"Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    )


def scenario_reply(name: str, key: str) -> Reply | None:
    """The error and junk bodies every OpenAI-shaped fake shares; None for success scenarios."""
    match name:
        case "moderation":
            return openai_error(
                400,
                "Your request was rejected by the safety system. If you believe this is an error, contact us at "
                "help.openai.com and include the request ID req_123.",
                "image_generation_user_error",
                "moderation_blocked",
            )
        case "policy":
            return openai_error(
                400,
                "Your request was rejected as a result of our safety system. Your prompt may contain text that is "
                "not allowed by our safety system.",
                "invalid_request_error",
                "content_policy_violation",
            )
        case "unauthorized":
            return unauthorized(key)
        case "forbidden":
            return openai_error(403, "You are not allowed to sample from this model", "invalid_request_error", None)
        case "not_found":
            return openai_error(
                404,
                "The model `gpt-image-9` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
        case "rate_limited":
            return openai_error(
                429,
                "Rate limit exceeded for images per minute in organization org-123. Limit: 5/1min. Current: 6/1min.",
                "requests",
                "rate_limit_exceeded",
                retry_after="7",
            )
        case "quota":
            return openai_error(
                429,
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                "insufficient_quota",
            )
        case "server_error":
            return openai_error(
                500, "The server had an error while processing your request. Sorry about that!", "server_error", None
            )
        case "html":
            return Reply(
                200, b"<!DOCTYPE html><html><body>Welcome to nginx!</body></html>", {"content-type": "text/html"}
            )
        case "malformed":
            return Reply(200, b'{"created": 1, "data": [', {"content-type": "application/json"})
        case "error_200":
            return json_reply({"error": {"message": "upstream channel failed", "type": "new_api_error", "code": None}})
    return None


class OpenAIImagesFake:
    """``POST {prefix}/images/generations`` and ``/images/edits``; serves result URLs at ``/files/<name>``."""

    def __init__(
        self,
        upstream: FakeUpstream,
        *,
        keys: Iterable[str] = ("sk-test-1",),
        prefix: str = "/v1",
        sizes: frozenset[str] = GPT_IMAGE_SIZES,
        image: bytes | None = None,
    ) -> None:
        self.up = upstream
        self.keys = set(keys)
        self.prefix = prefix.rstrip("/")
        self.sizes = sizes
        self.image = image or png(64, 48)
        self.mode = "b64"
        self.script: list[str] = []
        self.repeated_image_ok = False
        """Gitee-style gateways take repeated plain ``image`` parts; OpenAI answers 400."""
        self.files: dict[str, bytes] = {}
        self._ids = itertools.count(1)
        upstream.route("POST", rf"{self.prefix}/images/generations", self._generations)
        upstream.route("POST", rf"{self.prefix}/images/edits", self._edits)
        upstream.route("GET", r"/files/(.+)", self._file)

    # ---- handlers -----------------------------------------------------------------------

    def _generations(self, req: Request) -> Reply:
        try:
            body = req.json()
        except ValueError:
            return openai_error(400, "We could not parse the JSON body of your request.", "invalid_request_error", None)
        return self._answer(req, {k: v for k, v in body.items()})

    def _edits(self, req: Request) -> Reply:
        if not req.headers.get("content-type", "").startswith("multipart/form-data"):
            return openai_error(400, "Expected multipart/form-data.", "invalid_request_error", None)
        form = req.form()
        plain = form.get("image", [])
        listed = form.get("image[]", [])
        if len(plain) > 1 and not self.repeated_image_ok:
            return openai_error(
                400, "Duplicate parameter: 'image'.", "invalid_request_error", "duplicate_parameter", "image"
            )
        if not plain and not listed:
            return openai_error(
                400, "Missing required parameter: 'image'.", "invalid_request_error", "missing_required_parameter"
            )
        fields: dict[str, Any] = {k: v[0][1].decode() for k, v in form.items() if not v[0][0]}
        return self._answer(req, fields)

    def _file(self, req: Request) -> Reply:
        name = req.path.rsplit("/", 1)[-1]
        data = self.files.get(name)
        if data is None:
            return Reply(404, b"not found", {"content-type": "text/plain"})
        return Reply(200, data, {"content-type": "image/png"})

    # ---- the common answer ------------------------------------------------------------------

    def _answer(self, req: Request, fields: dict[str, Any]) -> Reply:
        key = bearer(req)
        if key not in self.keys:
            return unauthorized(key)
        scenario = self.script.pop(0) if self.script else self.mode
        error = scenario_reply(scenario, key)
        if error is not None:
            return error
        model = str(fields.get("model") or "")
        if not model:
            return openai_error(
                400, "you must provide a model parameter", "invalid_request_error", "missing_required_parameter"
            )
        if "response_format" in fields and model.startswith("gpt-image"):
            return openai_error(
                400,
                "Unknown parameter: 'response_format'.",
                "invalid_request_error",
                "unknown_parameter",
                "response_format",
            )
        size = fields.get("size")
        if size is not None and size not in self.sizes:
            allowed = ", ".join(f"'{s}'" for s in sorted(self.sizes))
            return openai_error(
                400,
                f"Invalid value: '{size}'. Supported values are: {allowed}.",
                "invalid_request_error",
                "invalid_value",
                "size",
            )
        created = {"created": 1713833628}
        match scenario:
            case "empty":
                return json_reply({**created, "data": []})
            case "bad_b64":
                return json_reply({**created, "data": [{"b64_json": "iVBORw0KGgo!!!not-base64***"}]})
            case "blank_item":
                return json_reply({**created, "data": [{"revised_prompt": None}]})
            case "url":
                name = f"img-{next(self._ids)}.png"
                self.files[name] = self.image
                return json_reply({**created, "data": [{"url": f"{self.up.url}/files/{name}", "revised_prompt": "x"}]})
        b64 = base64.b64encode(self.image).decode()
        return json_reply(
            {
                **created,
                "data": [{"b64_json": b64, "revised_prompt": None}],
                "output_format": "png",
                "size": size or "1024x1024",
                "usage": {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210},
            }
        )

    # ---- assertions helpers -------------------------------------------------------------------

    def posts(self, endpoint: str) -> list[Request]:
        return self.up.calls("POST", rf"{self.prefix}/images/{endpoint}")

    def sizes_sent(self, endpoint: str = "generations") -> list[str | None]:
        out: list[str | None] = []
        for r in self.posts(endpoint):
            if endpoint == "generations":
                out.append(json.loads(r.body).get("size"))
            else:
                field = r.form().get("size")
                out.append(field[0][1].decode() if field else None)
        return out
