"""``grok_video`` against a fake xAI/gateway upstream (both dialects), then end to end on the bus and the CLI."""

from __future__ import annotations

import base64
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import structlog

from aiimg.messages import AttemptDispatched, AttemptSucceeded, JobCompleted, JobFailed, JobRejected
from aiimg.services.app import cli
from aiimg.services.app.cli import format_trace
from aiimg.services.app.client import Client
from aiimg.services.app.stack import Stack, running
from aiimg.services.config import Config, config_from_dict, load_config
from aiimg.services.domain.errors import ProviderFailure
from aiimg.services.infra.bus import Bus, connect
from aiimg.services.infra.http import DownloadClient
from aiimg.services.providers._video_urls import find_video_url, looks_like_video, video_url_in_text
from aiimg.services.providers.base import AttemptContext, InputImage, Output
from aiimg.services.providers.catalog import load_provider
from aiimg.services.providers.grok_video import GrokVideoProvider, video_api_root

from .conftest import make_config
from .fakes.server import Reply, json_reply
from .fakes.xai_video import (
    XaiVideoFake,
    boxes,
    chat_attachments,
    chat_files_route,
    chat_html_video,
    chat_markdown_link,
    chat_parts,
    chat_text,
    html_page,
    tiny_mp4,
)
from .helpers import png

KEY = "xai-test-key-1"
NET = {"allow_private_downloads": True}


# ---- helpers ---------------------------------------------------------------------------


def video_block(fake: XaiVideoFake, **over: Any) -> dict[str, Any]:
    return {
        "server_url": fake.url,
        "api_key": KEY,
        "poll_interval": 0.02,
        "retry_delay": 0,
        "max_retries": 0,
        **over,
    }


def cfg(fake: XaiVideoFake, **over: Any) -> Config:
    return config_from_dict({"video": video_block(fake, **over), "network": NET})


@pytest.fixture(scope="module", name="servers")
def _servers() -> Iterator[XaiVideoFake]:
    with XaiVideoFake(KEY) as fake:  # started once: stopping a stdlib HTTP server takes ~0.5 s
        yield fake


@pytest.fixture(name="fake")
def _fake(servers: XaiVideoFake) -> XaiVideoFake:
    servers.reset()
    return servers


async def attempt(
    config: Config,
    http: httpx.AsyncClient,
    *,
    prompt: str = "the cat slowly turns its head",
    images: list[bytes] | None = None,
    output: str = "",
    budget: float = 20.0,
) -> Output:
    dispatch = AttemptDispatched(
        job_id="job-1",
        attempt=1,
        provider="grok_video",
        op="video",
        prompt=prompt,
        output=output,
        deadline=time.time() + budget,
    )
    assert isinstance(http, DownloadClient)  # the conftest client: API calls and (open) downloads alike
    ctx = AttemptContext(
        dispatch=dispatch,
        settings=config.video,
        config=config,
        inputs=[InputImage(b, "image/png") for b in ([png()] if images is None else images)],
        http=http,
        downloads=http,
        deadline=time.monotonic() + budget,
    )
    return await GrokVideoProvider(config).run(ctx)


async def failure(config: Config, http: httpx.AsyncClient, **kw: Any) -> ProviderFailure:
    with pytest.raises(ProviderFailure) as info:
        await attempt(config, http, **kw)
    return info.value


# ---- the fake's mp4 ---------------------------------------------------------------------


def test_fake_mp4_is_a_tiled_iso_bmff_file() -> None:
    data = tiny_mp4()
    assert len(data) >= 1024
    assert [kind for kind, _ in boxes(data)] == [b"ftyp", b"moov", b"mdat"]
    assert data[4:12] == b"ftypisom"


# ---- URL extraction ------------------------------------------------------------------------

