"""A fake chat-completions gateway that returns images (provider-wire-formats §2).

It answers ``POST {prefix}/chat/completions`` in the reply shapes real gateways use;
``script`` queues one shape per request (then ``mode`` applies):

``markdown_data`` (new-api/one-api relays of Gemini), ``markdown_url``, ``bare_url``,
``parts`` (content array), ``dict_content``, ``images_field`` (OpenRouter/Vercel),
``tool_calls``, ``two_images`` (first then ``second``: the last must win),
``placeholder_last`` (a real image, then a 1×1 placeholder), ``only_placeholder``,
``video``, ``text_only``, ``content_filter``, ``refusal``, ``responses_api``, plus the
shared OpenAI error scenarios of :func:`tests.fakes.openai_images.scenario_reply`.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterable
from typing import Any

from ..helpers import png
from .openai_images import bearer, openai_error, scenario_reply, unauthorized
from .server import FakeUpstream, Reply, Request, json_reply

__all__ = ("ONE_PIXEL_PNG", "OpenAIChatFake")

ONE_PIXEL_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg=="
)


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


class OpenAIChatFake:
    """``POST {prefix}/chat/completions`` answering with an image in a configurable shape."""

    def __init__(
        self,
        upstream: FakeUpstream,
        *,
        keys: Iterable[str] = ("sk-test-1",),
        prefix: str = "/v1",
        image: bytes | None = None,
        second: bytes | None = None,
    ) -> None:
        self.up = upstream
        self.keys = set(keys)
        self.prefix = prefix.rstrip("/")
        self.image = image or png(64, 48, (250, 200, 10))  # its base64 has an "s" mid-way
        self.second = second or png(80, 40, (20, 30, 220))
        self.mode = "markdown_data"
        self.script: list[str] = []
        self.files: dict[str, bytes] = {}
        self._ids = itertools.count(1)
        upstream.route("POST", rf"{self.prefix}/chat/completions", self._completions)
        upstream.route("GET", r"/chat-files/(.+)", self._file)

    def requests(self) -> list[Request]:
        return self.up.calls("POST", rf"{self.prefix}/chat/completions")

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.requests()]

    def _serve(self, data: bytes, ext: str = "png") -> str:
        name = f"c{next(self._ids)}.{ext}"
        self.files[name] = data
        return f"{self.up.url}/chat-files/{name}"

    def _file(self, req: Request) -> Reply:
        data = self.files.get(req.path.rsplit("/", 1)[-1])
        if data is None:
            return Reply(404, b"gone", {"content-type": "text/plain"})
        return Reply(200, data, {"content-type": "image/png"})

    def _completions(self, req: Request) -> Reply:
        key = bearer(req)
        if key not in self.keys:
            return unauthorized(key)
        try:
            body = req.json()
        except ValueError:
            return openai_error(400, "We could not parse the JSON body of your request.", "invalid_request_error", None)
        if not body.get("model"):
            return openai_error(400, "you must provide a model parameter", "invalid_request_error", None)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or "content" not in messages[-1]:
            return openai_error(400, "messages must be a non-empty list", "invalid_request_error", None)
        scenario = self.script.pop(0) if self.script else self.mode
        error = scenario_reply(scenario, key)
        if error is not None:
            return error
        if scenario == "responses_api":  # a relay that answers in the Responses API shape
            text = f"![]({_data_url(self.image)})"
            return json_reply(
                {
                    "id": "resp_1",
                    "object": "response",
                    "output": [{"type": "message", "content": [{"type": "output_text", "text": text}]}],
                }
            )
        message, finish = self._message(scenario)
        return json_reply(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1713833628,
                "model": body["model"],
                "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", **message}}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 1300, "total_tokens": 1312},
            }
        )

    def _message(self, scenario: str) -> tuple[dict[str, Any], str]:
        img = _data_url(self.image)
        match scenario:
            case "markdown_data":
                return {"content": f"I made it.\n![image]({img})"}, "stop"
            case "markdown_url":
                return {"content": f"Here it is: ![]({self._serve(self.image)}) enjoy"}, "stop"
            case "bare_url":
                return {"content": self._serve(self.image)}, "stop"
            case "parts":
                return {
                    "content": [
                        {"type": "text", "text": "Here is the edited picture."},
                        {"type": "image_url", "image_url": {"url": img}},
                    ]
                }, "stop"
            case "dict_content":
                return {"content": {"type": "image_url", "image_url": {"url": self._serve(self.image)}}}, "stop"
            case "images_field":
                return {
                    "content": "Here is your image.",
                    "images": [{"type": "image_url", "image_url": {"url": img}}],
                }, "stop"
            case "tool_calls":
                args = json.dumps({"prompt": "fox", "image": img})
                return {
                    "content": None,
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "show_image", "arguments": args}}
                    ],
                }, "tool_calls"
            case "two_images":
                return {"content": f"draft ![a]({img})\nfinal ![b]({_data_url(self.second)})"}, "stop"
            case "placeholder_last":
                return {"content": f"![real]({img}) ![loading]({_data_url(ONE_PIXEL_PNG)})"}, "stop"
            case "only_placeholder":
                return {"content": f"![loading]({self._serve(ONE_PIXEL_PNG)})"}, "stop"
            case "video":
                return {"content": f"Your clip: {self.up.url}/chat-files/clip.mp4"}, "stop"
            case "text_only":
                return {"content": "I can describe a fox for you: it is orange and clever. " * 8}, "stop"
            case "content_filter":
                return {"content": None}, "content_filter"
            case "refusal":
                return {"content": None, "refusal": "I can't help with that request."}, "stop"
        raise AssertionError(f"unknown chat scenario {scenario!r}")
