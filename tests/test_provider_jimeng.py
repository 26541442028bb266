"""jimeng against a loopback fake of the Jimeng aggregator's GET protocol."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest

from aiimg.messages import JobRequested
from aiimg.services.config import Config, config_from_dict
from aiimg.services.domain.errors import ConfigError, ProviderFailure
from aiimg.services.domain.routing import plan_chain
from aiimg.services.providers.base import InputImage
from aiimg.services.providers.jimeng import JimengProvider, parse_cookie, pick_ratio

from .fakes.attempt import attempt_context
from .fakes.jimeng import IMAGE, JimengFake
from .fakes.server import FakeUpstream
from .helpers import png

pytestmark = pytest.mark.anyio

APIKEY = "jm-test-apikey-1"


@pytest.fixture(name="fake")
def _fake(upstream: FakeUpstream) -> JimengFake:
    return JimengFake(upstream, apikey=APIKEY, cookies={"123": "sid=a", "456": "sid=b:c"})


def config_for(api_url: str, **block: Any) -> Config:
    settings = {"api_url": api_url, "apikey": APIKEY, "cookie_list": ["123:sid=a"], "max_retries": 0, **block}
    return config_from_dict({"network": {"allow_private_downloads": True}, "draw": {"jimeng": settings}})


async def draw(config: Config, http: httpx.AsyncClient, provider: JimengProvider | None = None, **kw: Any) -> bytes:
    prov = provider or JimengProvider(config)
    return (await prov.run(attempt_context(config, "jimeng", http, **kw))).data


async def fail(config: Config, http: httpx.AsyncClient, **kw: Any) -> ProviderFailure:
    with pytest.raises(ProviderFailure) as info:
        await draw(config, http, **kw)
    return info.value


async def test_draw_sends_the_aggregator_query_and_downloads_the_first_image(
    fake: JimengFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    assert await draw(config_for(fake.url), http, prompt="山水画") == IMAGE
    assert fake.queries[-1] == {
        "description": "山水画",
        "type": "真实",
        "ratio": "1:1",
        "model": "Seedream 4.0",
        "conversation_id": "123",
        "Cookie": "sid=a",
        "apikey": APIKEY,
    }
    req = upstream.calls("GET", r"/api/jimeng")[-1]
    assert req.headers["user-agent"] == "Mozilla/5.0" and req.headers["accept"] == "application/json"
    files = upstream.calls("GET", r"/files/.*")
    assert [r.path for r in files] == ["/files/jimeng-1.png"]  # only the first of the two URLs


async def test_image_url_may_be_a_plain_string(fake: JimengFake, http: httpx.AsyncClient) -> None:
    fake.script = ["str"]
    assert await draw(config_for(fake.url), http) == IMAGE


def test_cookie_entries_split_at_the_first_colon() -> None:
    assert parse_cookie("123:sid=a") == ("123", "sid=a")
    assert parse_cookie("456:sid=b:c") == ("456", "sid=b:c")
    assert parse_cookie("no-colon") is None and parse_cookie(":sid") is None and parse_cookie("1:") is None


async def test_cookies_rotate_round_robin(fake: JimengFake, http: httpx.AsyncClient) -> None:
    config = config_for(fake.url, cookie_list=["123:sid=a", "bogus", "456:sid=b:c"])
    provider = JimengProvider(config)
    for _ in range(3):
        await draw(config, http, provider)
    assert [(q["conversation_id"], q["Cookie"]) for q in fake.queries] == [
        ("123", "sid=a"),
        ("456", "sid=b:c"),
        ("123", "sid=a"),
    ]


@pytest.mark.parametrize(
    ("output", "expected"),
    [("", "1:1"), ("4K", "1:1"), ("16:9", "16:9"), ("1024x1536", "2:3"), ("2560x1080", "21:9"), ("5:4", "4:3")],
)
def test_ratio_comes_from_the_output_intent(output: str, expected: str) -> None:
    assert pick_ratio(output, "1:1") == expected


async def test_job_ratio_is_sent(fake: JimengFake, http: httpx.AsyncClient) -> None:
    await draw(config_for(fake.url, default_ratio="3:4"), http)
    await draw(config_for(fake.url, default_ratio="3:4"), http, output="9:16")
    assert [q["ratio"] for q in fake.queries] == ["3:4", "9:16"]


@pytest.mark.parametrize(
    ("scenario", "reason", "fragment"),
    [
        ("policy", "content_policy", "审核未通过"),
        ("credits", "rate_limited", "积分不足"),
        ("expired", "auth", "cookie #1"),
        ("business", "upstream_error", ": x"),
        ("no_url", "no_image", "without image_url"),
        ("not_json", "invalid_response", "malformed JSON"),
        ("http_500", "upstream_error", "HTTP 500"),
    ],
)
async def test_business_errors_are_typed(
    scenario: str, reason: str, fragment: str, fake: JimengFake, http: httpx.AsyncClient
) -> None:
    fake.script = [scenario]
    failure = await fail(config_for(fake.url), http)
    assert failure.reason == reason and fragment in failure.message and failure.message.startswith("jimeng")
    assert "sid=a" not in failure.message


async def test_an_expired_cookie_hands_the_attempt_to_the_next_one(fake: JimengFake, http: httpx.AsyncClient) -> None:
    config = config_for(fake.url, cookie_list=["123:sid=stale", "456:sid=b:c"])
    assert await draw(config, http) == IMAGE
    assert [q["Cookie"] for q in fake.queries] == ["sid=stale", "sid=b:c"]


async def test_every_cookie_rejected_is_reported_by_position(fake: JimengFake, http: httpx.AsyncClient) -> None:
    failure = await fail(config_for(fake.url, cookie_list=["123:sid=stale", "456:sid=old"]), http)
    assert failure.reason == "auth" and "#1" in failure.message and "#2" in failure.message
    assert "sid=stale" not in failure.message and "sid=old" not in failure.message


async def test_a_wrong_apikey_echoed_back_is_scrubbed(fake: JimengFake, http: httpx.AsyncClient) -> None:
    failure = await fail(config_for(fake.url, apikey="jm-wrong-apikey-9"), http)
    assert failure.reason == "auth" and "jm-wrong-apikey-9" not in failure.message and "***" in failure.message


async def test_no_usable_cookie_fails_before_any_call(
    fake: JimengFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    failure = await fail(config_for(fake.url, cookie_list=["no-colon", "1:"]), http)
    assert failure.reason == "auth" and "cookie_list" in failure.message and not upstream.requests


async def test_jimeng_only_draws_and_an_edit_that_reaches_it_is_unsupported(
    fake: JimengFake, upstream: FakeUpstream, http: httpx.AsyncClient
) -> None:
    """The aggregator takes input images only at a public URL, which aiimg does not host (issue 11)."""
    assert JimengProvider.operations == {"draw"}
    config = config_for(fake.url)
    assert config.can_serve("draw", "jimeng")
    assert not any(config.can_serve(op, "jimeng") for op in ("edit", "selfie", "video"))
    with pytest.raises(ConfigError, match=r"unknown key edit\.jimeng"):
        config_from_dict({"edit": {"jimeng": {"api_url": fake.url}}})
    plan = plan_chain(config, JobRequested(job_id="j", op="edit", backend="jimeng"))
    assert plan.chain == [] and plan.skipped == {"jimeng": "cannot edit"}
    ctx = attempt_context(config, "jimeng", http, inputs=[InputImage(png(), "image/png")])
    ctx.dispatch = msgspec.structs.replace(ctx.dispatch, op="edit")  # as an old router might dispatch it
    with pytest.raises(ProviderFailure) as info:
        await JimengProvider(config).run(ctx)
    assert info.value.reason == "unsupported" and not upstream.requests
