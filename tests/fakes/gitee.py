"""A fake Gitee AI / Moark (provider-wire-formats §5) on a :class:`FakeUpstream`.

- ``POST /v1/images/generations``: Bearer key, JSON ``model``/``prompt``/``size``; z-image
  models accept only the 14 listed sizes (400 ``参数无效 'size'`` otherwise). ``script``
  queues draw scenarios (then ``mode``): ``b64`` ``url`` ``empty`` ``rate_limited``
  ``policy`` ``not_found`` ``server_error`` ``echo_key``.
- ``POST /v1/async/images/edits``: multipart only (a JSON body loses its files, as on the
  real API, and gets ``必传参数: image``); repeated ``image`` files and ``task_types``.
  Each submitted task follows the next plan in ``plans`` (else ``default_plan``): one
  state per ``GET /v1/task/{id}`` (also ``/api/v1/task/{id}``), the last one repeating.
  States: ``waiting`` ``in_progress`` ``success`` ``failure:<msg>`` (``output.error``
  as an object) ``failure_text:<msg>`` (as a string) ``failed:<msg>`` ``cancelled``
  ``blip`` (a 502 HTML page). Plan ``direct`` answers the submit with the image itself.
- ``GET /files/<name>``: the result images the task URLs point at.

Keys in ``no_package`` exist but have no resource package (the 400 Gitee gives then).
"""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..helpers import png
from .server import FakeUpstream, Reply, Request, json_reply

__all__ = ("DRAWN", "EDITED", "Z_IMAGE_SIZES", "GiteeFake", "Task")

DRAWN = png(96, 96, (250, 200, 0))
EDITED = png(96, 64, (0, 150, 150))

Z_IMAGE_SIZES = frozenset(
    {
        "256x256",
        "512x512",
        "1024x1024",
        "2048x2048",
        "1152x896",
        "2048x1536",
        "768x1024",
        "1536x2048",
        "2048x1360",
        "1360x2048",
        "1024x576",
        "2048x1152",
        "576x1024",
        "1152x2048",
    }
)


def gitee_error(status: int, message: str, code: int | None = None) -> Reply:
    err: dict[str, Any] = {"message": message}
    if code is not None:
        err["code"] = code
    return json_reply({"error": err}, status)


@dataclass
class Task:
    id: str
    plan: list[str]
    form: dict[str, list[tuple[str, bytes, str]]]
    polls: int = 0
    created_at: int = field(default_factory=lambda: int(time.time() * 1000))