H = "https://vidgen.example.com"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"video_url": f"{H}/v/abc"}, f"{H}/v/abc"),  # top-level, extension-less: the key says video
        (chat_html_video(f"{H}/a.mp4"), f"{H}/a.mp4"),
        ({"choices": [{"message": {"content": f"<video controls><source src='{H}/s.webm'></video>"}}]}, f"{H}/s.webm"),
        ({"choices": [{"message": {"content": f"done: {H}/x/y.mov?sig=1&t=2 ok"}}]}, f"{H}/x/y.mov?sig=1&t=2"),
        ({"choices": [{"message": {"content": f"see [clip]({H}/c.mp4)"}}]}, f"{H}/c.mp4"),
        (chat_markdown_link(f"{H}/gen/7f3e"), f"{H}/gen/7f3e"),  # label says video, no extension
        ({"choices": [{"message": {"content": f"完成 {H}/v1/files/video?id=42。"}}]}, f"{H}/v1/files/video?id=42"),
        (chat_parts(f"{H}/p/9"), f"{H}/p/9"),
        ({"choices": [{"message": {"content": [{"type": "text", "text": f"<video src={H}/t.mp4>"}]}}]}, f"{H}/t.mp4"),
        (chat_attachments(f"{H}/att/1"), f"{H}/att/1"),
        ({"choices": [{"message": {"content": "", "files": [{"file_url": f"{H}/f.mp4"}]}}]}, f"{H}/f.mp4"),
        ({"choices": [{"message": {"content": "ok"}}], "data": {"result": {"video": {"url": f"{H}/d"}}}}, f"{H}/d"),
        ({"choices": [{"message": {"content": f"{H}/users/u/generated_video"}}]}, f"{H}/users/u/generated_video"),
        (
            {"choices": [{"message": {"content": f"{H}/images/p_" + base64.urlsafe_b64encode(b"/u/v.mp4").decode()}}]},
            f"{H}/images/p_" + base64.urlsafe_b64encode(b"/u/v.mp4").decode(),
        ),
    ],
)
def test_find_video_url_shapes(body: dict[str, Any], expected: str) -> None:
    assert find_video_url(body) == expected


def test_relative_gateway_route_resolves_against_the_api_origin() -> None:
    body = {
        "choices": [{"message": {"content": [{"type": "video_url", "video_url": {"url": "/v1/files/video?id=5"}}]}}]
    }
    assert find_video_url(body, origin="https://gw.example") == "https://gw.example/v1/files/video?id=5"


@pytest.mark.parametrize(
    "body",
    [
        {"choices": [{"message": {"content": f"![preview]({H}/thumb.png)"}}]},  # an image, not a video
        {"choices": [{"message": {"content": f"read more at {H}/docs/page"}}]},  # no video context
        {"choices": [{"message": {"content": "still rendering, try again"}}]},
        {"video_url": f"{H}/poster.jpg"},  # key says video, but it is plainly an image
        {"choices": [{"message": {"content": 'src="ftp://h/a.mp4"'}}]},
        {"choices": []},
        ["not", "an", "object"],
    ],
)
def test_find_video_url_rejects(body: Any) -> None:
    assert find_video_url(body) is None


def test_deep_scan_is_bounded_in_depth() -> None:
    nested: Any = {"video_url": f"{H}/deep.mp4"}
    for _ in range(8):
        nested = {"wrap": nested}
    assert find_video_url({"choices": [{"message": {"content": "x"}}], "a": nested}) is None
    shallow: Any = {"video_url": f"{H}/deep.mp4"}
    for _ in range(3):
        shallow = {"wrap": shallow}
    assert find_video_url({"a": shallow}) == f"{H}/deep.mp4"


def test_url_validity_rules() -> None:
    assert looks_like_video("https://h.example/a.MP4")
    assert looks_like_video("https://h.example/v1/files/video?id=1")
    assert not looks_like_video("https://h.example/v1/files/video")  # no id
    assert not looks_like_video("http://h/a.mp4".replace("h/", "h/\n"))  # control characters
    assert not looks_like_video("https://h.example/a.movie.png")
    assert video_url_in_text('<video src="/v1/files/video?id=3">', origin="http://g") == "http://g/v1/files/video?id=3"


# ---- server_url normalisation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_url", "root"),
    [
        ("https://h", "https://h/v1"),
        ("https://h/", "https://h/v1"),
        ("https://h/v1", "https://h/v1"),
        ("https://h/v1/", "https://h/v1"),
        ("https://h/v1/chat/completions", "https://h/v1"),
        ("https://h/v1/videos/generations", "https://h/v1"),
        ("https://h/proxy/grok", "https://h/proxy/grok/v1"),
    ],
)
def test_video_api_root(server_url: str, root: str) -> None:
    assert video_api_root(server_url) == root


