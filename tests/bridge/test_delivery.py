"""Durable delivery to the chat: a result reaches its chat exactly once, across plugin reloads.

The plugin reads its client's terminal events from its durable consumer ``deliver-<client>``
and acks one only after the chat got it. These tests run the real ``astrbot`` package (the
plugin loaded, turned off and on by AstrBot's own ``PluginManager``), a real nats-server and a
real router and provider, and count what the stand-in OneBot client was asked to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from astrbot.api import message_components as Comp
from astrbot.core.provider.register import llm_tools
from astrbot.core.star.star import star_map
from astrbot.core.star.star_manager import PluginManager
from nats.js.errors import NotFoundError

from aiimg.astrbot_bridge import texts
from aiimg.astrbot_bridge.flows import THEN, video_job_id
from aiimg.astrbot_bridge.settings import PLUGIN_NAME
from aiimg.messages import JobCompleted, JobRequested
from aiimg.services.app.client import Client
from aiimg.services.app.stack import Stack, running
from aiimg.services.config import Config, config_from_dict
from aiimg.services.domain.errors import BusError
from aiimg.services.infra.bus import Bus, connect
from aiimg.services.infra.retry import Backoff
from aiimg.services.providers.base import AttemptContext, Output, Provider
from aiimg.services.providers.grok_video import GrokVideoProvider
from aiimg.services.providers.local import LocalProvider
from tests.fakes.xai_video import XaiVideoFake
from tests.helpers import ScriptedProvider

from .conftest import GROUP, ROOT, OneBot, make_context, make_event, plugin_running
from .test_e2e import KEY, settings_for

pytestmark = pytest.mark.anyio

MODULE = f"data.plugins.{PLUGIN_NAME}.main"
SESSION = f"qq1:GroupMessage:{GROUP}"
"""The chat of :func:`make_event`'s group messages (AstrBot's unified_msg_origin)."""


class Gate:
    """A provider whose attempts wait until :meth:`open`; records the job ids it was asked for."""

    def __init__(self) -> None:
        self.jobs: list[str] = []
        self.started = anyio.Event()
        self.release = anyio.Event()

    def providers(self, config: Config) -> list[Provider]:
        local = LocalProvider(config)

        async def run(ctx: AttemptContext) -> Output:
            self.jobs.append(ctx.dispatch.job_id)
            self.started.set()
            await self.release.wait()
            return await local.run(ctx)

        return [ScriptedProvider(config, "local", run)]


@contextlib.asynccontextmanager
async def deployment(
    settings: dict[str, Any], providers: Callable[[Config], Sequence[Provider]] = lambda c: [LocalProvider(c)]
) -> AsyncIterator[Bus]:
    """The aiimg the plugin bridges to (router + providers); yields its bus, to look at the stream."""
    bus = await connect(config_from_dict(settings))
    await bus.ensure_layout()
    try:
        async with running(Stack(bus, providers=list(providers(bus.config)))):
            yield bus
    finally:
        await bus.close()


async def settled(bus: Bus, job_id: str) -> JobCompleted:
    """The job's completion, once the plugin's results consumer has acked everything it was given."""
    end = await Client(bus).wait(job_id, timeout=30)
    assert isinstance(end, JobCompleted), end
    durable = bus.names.deliver_consumer(bus.config.nats.client())
    with anyio.fail_after(30):
        while True:
            info = await bus.js.consumer_info(bus.names.jobs_stream, durable)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return end
            await anyio.sleep(0.05)


async def until(check: Callable[[], bool], seconds: float = 30) -> None:
    with anyio.fail_after(seconds):
        while not check():
            await anyio.sleep(0.02)


# ---- the plugin as AstrBot loads it ---------------------------------------------------------


def install_plugin(root: Path, settings: dict[str, Any]) -> None:
    """The plugin's files under ``root/data/plugins`` and its saved settings, as AstrBot keeps them."""
    plugin = root / "data" / "plugins" / PLUGIN_NAME
    for name in ("main.py", "metadata.yaml", "_conf_schema.json", "requirements.txt"):
        plugin.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, plugin / name)
    for package in ("messages", "services", "astrbot_bridge"):
        shutil.copytree(ROOT / package, plugin / package, ignore=shutil.ignore_patterns("__pycache__"))
    config = root / "data" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / f"{PLUGIN_NAME}_config.json").write_text(json.dumps(settings), encoding="utf-8")


