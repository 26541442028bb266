"""A fake Jimeng / Doubao drawing aggregator (seed-plugin-behaviour §2.5) on a :class:`FakeUpstream`.

``GET /api/jimeng`` with ``description``, ``type``, ``ratio``, ``model``,
``conversation_id``, ``Cookie`` and ``apikey`` query parameters. The ``apikey`` must
match and the ``Cookie`` must be the one registered for that ``conversation_id``. The
aggregator answers HTTP 200 for business errors, with ``code`` other than 200.
``script`` queues scenarios (then ``mode``): ``list`` ``str`` ``no_url`` ``policy``
``credits`` ``expired`` ``business`` ``not_json`` ``http_500``. Images are served at
``GET /files/<name>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..helpers import png
from .server import FakeUpstream, Reply, Request, json_reply

__all__ = ("IMAGE", "PATH", "JimengFake")

IMAGE = png(96, 72, (120, 60, 200))
PATH = "/api/jimeng"


class JimengFake:
    def __init__(self, upstream: FakeUpstream, *, apikey: str, cookies: Mapping[str, str]) -> None:
        self.upstream = upstream
        self.apikey = apikey
        self.cookies = dict(cookies)
        """conversation_id → the Cookie that is valid for it."""
        self.mode = "list"
        self.script: list[str] = []
        self.queries: list[dict[str, str]] = []
        upstream.route("GET", PATH, self.generate)
        upstream.route("GET", r"/files/([A-Za-z0-9_.-]+)", self.file)

    @property
    def url(self) -> str:
        return self.upstream.url + PATH

    def generate(self, req: Request) -> Reply:
        query = {k: v[0] for k, v in req.query.items()}
        self.queries.append(query)
        if query.get("apikey") != self.apikey:
            # Echoes the key: the worst case for a client that builds messages from bodies.
            return json_reply({"code": 403, "message": f"apikey {query.get('apikey')} 无效"})
        if not query.get("description"):
            return json_reply({"code": 400, "message": "description 不能为空"})
        conversation = query.get("conversation_id", "")
        if self.cookies.get(conversation) != query.get("Cookie"):
            return json_reply({"code": 401, "message": "cookie 已失效，请重新登录"})
        scenario = self.script.pop(0) if self.script else self.mode
        image = f"{self.upstream.url}/files/jimeng-{len(self.queries)}.png"
        body: dict[str, Any]
        match scenario:
            case "list":
                body = {"code": 200, "image_url": [image, image.replace(".png", "-b.png")], "message": "success"}
            case "str":
                body = {"code": 200, "image_url": image}
            case "no_url":
                body = {"code": 200, "image_url": []}
            case "policy":
                body = {"code": 500, "message": "提示词包含敏感内容，审核未通过"}
            case "credits":
                body = {"code": 500, "message": "今日积分不足"}
            case "expired":
                body = {"code": 500, "message": "cookie 已失效"}
            case "business":
                body = {"code": 500, "message": "x"}
            case "not_json":
                return Reply(200, b"Internal error", {"content-type": "text/plain"})
            case "http_500":
                return json_reply({"code": 500, "message": "upstream down"}, 500)
            case _:
                raise AssertionError(f"unknown scenario {scenario!r}")
        return json_reply(body)

    def file(self, req: Request) -> Reply:
        return Reply(200, IMAGE, {"content-type": "image/png"})