@pytest.mark.anyio
@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/", "/v1/chat/completions"])
async def test_every_server_url_form_posts_to_chat_completions_once_prefixed(
    fake: XaiVideoFake, http: httpx.AsyncClient, suffix: str
) -> None:
    out = await attempt(cfg(fake, server_url=fake.url + suffix), http)
    assert out.data == fake.video
    assert [r.path for r in fake.api.requests] == ["/v1/chat/completions"]


# ---- chat mode -------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("shape", [chat_html_video, chat_markdown_link, chat_parts, chat_attachments, chat_files_route])
async def test_chat_mode_reply_shapes_all_yield_the_video(
    fake: XaiVideoFake, http: httpx.AsyncClient, shape: Callable[[str], dict[str, Any]]
) -> None:
    fake.chat_script = [shape]
    image = png(80, 60)
    out = await attempt(cfg(fake, model="grok-imagine-0.9"), http, images=[image])
    assert out.data == fake.video
    expected = fake.files_url("chat1") if shape is chat_files_route else fake.cdn_url("chat1")
    assert out.source_url == expected
    (req,) = fake.calls("POST", r"/v1/chat/completions")
    body = req.json()
    assert body["model"] == "grok-imagine-0.9"
    text, picture = body["messages"][0]["content"]
    assert text == {"type": "text", "text": "the cat slowly turns its head"}
    assert picture["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(image).decode()
    assert req.headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.anyio
async def test_cdn_never_sees_the_key_but_the_gateway_files_route_does(
    fake: XaiVideoFake, http: httpx.AsyncClient
) -> None:
    await attempt(cfg(fake), http)
    (cdn_get,) = fake.cdn.requests
    assert "authorization" not in cdn_get.headers
    fake.chat_script = [chat_files_route]
    await attempt(cfg(fake), http)
    (files_get,) = fake.calls("GET", r"/v1/files/video")
    assert files_get.headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.anyio
@pytest.mark.parametrize("extra", [0, 2])
async def test_empty_reply_is_asked_again_empty_response_retry_times(
    fake: XaiVideoFake, http: httpx.AsyncClient, extra: int
) -> None:
    fake.chat_script = [chat_text("Generating your video, please wait…")]
    exc = await failure(cfg(fake, empty_response_retry=extra), http)
    assert exc.reason == "no_image"
    assert f"after {extra + 1} tries" in exc.message and "Generating your video" in exc.message
    assert len(fake.calls("POST", r"/v1/chat/completions")) == extra + 1


@pytest.mark.anyio
async def test_url_on_the_last_allowed_pass_succeeds(fake: XaiVideoFake, http: httpx.AsyncClient) -> None:
    fake.chat_script = [chat_text("wait"), chat_text("wait"), chat_html_video]
    out = await attempt(cfg(fake, empty_response_retry=2), http)
    assert out.data == fake.video
    assert len(fake.calls("POST", r"/v1/chat/completions")) == 3


@pytest.mark.anyio
async def test_refusal_text_is_content_policy(fake: XaiVideoFake, http: httpx.AsyncClient) -> None:
    fake.chat_script = [chat_text("This request was blocked by content moderation.")]
    exc = await failure(cfg(fake, empty_response_retry=0), http)
    assert exc.reason == "content_policy"


# ---- errors ------------------------------------------------------------------------------------

ERRORS = [
    (json_reply({"error": {"message": "bad key", "type": "invalid_request_error"}}, 401), "auth", 401),
    (json_reply({"code": "forbidden", "error": "personal-team-blocked:spending-limit"}, 403), "auth", 403),
    (json_reply({"error": "Your team has used all available credits"}, 429, {"retry-after": "7"}), "rate_limited", 429),
    (json_reply({"error": {"message": "The server had an error", "type": "server_error"}}, 500), "upstream_error", 500),
    (html_page(502), "upstream_error", 502),
    (html_page(200), "invalid_response", 200),
    (Reply(200, b'{"choices": [', {"content-type": "application/json"}), "invalid_response", 200),
    (
        json_reply({"code": "Client specified an invalid argument", "error": "Incorrect API key provided: xa***"}, 400),
        "auth",
        400,
    ),
    (
        json_reply({"error": {"message": "Request blocked by moderation", "code": "moderation_blocked"}}),
        "content_policy",
        200,
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("reply", "reason", "status"), ERRORS)
async def test_chat_errors_are_typed_and_not_retried_in_the_provider(
    fake: XaiVideoFake, http: httpx.AsyncClient, reply: Reply, reason: str, status: int
) -> None:
    fake.fail_next("chat", reply)
    exc = await failure(cfg(fake, empty_response_retry=2), http)
    assert (exc.reason, exc.status) == (reason, status)
    assert exc.message.startswith("grok_video") and len(exc.message) < 300
    assert "<html" not in exc.message.lower()
    assert len(fake.calls("POST", r"/v1/chat/completions")) == 1
    if status == 429:
        assert exc.retry_after == 7


@pytest.mark.anyio
async def test_wrong_key_is_auth(fake: XaiVideoFake, http: httpx.AsyncClient) -> None:
    exc = await failure(cfg(fake, api_key="xai-wrong-key-9"), http)
    assert exc.reason == "auth" and exc.status == 401
    assert "xai-wrong-key-9" not in exc.message


@pytest.mark.anyio
async def test_key_echoed_by_the_upstream_never_reaches_the_message(
    fake: XaiVideoFake, http: httpx.AsyncClient
) -> None:
    fake.fail_next("chat", json_reply({"error": {"message": f"upstream rejected token {KEY} for model"}}, 500))
    exc = await failure(cfg(fake), http)
    assert exc.reason == "upstream_error"
    assert KEY not in exc.message and KEY not in str(exc)


@pytest.mark.anyio
async def test_input_checks_happen_before_any_call(fake: XaiVideoFake, http: httpx.AsyncClient) -> None:
    assert (await failure(cfg(fake), http, images=[])).reason == "bad_request"
    assert (await failure(cfg(fake), http, prompt="  ")).reason == "bad_request"
    assert (await failure(cfg(fake, api_mode="videos"), http, output="4K")).reason == "bad_request"
    assert (await failure(cfg(fake, api_key=""), http)).reason == "auth"
    assert fake.api.requests == []


@pytest.mark.anyio
async def test_video_larger_than_max_bytes_is_refused(fake: XaiVideoFake, http: httpx.AsyncClient) -> None:
    exc = await failure(cfg(fake, max_bytes=1024), http)
    assert exc.reason == "invalid_response" and "cap" in exc.message


# ---- videos mode ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_videos_mode_polls_until_done(fake: XaiVideoFake, http: httpx.AsyncClient) -> None:
    fake.task_script = ["pending", "queued", "pending", "done"]
    image = png(70, 40)
    out = await attempt(
        cfg(fake, api_mode="videos", duration=6, resolution="480p"), http, images=[image], output="16:9"
    )
    (task,) = fake.tasks
    assert out.data == fake.video and out.source_url == fake.cdn_url(task)
    (create,) = fake.calls("POST", r"/v1/videos/generations")
    assert create.json() == {
        "model": "grok-imagine-video",  # the chat-mode default model is not sent to the videos API
        "prompt": "the cat slowly turns its head",
        "image": {"url": "data:image/png;base64," + base64.b64encode(image).decode()},
        "duration": 6,
        "aspect_ratio": "16:9",
        "resolution": "480p",
    }
    assert len(fake.calls("GET", rf"/v1/videos/{task}")) == 4
    assert "authorization" not in fake.cdn.requests[0].headers


@pytest.mark.anyio
async def test_videos_mode_202_with_an_empty_body_is_still_rendering(
    fake: XaiVideoFake, http: httpx.AsyncClient
) -> None:
    fake.task_script = ["deferred", "deferred", "pending", "deferred", "done"]
    out = await attempt(cfg(fake, api_mode="videos"), http)
    (task,) = fake.tasks
    assert out.data == fake.video and out.source_url == fake.cdn_url(task)
    assert len(fake.calls("GET", rf"/v1/videos/{task}")) == 5


@pytest.mark.anyio
async def test_videos_mode_other_empty_polls_stay_invalid(fake: XaiVideoFake, http: httpx.AsyncClient) -> None:
    fake.fail_next("poll", Reply(200, b""))  # a 200 must say something: empty is not "still working"
    exc = await failure(cfg(fake, api_mode="videos"), http)
    assert exc.reason == "invalid_response"


@pytest.mark.anyio
async def test_videos_mode_relative_content_url_is_fetched_with_the_key(
    fake: XaiVideoFake, http: httpx.AsyncClient
) -> None:
    fake.task_script = ["done"]
    fake.result_url = lambda task: f"/v1/videos/{task}/content"
    out = await attempt(cfg(fake, api_mode="videos", model="grok-imagine-video-1.5"), http)
    (task,) = fake.tasks
    assert out.data == fake.video and out.source_url == f"{fake.url}/v1/videos/{task}/content"
    assert fake.calls("POST", r"/v1/videos/generations")[0].json()["model"] == "grok-imagine-video-1.5"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("script", "message", "moderated", "reason"),
    [
        (["pending", "failed"], "Video generation failed", False, "upstream_error"),
        (["failed"], "Generated video rejected by content moderation", False, "content_policy"),
        (["pending", "expired"], "", False, "timeout"),
        (["done"], "", True, "content_policy"),
    ],
)
async def test_videos_mode_terminal_failures(
    fake: XaiVideoFake, http: httpx.AsyncClient, script: list[str], message: str, moderated: bool, reason: str
) -> None:
    fake.task_script = script
    fake.failure_message = message or fake.failure_message
    fake.moderated = moderated
    exc = await failure(cfg(fake, api_mode="videos"), http)
    assert exc.reason == reason
    assert exc.message.startswith("grok_video")
    assert fake.cdn.requests == []
    (task,) = fake.tasks
    assert len(fake.calls("GET", rf"/v1/videos/{task}")) == len(script)


@pytest.mark.anyio
async def test_videos_mode_gives_up_at_the_attempt_deadline(fake: XaiVideoFake, http: httpx.AsyncClient) -> None:
    fake.task_script = ["pending"]
    exc = await failure(cfg(fake, api_mode="videos", poll_interval=0.05), http, budget=0.6)
    assert exc.reason == "timeout" and "still pending" in exc.message
    assert len(fake.calls("GET", r"/v1/videos/[^/]+")) >= 1


@pytest.mark.anyio
async def test_videos_mode_rides_out_a_transient_poll_error(fake: XaiVideoFake, http: httpx.AsyncClient) -> None:
    fake.task_script = ["pending", "done"]
    fake.fail_next("poll", json_reply({"error": {"message": "overloaded"}}, 503))
    out = await attempt(cfg(fake, api_mode="videos", max_retries=1), http)
    assert out.data == fake.video
    fake.fail_next("poll", json_reply({"error": {"message": "overloaded"}}, 503), times=2)
    exc = await failure(cfg(fake, api_mode="videos", max_retries=1), http)
    assert exc.reason == "upstream_error" and exc.status == 503


@pytest.mark.anyio
@pytest.mark.parametrize(("reply", "reason", "status"), ERRORS[:6])
async def test_videos_mode_create_errors(
    fake: XaiVideoFake, http: httpx.AsyncClient, reply: Reply, reason: str, status: int
) -> None:
    fake.fail_next("create", reply)
    exc = await failure(cfg(fake, api_mode="videos"), http)
    assert (exc.reason, exc.status) == (reason, status)
    assert fake.tasks == {}


# ---- end to end on the bus ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def video_bus(
    nats_url: str, tmp_path: Path, fake: XaiVideoFake, policy: dict[str, Any] | None = None, **video: Any
) -> AsyncIterator[Bus]:
    config = make_config(nats_url, tmp_path, video=video_block(fake, **video), network=NET, policy=policy or {})
    bus = await connect(config)
    await bus.ensure_layout()
    try:
        yield bus
    finally:
        await bus.close()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["chat", "videos"])