class GiteeFake:
    def __init__(
        self, upstream: FakeUpstream, *, keys: Iterable[str] = ("gitee-test-1",), no_package: Iterable[str] = ()
    ) -> None:
        self.upstream = upstream
        self.keys = set(keys)
        self.no_package = set(no_package)
        self.mode = "b64"
        self.script: list[str] = []
        self.default_plan = ["waiting", "in_progress", "success"]
        self.plans: list[list[str]] = []
        self.tasks: dict[str, Task] = {}
        self.draw_bodies: list[dict[str, Any]] = []
        self.used_keys: list[str] = []
        self._ids = itertools.count(1)
        upstream.route("POST", r"/v1/images/generations", self.generations)
        upstream.route("POST", r"/v1/async/images/edits", self.submit)
        upstream.route("GET", r"/(?:api/)?v1/task/([A-Z0-9]+)", self.task)
        upstream.route("GET", r"/files/([A-Za-z0-9_.-]+)", self.file)

    # ---- auth ----------------------------------------------------------------------------

    def _auth(self, req: Request) -> tuple[str, Reply | None]:
        value = req.headers.get("authorization", "")
        key = value[7:] if value.lower().startswith("bearer ") else ""
        self.used_keys.append(key)
        if key in self.no_package:
            return key, gitee_error(400, "当前令牌尚未绑定到任何资源包，请先购买资源包")
        if key not in self.keys:
            # Echoes the token whole: the worst case for a client that builds messages from bodies.
            return key, gitee_error(401, f"Invalid token: {key}", 401)
        return key, None

    # ---- synchronous draw ----------------------------------------------------------------------

    def generations(self, req: Request) -> Reply:
        key, denied = self._auth(req)
        if denied:
            return denied
        try:
            body = req.json()
        except ValueError:
            return gitee_error(400, "请求体不是合法 JSON")
        self.draw_bodies.append(body)
        if not body.get("model") or not body.get("prompt"):
            return gitee_error(400, "必传参数: model, prompt")
        if str(body["model"]).lower().startswith("z-image") and body.get("size") not in Z_IMAGE_SIZES:
            return gitee_error(400, "参数无效 'size'")
        scenario = self.script.pop(0) if self.script else self.mode
        match scenario:
            case "b64":
                return json_reply(
                    {"created": int(time.time()), "data": [{"b64_json": base64.b64encode(DRAWN).decode()}]}
                )
            case "url":
                return json_reply(
                    {"created": int(time.time()), "data": [{"url": f"{self.upstream.url}/files/drawn.png"}]}
                )
            case "empty":
                return json_reply({"created": int(time.time()), "data": []})
            case "rate_limited":
                return gitee_error(429, "Too Many Requests", 429)
            case "policy":
                return gitee_error(400, "提示词包含违规内容 (sensitive content)")
            case "not_found":
                return gitee_error(404, "Not Found", 404)
            case "server_error":
                return gitee_error(500, "Service Temporarily Unavailable", 500)
            case "echo_key":
                return gitee_error(400, f"参数无效: token {key} 不支持该模型")
        raise AssertionError(f"unknown scenario {scenario!r}")

    # ---- async edits ------------------------------------------------------------------------------

    def submit(self, req: Request) -> Reply:
        _, denied = self._auth(req)
        if denied:
            return denied
        if not req.headers.get("content-type", "").startswith("multipart/form-data"):
            return gitee_error(400, "必传参数: image")
        form = req.form()
        images = [f for f in form.get("image", []) if f[0]]
        if not images:
            return gitee_error(400, "必传参数: image")
        if not form.get("prompt") or not form.get("model"):
            return gitee_error(400, "必传参数: prompt, model")
        task_id = f"T{next(self._ids):031d}".replace("0", "A")
        plan = self.plans.pop(0) if self.plans else list(self.default_plan)
        task = Task(task_id, plan, form)
        self.tasks[task_id] = task
        reply: dict[str, Any] = {
            "task_id": task_id,
            "status": "waiting",
            "created_at": task.created_at,
            "urls": {
                "get": f"{self.upstream.url}/api/v1/task/{task_id}",
                "cancel": f"{self.upstream.url}/api/v1/task/{task_id}/cancel",
            },
        }
        if plan == ["direct"]:
            reply["status"] = "success"
            reply["output"] = {"file_url": f"{self.upstream.url}/files/{task_id}.png"}
        return json_reply(reply)

    def task(self, req: Request) -> Reply:
        _, denied = self._auth(req)
        if denied:
            return denied
        task_id = req.path.rstrip("/").rsplit("/", 1)[-1]
        task = self.tasks.get(task_id)
        if task is None:
            return json_reply({"error": "task_not_found", "message": f"Task {task_id} not found"}, 404)
        state = task.plan[min(task.polls, len(task.plan) - 1)]
        task.polls += 1
        name, _, message = state.partition(":")
        body: dict[str, Any] = {
            "task_id": task_id,
            "status": name,
            "created_at": task.created_at,
            "urls": {"get": f"{self.upstream.url}/api/v1/task/{task_id}"},
        }
        match name:
            case "waiting":
                pass
            case "in_progress":
                body["started_at"] = task.created_at + 200
            case "success":
                body.update(
                    started_at=task.created_at + 200,
                    completed_at=task.created_at + 8000,
                    price=0.02,
                    output={"file_url": f"{self.upstream.url}/files/{task_id}.png?authorization=bce-auth-v1-fake"},
                )
            case "failure" | "failed":
                body.update(
                    completed_at=task.created_at + 130000,
                    price=None,
                    output={"error": {"code": 500, "message": message or "Service Temporarily Unavailable"}},
                )
            case "failure_text":
                body.update(
                    status="failure", price=None, output={"error": message or "An unexpected error has occurred."}
                )
            case "cancelled":
                body.update(price=None)
            case "blip":
                return Reply(502, b"<html><body>502 Bad Gateway</body></html>", {"content-type": "text/html"})
            case _:
                raise AssertionError(f"unknown task state {state!r}")
        return json_reply(body)

    def polls(self, task_id: str) -> int:
        return self.tasks[task_id].polls

    # ---- files ----------------------------------------------------------------------------------

    def file(self, req: Request) -> Reply:
        name = req.path.rsplit("/", 1)[-1]
        return Reply(200, DRAWN if name.startswith("drawn") else EDITED, {"content-type": "image/png"})
