"""A fake Gemini ``generateContent`` endpoint (provider-wire-formats §4) on a :class:`FakeUpstream`.

It checks requests as the real API does: the ``x-goog-api-key`` header (or ``?key=``)
against its keys (a bad key is a **400** ``API_KEY_INVALID``), an ``Authorization``
header refused with 401 (the old plugin's issue #25), the model in the path, and
``contents[].parts`` in camelCase or snake_case. It answers with the real bodies.
``script`` queues one scenario per request (afterwards ``mode`` applies):

``image`` ``two_images`` ``thought_image`` ``prompt_blocked`` ``image_safety``
``text_only`` ``no_image`` ``rate_limited`` ``rate_limited_header`` ``quota_402``
``permission_denied`` ``not_found`` ``failed_precondition`` ``overloaded`` ``internal``
``deadline`` ``error_200`` ``echo_key`` ``html``.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Any

from ..helpers import png
from .server import FakeUpstream, Reply, Request, json_reply

__all__ = ("FIRST", "SECOND", "GeminiFake", "google_error")

FIRST = png(96, 96, (200, 30, 30))
SECOND = png(96, 96, (30, 30, 200))
"""The fake's images: ``two_images`` answers FIRST then SECOND (clients must take the last)."""

_PATH = re.compile(r"/v1beta/models/([^/:]+):generateContent")


def google_error(status: int, code_name: str, message: str, details: list[Any] | None = None, **headers: str) -> Reply:
    body = {"error": {"code": status, "message": message, "status": code_name, "details": details or []}}
    return json_reply(body, status, headers={k.replace("_", "-"): v for k, v in headers.items()})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _image_part(data: bytes, **extra: Any) -> dict[str, Any]:
    return {"inlineData": {"mimeType": "image/png", "data": _b64(data)}, **extra}


def _candidates(parts: list[dict[str, Any]], finish: str = "STOP") -> dict[str, Any]:
    return {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 1290, "totalTokenCount": 1302},
        "modelVersion": "gemini-3-pro-image-preview",
        "responseId": "x1AbCd",
    }


class GeminiFake:
    def __init__(
        self,
        upstream: FakeUpstream,
        *,
        keys: Iterable[str] = ("g-test-key-1",),
        models: Iterable[str] = ("gemini-3-pro-image-preview", "gemini-2.5-flash-image"),
        retry_delay: str = "16s",
    ) -> None:
        self.upstream = upstream
        self.keys = set(keys)
        self.models = set(models)
        self.retry_delay = retry_delay
        self.mode = "image"
        self.script: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.used_keys: list[str] = []
        upstream.route("POST", _PATH.pattern, self.generate)

    def generate(self, req: Request) -> Reply:
        if "authorization" in req.headers:
            return google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
                "other valid authentication credential.",
            )
        key = req.headers.get("x-goog-api-key") or (req.query.get("key") or [""])[0]
        self.used_keys.append(key)
        if key not in self.keys:
            return google_error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                        "metadata": {"service": "generativelanguage.googleapis.com"},
                    }
                ],
            )
        m = _PATH.fullmatch(req.path)
        model = m.group(1) if m else ""
        if model not in self.models:
            return google_error(
                404,
                "NOT_FOUND",
                f"models/{model} is not found for API version v1beta, or is not supported for generateContent.",
            )
        try:
            body = req.json()
            parts = body["contents"][0]["parts"]
            assert isinstance(parts, list) and parts
            for part in parts:
                inline = part.get("inlineData") or part.get("inline_data")
                if inline is not None:
                    base64.b64decode(inline["data"], validate=True)
                    assert inline.get("mimeType") or inline.get("mime_type")
        except Exception:
            return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        self.bodies.append(body)
        scenario = self.script.pop(0) if self.script else self.mode
        return self.reply(scenario, key)

    def reply(self, scenario: str, key: str) -> Reply:
        match scenario:
            case "image":
                return json_reply(_candidates([{"text": "Here you go."}, _image_part(FIRST, thoughtSignature="Cq0C")]))
            case "two_images":
                return json_reply(_candidates([_image_part(FIRST), {"text": "and another"}, _image_part(SECOND)]))
            case "thought_image":
                return json_reply(_candidates([_image_part(SECOND, thought=True), _image_part(FIRST)]))
            case "prompt_blocked":
                return json_reply(
                    {
                        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT", "safetyRatings": []},
                        "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12},
                    }
                )
            case "image_safety":
                return json_reply({"candidates": [{"finishReason": "IMAGE_SAFETY", "index": 0}]})
            case "text_only":
                return json_reply(_candidates([{"text": "I can't create that image."}]))
            case "no_image":
                return json_reply(_candidates([{"text": "Hmm."}], finish="NO_IMAGE"))
            case "rate_limited":
                return google_error(
                    429,
                    "RESOURCE_EXHAUSTED",
                    "You exceeded your current quota, please check your plan and billing details. "
                    "Please retry in 16.28s.",
                    [
                        {
                            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                            "violations": [
                                {
                                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                                    "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash-image"},
                                    "quotaValue": "10",
                                }
                            ],
                        },
                        {
                            "@type": "type.googleapis.com/google.rpc.Help",
                            "links": [{"description": "Learn more", "url": "https://ai.google.dev/gemini-api/docs"}],
                        },
                        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": self.retry_delay},
                    ],
                )
            case "rate_limited_header":
                return google_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted.", retry_after="7")
            case "quota_402":
                return google_error(402, "RESOURCE_EXHAUSTED", "Your prepayment credits are depleted.")
            case "permission_denied":
                return google_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers.")
            case "not_found":
                return google_error(404, "NOT_FOUND", "models/x is not found for API version v1beta.")
            case "failed_precondition":
                return google_error(
                    400,
                    "FAILED_PRECONDITION",
                    "User location is not supported for the API use without a billing account.",
                )
            case "overloaded":
                return google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
            case "internal":
                return google_error(500, "INTERNAL", "An internal error has occurred.")
            case "deadline":
                return google_error(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete.")
            case "error_200":
                return json_reply(
                    {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
                )
            case "echo_key":
                return google_error(400, "INVALID_ARGUMENT", f"Request for key {key} contains an invalid argument.")
            case "html":
                return Reply(200, b"<!DOCTYPE html><html><body>gateway</body></html>", {"content-type": "text/html"})
        raise AssertionError(f"unknown scenario {scenario!r}")