async def test_video_job_end_to_end(nats_url: str, tmp_path: Path, fake: XaiVideoFake, mode: str) -> None:
    async with video_bus(nats_url, tmp_path, fake, api_mode=mode) as bus:
        provider = load_provider("grok_video", bus.config)
        assert isinstance(provider, GrokVideoProvider)
        async with running(Stack(bus, providers=[provider])):
            client = Client(bus)
            job = await client.submit("video", "waves roll in", images=[png()])
            end, data = await client.result(job, timeout=30)
        events = [e for _, e in await bus.history(job)]
    assert data == fake.video
    assert end.provider == "grok_video" and end.result.mime == "video/mp4" and end.result.size == len(fake.video)
    task = "chat1" if mode == "chat" else next(iter(fake.tasks))
    assert end.source_url == fake.cdn_url(task)
    succeeded = [e for e in events if isinstance(e, AttemptSucceeded)]
    assert [e.source_url for e in succeeded] == [end.source_url]
    trace = "\n".join(format_trace(events))
    assert "attempt.dispatched.v1" in trace and "grok_video" in trace and "chain=grok_video" in trace
    assert "attempt.succeeded.v1" in trace and "video/mp4" in trace and "job.completed.v1" in trace


@pytest.mark.anyio
async def test_video_job_without_image_is_rejected_before_any_provider(
    nats_url: str, tmp_path: Path, fake: XaiVideoFake
) -> None:
    async with video_bus(nats_url, tmp_path, fake, max_retries=2) as bus:
        async with running(Stack(bus, providers=[GrokVideoProvider(bus.config)])):
            client = Client(bus)
            job = await client.submit("video", "no picture")
            end = await client.wait(job, timeout=30)
            events = [e for _, e in await bus.history(job)]
    assert isinstance(end, JobRejected) and end.reason == "bad_request"
    assert "needs at least one input image" in end.message
    assert not any(isinstance(e, AttemptDispatched) for e in events)
    assert fake.api.requests == []


