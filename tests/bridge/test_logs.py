"""Inside AstrBot the core's log lines go through AstrBot's logger: the job id on every line of a
job, no secret in any line, ``log.*`` honoured, and a warning per selected provider without a key."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import anyio
import pytest
import structlog
from astrbot.api import message_components as Comp
from structlog.contextvars import bound_contextvars

from tests.fakes.openai_images import OpenAIImagesFake
from tests.fakes.server import FakeUpstream

from .conftest import OneBot, make_event, plugin_running
from .test_e2e import settings_for

pytestmark = pytest.mark.anyio

KEY = "sk-aiimg-LogTest-0123456789abcdef"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self, level: int = logging.NOTSET) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture(name="astrbot_log")
def _astrbot_log() -> Iterator[Lines]:
    """What reaches AstrBot's logger (``astrbot.api.logger``: a plugin's own ``astrbot.plugin.<name>``
    inside AstrBot, which propagates to ``astrbot``; the ``astrbot`` logger itself for this test
    package, which AstrBot has not registered as a plugin). structlog's config is restored after."""
    saved = structlog.get_config()
    target = logging.getLogger("astrbot")
    handler = Lines()
    target.addHandler(handler)
    try:
        yield handler
    finally:
        target.removeHandler(handler)
        structlog.configure(**saved)


async def test_a_jobs_lines_reach_astrbots_logger_with_its_id_and_no_key(
    upstream: FakeUpstream, tmp_path: Path, astrbot_log: Lines
) -> None:
    OpenAIImagesFake(upstream, keys=["sk-the-only-valid-key"])  # answers 401, echoing the key it got
    settings = settings_for(
        "",  # embedded: the router and the provider actors run in AstrBot's process
        tmp_path,
        draw={
            "provider": "openai_compat",
            "fallback_1": "local",
            "openai_compat": {"base_url": upstream.url, "api_keys": [KEY], "model": "gpt-image-1", "max_retries": 0},
        },
        video={"enabled": False},
    )
    bot = OneBot()
    async with plugin_running(settings, bot) as plugin:
        event = make_event("画猫", [Comp.Plain("画猫")], bot=bot, woken=True)
        answer = await plugin.aiimg_generate(event, prompt="一只猫")
        job = answer.split("任务 ")[1].split("）")[0]
        with anyio.fail_after(30):
            while plugin.bridge.tasks:
                await asyncio.gather(*plugin.bridge.tasks)
        # Whatever a line carries, the key is masked, even where nothing upstream scrubbed it.
        with bound_contextvars(job_id=job):
            structlog.get_logger("aiimg.test").warning("upstream_said", body=f"Authorization: Bearer {KEY}")
    assert len(bot.images()) == 1
    lines = astrbot_log.texts()
    attempts = [line for line in lines if line.startswith(("attempt_started", "attempt_failed", "attempt_succeeded"))]
    assert len(attempts) == 4, lines  # started + failed on openai_compat, started + succeeded on local
    assert all(f"job_id={job}" in line for line in attempts), attempts
    [failed] = [line for line in attempts if line.startswith("attempt_failed")]
    assert "provider=openai_compat" in failed and "reason=auth" in failed
    [echo] = [line for line in lines if line.startswith("upstream_said")]
    assert f"job_id={job}" in echo and "***" in echo
    for line in lines:
        assert KEY not in line and quote(KEY, safe="") not in line


async def test_log_settings_are_honoured(nats_url: str, tmp_path: Path, astrbot_log: Lines) -> None:
    settings = settings_for(nats_url, tmp_path, log={"level": "warning", "format": "json"}, video={"enabled": False})
    async with plugin_running(settings, OneBot()):
        log = structlog.get_logger("aiimg.test")
        with bound_contextvars(job_id="job-42"):
            log.info("below_the_floor")
            log.warning("at_the_floor", detail="x")
    lines = astrbot_log.texts()
    assert not any("below_the_floor" in line for line in lines)
    [line] = [json.loads(line) for line in lines if "at_the_floor" in line]
    assert line["job_id"] == "job-42" and line["level"] == "warning" and line["detail"] == "x"
    [record] = [r for r in astrbot_log.records if "at_the_floor" in r.getMessage()]
    assert record.levelno == logging.WARNING


async def test_a_selected_provider_without_a_key_is_warned_about_once(
    nats_url: str, tmp_path: Path, astrbot_log: Lines
) -> None:
    settings = settings_for(
        nats_url,
        tmp_path,
        draw={"provider": "grok", "fallback_1": "gemini_native", "fallback_2": "local", "grok": {"api_keys": [KEY]}},
        edit={"provider": "local", "fallback_1": "grok", "fallback_2": "gitee"},  # gitee_async, by short name
        video={"api_key": ""},
    )
    async with plugin_running(settings, OneBot()):
        pass
    warnings = [line for line in astrbot_log.texts(logging.WARNING) if "has no API key" in line]
    assert sorted(w.split()[2] for w in warnings) == ["gemini_native", "gitee_async", "grok", "grok_video"]
    [grok] = [w for w in warnings if w.split()[2] == "grok"]
    assert "(edit.fallback_1)" in grok and "edit.grok.api_keys" in grok and "draw." not in grok  # draw.grok has one
    [video] = [w for w in warnings if w.split()[2] == "grok_video"]
    assert "video.provider" in video and "video.api_key" in video
    assert all(KEY not in line for line in astrbot_log.texts())