@contextlib.asynccontextmanager
async def plugin_manager(root: Path, bot: OneBot, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[PluginManager]:
    """AstrBot's PluginManager with the plugin loaded (imported as ``data.plugins.<name>.main``)."""
    monkeypatch.syspath_prepend(str(root))
    tools = list(llm_tools.func_list)  # loading replaces the tool of the same name aiimg.main registered
    pm = PluginManager(make_context(bot), {})  # type: ignore[arg-type]
    ok, err = await pm.load(specified_dir_name=PLUGIN_NAME)
    assert ok, (err, pm.failed_plugin_dict)
    try:
        yield pm
    finally:
        md = star_map.get(MODULE)
        if md is not None:
            if md.activated:
                await pm.turn_off_plugin(md.name)
            await pm._unbind_plugin(md.name, MODULE)  # leave no handlers or tools to later tests
        llm_tools.func_list[:] = tools


def loaded(pm: PluginManager) -> Any:
    md = star_map[MODULE]
    assert md.star_cls is not None and md.activated
    return md.star_cls


async def test_a_result_that_ends_while_the_plugin_is_off_arrives_once_it_is_back(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = Path(os.environ["ASTRBOT_ROOT"])
    settings = settings_for(nats_url, tmp_path)
    install_plugin(root, settings)
    bot = OneBot()
    gate = Gate()
    async with deployment(settings, gate.providers) as bus, plugin_manager(root, bot, monkeypatch) as pm:
        plugin = loaded(pm)
        assert plugin.bridge.runtime.ready, plugin.bridge.runtime.error
        event = make_event("/aiimg 雪地里的狐狸", [Comp.Plain("/aiimg 雪地里的狐狸")], bot=bot)
        command = asyncio.ensure_future(plugin.aiimg(event))
        with anyio.fail_after(30):
            await gate.started.wait()
        name = star_map[MODULE].name
        await pm.turn_off_plugin(name)  # what disabling it (or saving its settings) starts with
        with anyio.fail_after(30):
            await command  # the waiting command ends, and says the result comes later
        assert bot.texts() == [texts.ACK["draw"], texts.RESTARTING]
        gate.release.set()
        [job] = gate.jobs
        end = await Client(bus).wait(job, timeout=30)  # the job finishes while nobody listens
        assert isinstance(end, JobCompleted)
        await anyio.sleep(0.5)
        assert bot.images() == []
        await pm.turn_on_plugin(name)  # a fresh plugin instance: initialize() starts the consumer
        await until(lambda: len(bot.images()) == 1)
        await settled(bus, job)
        await pm.reload(name)  # acked: another start sends nothing again
        assert loaded(pm).bridge.runtime.ready
        await anyio.sleep(1.0)
    [image] = bot.images()
    assert image[:8] == b"\x89PNG\r\n\x1a\n"
    assert bot.texts() == [texts.ACK["draw"], texts.RESTARTING]
    [sent] = [m for m in bot.sent if any(s["type"] == "image" for s in m)]
    assert len(sent) == 1  # to the group of the request (the stand-in records group and private alike)


async def test_a_waiting_command_gets_its_result_once(nats_url: str, tmp_path: Path) -> None:
    """The live handler sends it; the consumer acks after that send and sends nothing itself."""
    settings = settings_for(nats_url, tmp_path)
    bot = OneBot()
    async with deployment(settings) as bus:
        async with plugin_running(settings, bot) as plugin:
            await plugin.aiimg(make_event("/aiimg 猫", [Comp.Plain("/aiimg 猫")], bot=bot))
            assert len(bot.images()) == 1 and bot.reactions() == [125, 79]
            [job] = await _finished(bus)
            await settled(bus, job)
            await anyio.sleep(0.5)
        async with plugin_running(settings, bot) as plugin:  # a restart: nothing comes again
            assert plugin.bridge.runtime.ready
            await anyio.sleep(1.0)
    assert len(bot.images()) == 1
    assert bot.texts() == [texts.ACK["draw"]]


async def _finished(bus: Bus) -> list[str]:
    """The ids of the jobs with a stored terminal event (any client)."""
    out = []
    seq = 1
    while True:
        try:
            raw = await bus.js.get_msg(bus.names.jobs_stream, seq=seq, subject=bus.names.subject("done"), next=True)
        except NotFoundError:
            return out
        out.append(bus.names.parse(raw.subject or "").job_id)
        seq = int(raw.seq or seq) + 1


async def test_an_llm_tool_delivery_survives_a_stop(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path)
    bot = OneBot()
    gate = Gate()
    async with deployment(settings, gate.providers) as bus:
        async with plugin_running(settings, bot) as plugin:
            event = make_event("帮我画一只猫", [Comp.Plain("帮我画一只猫")], bot=bot, woken=True)
            answer = await plugin.aiimg_generate(event, prompt="一只猫")
            assert answer.startswith("已开始生成图片")
            with anyio.fail_after(30):
                await gate.started.wait()
        # Stopped with the job running: the background delivery is gone, the result is not.
        assert bot.images() == [] and bot.texts() == []
        gate.release.set()
        [job] = gate.jobs
        assert isinstance(await Client(bus).wait(job, timeout=30), JobCompleted)
        async with plugin_running(settings, bot):
            await until(lambda: len(bot.images()) == 1)
            await settled(bus, job)
            await anyio.sleep(0.5)
    assert len(bot.images()) == 1 and bot.texts() == []


async def test_resend_sends_the_chats_last_result_again_or_says_it_expired(nats_url: str, tmp_path: Path) -> None:
    settings = settings_for(nats_url, tmp_path)
    bot = OneBot()
    async with deployment(settings) as bus, plugin_running(settings, bot) as plugin:
        await plugin.resend(make_event("/重发图片", [Comp.Plain("/重发图片")], bot=bot))
        assert bot.texts() == [texts.RESEND_NONE]
        await plugin.aiimg(make_event("/aiimg 灯塔 16:9", [Comp.Plain("/aiimg 灯塔 16:9")], bot=bot))
        await plugin.resend(make_event("/重发图片", [Comp.Plain("/重发图片")], bot=bot))
        first, again = bot.images()
        assert again == first
        # Another chat has nothing to resend; the file keeps only references.
        await plugin.resend(make_event("/重发图片", [Comp.Plain("/重发图片")], bot=bot, group="10002"))
        assert bot.texts()[-1] == texts.RESEND_NONE
        stored = json.loads(plugin.bridge.last.path.read_text(encoding="utf-8"))
        assert list(stored) == [SESSION] and stored[SESSION]["result"]["name"].startswith("sha256-")
        # The blob expired (retention.blob_max_age): say so, send nothing.
        store = await bus.js.object_store(bus.names.blob_bucket)
        await store.delete(stored[SESSION]["result"]["name"])
        await plugin.resend(make_event("/重发图片", [Comp.Plain("/重发图片")], bot=bot))
    assert bot.texts()[-1] == texts.RESEND_EXPIRED
    assert len(bot.images()) == 2


async def test_only_this_clients_results_with_a_chat_are_delivered(nats_url: str, tmp_path: Path) -> None:
    """Another client's result is never seen (the consumer's filter); one of ours without a chat
    session, or for a chat no loaded platform serves, is logged and acked, not retried forever."""
    settings = settings_for(nats_url, tmp_path)
    bot = OneBot()
    async with deployment(settings) as bus, plugin_running(settings, bot) as plugin:
        plugin.bridge.retry = Backoff(0.05, tries=3)
        other_bus = await connect(config_from_dict({**settings, "nats": {**settings["nats"], "client_id": "other"}}))
        try:
            other = Client(other_bus)
            theirs = await other.submit("draw", "not yours", output="64x64", origin={"session": SESSION})
            assert isinstance(await other.wait(theirs, timeout=30), JobCompleted)
            ours = Client(bus)  # the plugin's client id, submitting from elsewhere
            no_chat = await ours.submit("draw", "no chat", output="64x64", origin={})
            await settled(bus, no_chat)
            gone = await ours.submit("draw", "gone", output="64x64", origin={"session": "qq9:GroupMessage:1"})
            await settled(bus, gone)
            info = await bus.js.consumer_info(bus.names.jobs_stream, bus.names.deliver_consumer("local"))
            assert info.delivered.consumer_seq >= 2 + 2  # `gone` came back until it was given up
            # Ours with the chat of the plugin's bot: delivered, although no handler waits for it.
            found = await ours.submit("draw", "found", output="64x64", origin={"session": SESSION})
            await settled(bus, found)
        finally:
            await other_bus.close()
    assert len(bot.images()) == 1
    assert bot.texts() == []


# ---- the video LLM tool: two jobs (start frame, then video) across a stop --------------------


@contextlib.contextmanager
def video_fake(nats_url: str, tmp_path: Path) -> Iterator[tuple[XaiVideoFake, dict[str, Any]]]:
    with XaiVideoFake(KEY) as fake:
        video = {"server_url": fake.url, "api_key": KEY, "retry_delay": 0, "max_retries": 0}
        yield fake, settings_for(nats_url, tmp_path, video=video)


async def _stop_while_the_frame_is_drawn(settings: dict[str, Any], bot: OneBot, gate: Gate, bus: Bus) -> str:
    """The tool starts (no image: a start frame is drawn first), the plugin stops while the frame
    is being drawn, and the frame is finished while nobody listens; returns the frame's job id."""
    async with plugin_running(settings, bot) as plugin:
        event = make_event("来段猫的视频", [Comp.Plain("来段猫的视频")], bot=bot, woken=True)
        answer = await plugin.aiimg_generate_video(event, prompt="一只猫在雪地里奔跑")
        assert answer.startswith("已开始生成视频：消息里没有图片")
        with anyio.fail_after(30):
            await gate.started.wait()
    assert bot.images() == [] and bot.of_type("video") == []
    gate.release.set()
    [frame] = gate.jobs
    assert isinstance(await Client(bus).wait(frame, timeout=30), JobCompleted)
    return frame


async def test_a_video_tool_stopped_before_its_frame_is_drawn_animates_it_after_the_next_start(
    nats_url: str, tmp_path: Path
) -> None:
    with video_fake(nats_url, tmp_path) as (fake, settings):
        bot = OneBot()
        gate = Gate()
        async with deployment(settings, lambda c: [GrokVideoProvider(c), *gate.providers(c)]) as bus:
            frame = await _stop_while_the_frame_is_drawn(settings, bot, gate, bus)
            history = await bus.read_job(frame)
            [request] = [e.event for e in history.entries if isinstance(e.event, JobRequested)]
            assert request.origin[THEN] == "video" and request.output == "16:9 1K"
            async with plugin_running(settings, bot) as plugin:
                # The next start gets the frame, submits the video job on it, and sends its video.
                await until(lambda: len(bot.of_type("video")) == 1)
                video = video_job_id(frame)
                await settled(bus, video)
                [asked] = [e.event for e in (await bus.read_job(video)).entries if isinstance(e.event, JobRequested)]
                assert asked.op == "video" and asked.prompt == "一只猫在雪地里奔跑" and THEN not in asked.origin
                assert asked.origin["session"] == SESSION
                # The frame delivered again (a restart before its ack) starts no second video.
                end = await Client(bus).wait(frame, timeout=5)
                assert isinstance(end, JobCompleted)
                assert await plugin.bridge._animate_later(plugin.bridge.runtime.client, request, end)
            async with plugin_running(settings, bot):  # acked: another start sends nothing again
                await anyio.sleep(1.0)
        assert len(fake.api.calls("POST", r"/v1/chat/completions")) == 1
    assert len(bot.of_type("video")) == 1 and bot.images() == [] and bot.texts() == []


async def test_a_video_tool_frame_whose_video_cannot_be_submitted_is_sent_as_it_is(
    nats_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with video_fake(nats_url, tmp_path) as (fake, settings):
        bot = OneBot()
        gate = Gate()
        async with deployment(settings, lambda c: [GrokVideoProvider(c), *gate.providers(c)]) as bus:
            frame = await _stop_while_the_frame_is_drawn(settings, bot, gate, bus)
            submit = Client.submit

            async def refused(self: Client, op: str, *args: Any, **kw: Any) -> str:
                if op == "video":
                    raise BusError("the bus is gone")
                return await submit(self, op, *args, **kw)  # type: ignore[arg-type]

            monkeypatch.setattr(Client, "submit", refused)
            async with plugin_running(settings, bot):
                await until(lambda: len(bot.images()) == 1)
                await settled(bus, frame)
        assert fake.api.requests == []
    assert bot.of_type("video") == [] and bot.texts() == []


async def test_a_video_tool_stopped_between_its_two_jobs_goes_on_after_the_next_start(
    nats_url: str, tmp_path: Path
) -> None:
    """The frame was handed to the live handler, but the plugin stopped before the video job was
    written: the frame is not acked, and the next start animates it."""
    with video_fake(nats_url, tmp_path) as (fake, settings):
        bot = OneBot()
        async with deployment(settings, lambda c: [GrokVideoProvider(c), LocalProvider(c)]) as bus:
            async with plugin_running(settings, bot) as plugin:
                bridge = plugin.bridge
                bridge.retry = Backoff(0.05, tries=8)
                expect = bridge.waiters.expect
                frames: list[str] = []

                def stop_before_the_video(job_id: str) -> Any:
                    if job_id.endswith("-video"):
                        frames.append(job_id.removesuffix("-video"))
                        bridge.waiters.stop()  # what Bridge.stop does first
                    return expect(job_id)

                bridge.waiters.expect = stop_before_the_video  # type: ignore[method-assign]
                event = make_event("来段猫的视频", [Comp.Plain("来段猫的视频")], bot=bot, woken=True)
                assert (await plugin.aiimg_generate_video(event, prompt="一只猫")).startswith("已开始生成视频")
                await until(lambda: bool(frames))
                with anyio.fail_after(30):
                    while bridge.tasks:
                        await asyncio.gather(*bridge.tasks)
            async with plugin_running(settings, bot):
                await until(lambda: len(bot.of_type("video")) == 1)
                await settled(bus, video_job_id(frames[0]))
                await anyio.sleep(0.5)
        assert len(fake.api.calls("POST", r"/v1/chat/completions")) == 1
    assert len(bot.of_type("video")) == 1 and bot.images() == [] and bot.texts() == []