@pytest.mark.anyio
async def test_disabled_video_fails_at_once_without_a_dispatch(
    nats_url: str, tmp_path: Path, fake: XaiVideoFake
) -> None:
    async with video_bus(nats_url, tmp_path, fake, enabled=False) as bus:
        async with running(Stack(bus, providers=[GrokVideoProvider(bus.config)])):
            client = Client(bus)
            job = await client.submit("video", "x", images=[png()])
            end = await client.wait(job, timeout=30)
        events = [e for _, e in await bus.history(job)]
    assert isinstance(end, JobFailed) and "not configured" in end.message
    assert not any(isinstance(e, AttemptDispatched) for e in events)
    assert fake.api.requests == []


@pytest.mark.anyio
async def test_rate_limited_video_is_retried_by_the_router(nats_url: str, tmp_path: Path, fake: XaiVideoFake) -> None:
    fake.fail_next("chat", json_reply({"error": {"message": "slow down"}}, 429, {"retry-after": "0.2"}))
    async with video_bus(nats_url, tmp_path, fake, policy={"backoff": 0.05}, max_retries=1) as bus:
        async with running(Stack(bus, providers=[GrokVideoProvider(bus.config)])):
            client = Client(bus)
            job = await client.submit("video", "x", images=[png()])
            end = await client.wait(job, timeout=30)
        dispatches = [e for _, e in await bus.history(job) if isinstance(e, AttemptDispatched)]
    assert isinstance(end, JobCompleted) and end.attempt == 2
    assert len(fake.calls("POST", r"/v1/chat/completions")) == 2
    retry = dispatches[1]
    assert retry.not_before - retry.at == pytest.approx(0.2, abs=0.01)  # the Retry-After hint, not the backoff


