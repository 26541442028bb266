"""A deeply nested JSON reply is a typed ``invalid_response`` in every provider's JSON path.

Issue 10: a 10 KB reply of 5,000 nested arrays made the JSON decoder raise
``RecursionError``, which the provider actor logged as ``provider_bug`` with a traceback
(whose frame locals held the API key). Here every provider meets such a body on every
call it makes that reads JSON — successful answers, error answers, task polls — against
a real loopback HTTP upstream, and must answer ``ProviderFailure("invalid_response")``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from aiimg.messages import Operation
from aiimg.services.config import Config, config_from_dict
from aiimg.services.domain.errors import ProviderFailure
from aiimg.services.providers._json import MAX_JSON_DEPTH, json_value
from aiimg.services.providers.base import InputImage
from aiimg.services.providers.catalog import load_provider

from .fakes.attempt import attempt_context
from .fakes.server import FakeUpstream, Reply, Request, json_reply
from .helpers import png

pytestmark = pytest.mark.anyio

KEY = "sk-deep-json-test-key-0001"
DEPTH = 5000

SHAPES: dict[str, bytes] = {
    # The reported body: 10 KB of nested arrays.
    "arrays": b"[" * DEPTH + b"]" * DEPTH,
    # Nested error objects, so paths that dig into ``error`` / ``error.message`` follow it.
    "errors": b'{"error":' * DEPTH + b'"x"' + b"}" * DEPTH,
}


def _deep(shape: str, status: int) -> Callable[[Request], Reply]:
    def reply(_: Request) -> Reply:
        return Reply(status, SHAPES[shape], {"content-type": "application/json"})

    return reply


def _block(alias: str, url: str, mode: str) -> tuple[str, dict[str, Any]]:
    """(config section, block) for ``alias`` against the upstream at ``url``."""
    common: dict[str, Any] = {"max_retries": 0, "timeout": 10.0}
    if alias in ("openai_compat", "gemini_openai", "grok"):
        return "draw", {**common, "base_url": url, "api_keys": [KEY], "model": "m", "api_mode": mode}
    if alias == "gemini_native":
        return "draw", {**common, "api_url": url, "api_keys": [KEY]}
    if alias in ("gitee", "ark"):
        return "draw", {**common, "base_url": url, "api_keys": [KEY]}
    if alias == "gitee_async":
        return "edit", {**common, "base_url": url, "api_keys": [KEY], "poll_interval": 0.01, "poll_timeout": 2.0}
    if alias == "jimeng":
        return "draw", {**common, "api_url": f"{url}/api/jimeng", "apikey": KEY, "cookie_list": ["1:sid=abcdef"]}
    if alias == "grok_video":
        block = {**common, "server_url": url, "api_key": KEY, "api_mode": mode, "poll_interval": 0.01}
        return "video", {**block, "retry_delay": 0, "empty_response_retry": 0, "enabled": True}
    raise AssertionError(alias)


def _config(alias: str, url: str, mode: str) -> Config:
    section, block = _block(alias, url, mode)
    data: dict[str, Any] = {"network": {"allow_private_downloads": True}}
    if section == "video":
        data["video"] = block
    elif alias in ("gitee", "jimeng"):  # draw only
        data["draw"] = {alias: block}
    elif alias == "gitee_async":  # edit only
        data["edit"] = {alias: block}
    else:
        data["draw"] = {alias: block}
        data["edit"] = {alias: block}
    return config_from_dict(data)


# (alias, api_mode, operation, what answers deep): "all" = every call; "poll" = the task
# is created fine and its status poll answers deep.
CASES = [
    ("openai_compat", "images", "draw", "all"),
    ("openai_compat", "images", "edit", "all"),
    ("openai_compat", "chat", "draw", "all"),
    ("gemini_openai", "images", "draw", "all"),
    ("grok", "images", "draw", "all"),
    ("grok", "images", "edit", "all"),
    ("grok", "chat", "draw", "all"),
    ("gemini_native", "", "draw", "all"),
    ("gitee", "", "draw", "all"),
    ("gitee_async", "", "edit", "all"),
    ("gitee_async", "", "edit", "poll"),
    ("jimeng", "", "draw", "all"),
    ("ark", "", "draw", "all"),
    ("grok_video", "chat", "video", "all"),
    ("grok_video", "videos", "video", "all"),
    ("grok_video", "videos", "video", "poll"),
]


# A 5xx poll is a blip polled through without reading its body: no (poll, 500) case.
_PARAMS = [
    pytest.param(*case, status, id=f"{'-'.join(case)}-{status}")
    for case in CASES
    for status in (200, 400, 500)
    if not (case[3] == "poll" and status >= 500)
]


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize(("alias", "mode", "op", "where", "status"), _PARAMS)
async def test_deeply_nested_reply_is_invalid_response(
    upstream: FakeUpstream,
    http: httpx.AsyncClient,
    alias: str,
    mode: str,
    op: Operation,
    where: str,
    status: int,
    shape: str,
) -> None:
    assert len(SHAPES["arrays"]) == 10_000
    deep = _deep(shape, status)
    if where == "all":
        upstream.route("GET", r"/.*", deep)
        upstream.route("POST", r"/.*", deep)
    elif alias == "gitee_async":
        upstream.route("POST", r"/v1/async/images/edits", lambda _: json_reply({"task_id": "t1"}))
        upstream.route("GET", r"/v1/task/t1", deep)
    else:
        upstream.route("POST", r"/v1/videos/generations", lambda _: json_reply({"request_id": "r1"}))
        upstream.route("GET", r"/v1/videos/r1", deep)
    config = _config(alias, upstream.url, mode)
    provider = load_provider(alias, config)
    inputs = [InputImage(png(), "image/png")] if op != "draw" else []
    ctx = attempt_context(config, alias, http, op=op, inputs=inputs)
    try:
        with pytest.raises(ProviderFailure) as info:
            await provider.run(ctx)
    finally:
        await provider.aclose()
    assert upstream.requests, "the upstream was called"
    failure = info.value
    print(f"\n{alias}/{mode or '-'}/{op}/{where} {status} {shape}: {failure.reason}: {failure.message}")
    assert failure.reason == "invalid_response", failure
    assert KEY not in failure.message


@pytest.mark.parametrize(
    ("depth", "too_deep"),
    [(1, False), (MAX_JSON_DEPTH, False), (MAX_JSON_DEPTH + 1, True), (1400, True), (DEPTH, True)],
)
def test_depth_bound_is_exact(depth: int, too_deep: bool) -> None:
    """The bound is a number, not whatever stack the decoder happens to have left: 1,400 levels
    decode fine in msgspec and would only fail later, in whatever walks the value."""
    arrays = b"[" * depth + b"]" * depth
    objects = b'{"a":' * depth + b"1" + b"}" * depth
    for body in (arrays, objects):
        if too_deep:
            with pytest.raises(ProviderFailure) as info:
                json_value("up", body)
            assert info.value.reason == "invalid_response"
        else:
            assert json_value("up", body) is not None


def test_not_json_is_value_error() -> None:
    with pytest.raises(ValueError):
        json_value("up", b"<html>")
