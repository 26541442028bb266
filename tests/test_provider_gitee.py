"""gitee (synchronous draw) and gitee_async (task API edits) against a loopback fake of Gitee AI,
plus one edit job through the bus: router + gitee_async actor + real nats-server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from aiimg.messages import AttemptDispatched, AttemptSucceeded, JobCompleted, Operation
from aiimg.services.app.cli import format_trace
from aiimg.services.app.client import Client
from aiimg.services.app.stack import Stack, running
from aiimg.services.config import Config, config_from_dict
from aiimg.services.domain.errors import ProviderFailure
from aiimg.services.infra.bus import connect
from aiimg.services.providers.base import InputImage
from aiimg.services.providers.gitee import GiteeProvider, pick_size
from aiimg.services.providers.gitee_async import GiteeAsyncProvider

from .conftest import make_config
from .fakes.attempt import attempt_context
from .fakes.gitee import DRAWN, EDITED, Z_IMAGE_SIZES, GiteeFake
from .fakes.server import FakeUpstream
from .helpers import png

pytestmark = pytest.mark.anyio

KEY = "gitee-test-1"
KEY2 = "gitee-test-2"


@pytest.fixture(name="fake")
def _fake(upstream: FakeUpstream) -> GiteeFake:
    return GiteeFake(upstream, keys=[KEY, KEY2], no_package=["gitee-empty-1"])


def config_for(
    base_url: str, *, draw: dict[str, Any] | None = None, edit: dict[str, Any] | None = None, **top: Any
) -> Config:
    common = {"base_url": base_url, "api_keys": [KEY], "max_retries": 0}
    return config_from_dict(
        {
            "network": {"allow_private_downloads": True},
            "draw": {"gitee": {**common, **(draw or {})}},
            "edit": {"gitee_async": {**common, "poll_interval": 0.01, "poll_timeout": 5.0, **(edit or {})}},
            **top,
        }
    )


async def draw(config: Config, http: httpx.AsyncClient, provider: GiteeProvider | None = None, **kw: Any) -> bytes:
    prov = provider or GiteeProvider(config)
    return (await prov.run(attempt_context(config, "gitee", http, **kw))).data


async def edit(
    config: Config,
    http: httpx.AsyncClient,
    *,
    op: Operation = "edit",
    provider: GiteeAsyncProvider | None = None,
    inputs: list[InputImage] | None = None,
    **kw: Any,
) -> bytes:
    prov = provider or GiteeAsyncProvider(config)
    images = [InputImage(png(40, 30), "image/png")] if inputs is None else inputs
    return (await prov.run(attempt_context(config, "gitee_async", http, op=op, inputs=images, **kw))).data


# ---- gitee: synchronous draw --------------------------------------------------------------------


async def test_draw_sends_model_fields_and_decodes_b64(
    fake: GiteeFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    config = config_for(upstream.url, draw={"negative_prompt": "blurry"})
    assert await draw(config, http, prompt="a cat") == DRAWN
    req = upstream.calls("POST", r"/v1/images/generations")[-1]
    assert req.headers["authorization"] == f"Bearer {KEY}" and req.headers["x-failover-enabled"] == "true"
    # z-image-turbo takes no negative_prompt (seed behaviour case 31).
    assert req.json() == {"model": "z-image-turbo", "prompt": "a cat", "size": "1024x1024", "num_inference_steps": 9}


async def test_negative_prompt_goes_to_models_that_take_it(
    fake: GiteeFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    config = config_for(
        upstream.url,
        draw={"model": "Qwen-Image", "negative_prompt": "blurry", "size": "1328x1328", "allowed_sizes": []},
    )
    await draw(config, http)
    body = fake.draw_bodies[-1]
    assert body["negative_prompt"] == "blurry" and body["size"] == "1328x1328"


async def test_url_result_is_downloaded_from_the_upstream(
    fake: GiteeFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    fake.script = ["url"]
    prov = GiteeProvider(config_for(upstream.url))
    out = await prov.run(attempt_context(config_for(upstream.url), "gitee", http))
    assert out.data == DRAWN and out.source_url == f"{upstream.url}/files/drawn.png"


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("", "1024x1024"),
        ("4K", "2048x2048"),
        ("1K", "1024x1024"),
        ("16:9", "1024x576"),
        ("16:9 2K", "2048x1152"),
        ("1920x1080", "2048x1152"),
        ("3:4 2K", "1536x2048"),
        ("768x1024", "768x1024"),
        ("21:9", "1024x576"),
    ],
)
async def test_sizes_land_on_the_allowed_list(
    output: str, expected: str, fake: GiteeFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    await draw(config_for(upstream.url), http, output=output)
    assert fake.draw_bodies[-1]["size"] == expected and expected in Z_IMAGE_SIZES


def test_without_an_allowed_list_sizes_pass_through() -> None:
    assert pick_size("1328x1328", "1024x1024", []) == "1328x1328"
    assert pick_size("", "1664x928", []) == "1664x928"


@pytest.mark.parametrize(
    ("scenario", "reason", "status"),
    [
        ("empty", "no_image", 0),
        ("rate_limited", "rate_limited", 429),
        ("policy", "content_policy", 400),
        ("server_error", "upstream_error", 500),
        ("not_found", "unsupported", 404),
    ],
)
async def test_draw_failures_are_typed(
    scenario: str, reason: str, status: int, fake: GiteeFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    fake.script = [scenario]
    with pytest.raises(ProviderFailure) as info:
        await draw(config_for(upstream.url), http)
    assert (info.value.reason, info.value.status) == (reason, status)
    assert info.value.message.startswith("gitee")


async def test_404_parks_the_endpoint_and_a_parked_call_does_not_renew_it(
    fake: GiteeFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    config = config_for(upstream.url)
    provider = GiteeProvider(config)
    fake.script = ["not_found"]
    with pytest.raises(ProviderFailure):
        await draw(config, http, provider)
    until = dict(provider._cooldown._until)
    sent = len(upstream.requests)
    with pytest.raises(ProviderFailure) as info:
        await draw(config, http, provider)
    assert info.value.reason == "unsupported" and "parked" in info.value.message
    assert len(upstream.requests) == sent  # no HTTP call while parked
    assert provider._cooldown._until == until  # and the wait was not extended


async def test_draw_keys_rotate_and_are_reported_by_position(
    fake: GiteeFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    config = config_for(upstream.url, draw={"api_keys": [KEY, KEY2]})
    provider = GiteeProvider(config)
    for _ in range(3):
        await draw(config, http, provider)
    assert fake.used_keys == [KEY, KEY2, KEY]
    with pytest.raises(ProviderFailure) as info:
        await draw(config_for(upstream.url, draw={"api_keys": ["gitee-wrong-7"]}), http)
    assert info.value.reason == "auth" and "key #1" in info.value.message
    assert "gitee-wrong-7" not in info.value.message


async def test_key_without_resource_package_is_auth(
    fake: GiteeFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    with pytest.raises(ProviderFailure) as info:
        await draw(config_for(upstream.url, draw={"api_keys": ["gitee-empty-1"]}), http)
    assert info.value.reason == "auth" and "resource package" in info.value.message
    assert "gitee-empty-1" not in info.value.message


async def test_a_key_echoed_in_an_error_body_is_scrubbed(
    fake: GiteeFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    fake.script = ["echo_key"]
    with pytest.raises(ProviderFailure) as info:
        await draw(config_for(upstream.url), http)
    assert info.value.reason == "bad_request"
    assert KEY not in info.value.message and "***" in info.value.message


# ---- gitee_async: task API edits -------------------------------------------------------------------


async def test_edit_polls_waiting_running_success_then_downloads(
    fake: GiteeFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    inputs = [InputImage(png(40, 30), "image/png"), InputImage(png(20, 20, (1, 2, 3)), "image/png")]
    assert await edit(config_for(upstream.url), http, prompt="make it teal", inputs=inputs) == EDITED
    [task] = fake.tasks.values()
    assert task.polls == 3
    assert len(upstream.calls("GET", r"/files/.*")) == 1
    form = task.form
    assert form["prompt"][0][1] == b"make it teal" and form["model"][0][1] == b"Qwen-Image-Edit-2511"
    assert form["num_inference_steps"][0][1] == b"4" and form["guidance_scale"][0][1] == b"1"
    assert [v for _, v, _ in form["task_types"]] == [b"id"]
    assert [(name, ctype) for name, _, ctype in form["image"]] == [
        ("image_0.png", "image/png"),
        ("image_1.png", "image/png"),
    ]
    assert form["image"][0][1] == inputs[0].data
    submit = upstream.calls("POST", r"/v1/async/images/edits")[-1]
    assert submit.headers["authorization"] == f"Bearer {KEY}"


async def test_task_types_are_filtered_and_selfies_use_the_selfie_list(
    fake: GiteeFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    config = config_for(
        upstream.url,
        edit={"task_types": ["id", "bogus", "style"]},
        selfie={"gitee_task_types": ["background", "nope", "id"]},
    )
    await edit(config, http)
    await edit(config, http, op="selfie")
    first, second = fake.tasks.values()
    assert [v for _, v, _ in first.form["task_types"]] == [b"id", b"style"]
    assert [v for _, v, _ in second.form["task_types"]] == [b"background", b"id"]


@pytest.mark.parametrize(
    ("plan", "reason", "fragment"),
    [
        (["waiting", "failure:nsfw content detected"], "content_policy", "nsfw"),
        (["waiting", "in_progress", "failure:Service Temporarily Unavailable"], "upstream_error", "Temporarily"),
        (
            ["failure_text:An unexpected error has occurred, please check the server log."],
            "upstream_error",
            "unexpected",
        ),
        (["waiting", "failed:model crashed"], "upstream_error", "model crashed"),
        (["waiting", "cancelled"], "upstream_error", "cancelled"),
    ],
)
async def test_task_failures_end_the_attempt_with_the_message(
    plan: list[str], reason: str, fragment: str, fake: GiteeFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    fake.plans = [plan]
    with pytest.raises(ProviderFailure) as info:
        await edit(config_for(upstream.url), http)
    assert info.value.reason == reason and fragment in info.value.message
    [task] = fake.tasks.values()
    assert task.polls == len(plan)  # stopped at the terminal state
    assert not upstream.calls("GET", r"/files/.*")


async def test_task_that_never_finishes_times_out_after_poll_timeout(
    fake: GiteeFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    fake.plans = [["waiting", "in_progress"]]
    config = config_for(upstream.url, edit={"poll_interval": 0.1, "poll_timeout": 0.2})
    with pytest.raises(ProviderFailure) as info:
        await edit(config, http)
    assert info.value.reason == "timeout" and "in_progress" in info.value.message
    [task] = fake.tasks.values()
    assert task.polls == 2  # poll_timeout // poll_interval rounds, as in the old plugin


async def test_a_poll_blip_is_polled_through(fake: GiteeFake, upstream: FakeUpstream, http: httpx.AsyncClient) -> None:
    fake.plans = [["waiting", "blip", "success"]]
    assert await edit(config_for(upstream.url), http) == EDITED
    [task] = fake.tasks.values()
    assert task.polls == 3


async def test_submit_that_returns_the_image_directly_needs_no_poll(
    fake: GiteeFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    fake.plans = [["direct"]]
    assert await edit(config_for(upstream.url), http) == EDITED
    [task] = fake.tasks.values()
    assert task.polls == 0


@pytest.mark.parametrize("suffix", ["", "/v1", "/v1/"])
async def test_base_url_variants(suffix: str, fake: GiteeFake, upstream: FakeUpstream, http: httpx.AsyncClient) -> None:
    assert await edit(config_for(upstream.url + suffix), http) == EDITED
    assert upstream.calls("POST", r"/v1/async/images/edits")


async def test_edit_rejected_key_fails_over_and_all_rejected_is_auth_by_position(
    fake: GiteeFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    assert await edit(config_for(upstream.url, edit={"api_keys": ["gitee-revoked-0", KEY]}), http) == EDITED
    with pytest.raises(ProviderFailure) as info:
        await edit(config_for(upstream.url, edit={"api_keys": ["gitee-revoked-0", "gitee-revoked-9"]}), http)
    assert info.value.reason == "auth" and "#1" in info.value.message and "#2" in info.value.message
    assert "gitee-revoked" not in info.value.message


async def test_edit_without_images_makes_no_call(
    fake: GiteeFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    with pytest.raises(ProviderFailure) as info:
        await edit(config_for(upstream.url), http, inputs=[])
    assert info.value.reason == "bad_request" and not upstream.requests


# ---- through the bus ---------------------------------------------------------------------------------


async def test_edit_job_through_the_bus_polls_to_success_and_trace_shows_it(nats_url: str, tmp_path: Path) -> None:
    with FakeUpstream() as up:
        fake = GiteeFake(up, keys=[KEY])
        fake.plans = [["waiting", "in_progress", "in_progress", "success"]]
        config = make_config(
            nats_url,
            tmp_path,
            network={"allow_private_downloads": True},
            edit={
                "provider": "gitee_async",
                "gitee_async": {
                    "base_url": up.url + "/v1",
                    "api_keys": [KEY],
                    "poll_interval": 0.02,
                    "poll_timeout": 10.0,
                    "max_retries": 0,
                },
            },
        )
        bus = await connect(config)
        await bus.ensure_layout()
        try:
            async with running(Stack(bus, providers=[GiteeAsyncProvider(config)])):
                client = Client(bus)
                job = await client.submit("edit", "make it teal", images=[png(64, 48)])
                end, data = await client.result(job, timeout=30)
            events = [e for _, e in await bus.history(job)]
        finally:
            await bus.close()
    assert isinstance(end, JobCompleted) and end.provider == "gitee_async" and data == EDITED
    [task] = fake.tasks.values()
    assert task.polls == 4
    assert [type(e).__name__ for e in events] == [
        "JobRequested",
        "AttemptDispatched",
        "AttemptSucceeded",
        "JobCompleted",
    ]
    dispatched = next(e for e in events if isinstance(e, AttemptDispatched))
    succeeded = next(e for e in events if isinstance(e, AttemptSucceeded))
    assert dispatched.chain == ["gitee_async"] and succeeded.source_url.startswith(up.url + "/files/")
    trace = format_trace(events)
    attempt_lines = [line for line in trace if "attempt." in line]
    assert len(attempt_lines) == 2 and all("gitee_async" in line for line in attempt_lines)
    assert "attempt=1 image/png 96x64" in attempt_lines[1]