# ---- the CLI ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cli_video_command_writes_the_mp4(
    nats_url: str, tmp_path: Path, fake: XaiVideoFake, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.task_script = ["pending", "done"]
    config_file = tmp_path / "aiimg.toml"
    config_file.write_text(
        f"""
data_dir = "{tmp_path / "data"}"

[nats]
url = "{nats_url}"
prefix = "t{uuid.uuid4().hex[:10]}"

[network]
allow_private_downloads = true

[video]
server_url = "{fake.url}/v1"
api_key = "{KEY}"
api_mode = "videos"
poll_interval = 0.02
""",
        encoding="utf-8",
    )
    image = tmp_path / "frame.png"
    image.write_bytes(png())
    out = tmp_path / "clip.mp4"
    config = load_config(config_file)
    bus = await connect(config)
    await bus.ensure_layout()
    saved = structlog.get_config()  # cli.main configures logging for the process; put it back after
    try:
        async with running(Stack(bus, providers=[GrokVideoProvider(config)])):
            argv = [
                "-c",
                str(config_file),
                "video",
                "the flag waves",
                "-i",
                str(image),
                "-o",
                str(out),
                "--timeout",
                "30",
            ]
            code = await anyio.to_thread.run_sync(cli.main, argv)
    finally:
        structlog.configure(**saved)
        await bus.close()
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.read_bytes() == fake.video
    assert captured.out.strip().splitlines()[-1] == str(out)  # the path is the command's stdout result
    assert "grok_video" in captured.err and "done" in captured.err
    assert KEY not in captured.err + captured.out
