"""Chat images and avatars named by URL are fetched through the bridge's guarded download client.

A chat message (or a quoted one QQ hands back through ``get_msg``) can name any URL; the
bridge fetches it on the bot's host. Like URLs in upstream replies, only public addresses
are fetched unless ``network.allow_private_downloads`` — never by AstrBot's own
downloader, which checks no address and caps no size. The "chat" here is the real
aiocqhttp event; the image host is a loopback server, so the guard refuses it by default.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from astrbot.api import message_components as Comp

from tests.fakes.server import FakeUpstream, Reply
from tests.helpers import png

from .conftest import OneBot, make_event, plugin_running, plugin_settings

pytestmark = pytest.mark.anyio


def settings(nats_url: str, tmp_path: Path, *, allow_private: bool) -> dict[str, Any]:
    return plugin_settings(
        tmp_path,
        nats={"url": nats_url, "prefix": "t" + uuid.uuid4().hex[:10]},
        data_dir=str(tmp_path / "aiimg"),
        network={"allow_private_downloads": allow_private},
        debounce_interval=0,
    )


@pytest.mark.parametrize("allow_private", [False, True])
async def test_url_images_quotes_and_avatars_go_through_the_download_guard(
    nats_url: str, tmp_path: Path, allow_private: bool
) -> None:
    picture, quoted, avatar = png(70, 50, (2, 2, 2)), png(80, 60, (1, 1, 1)), png(64, 64, (9, 9, 9))
    with FakeUpstream() as host:
        host.route("GET", r"/inline.png", lambda r: Reply(200, picture, {"content-type": "image/png"}))
        host.route("GET", r"/quoted.png", lambda r: Reply(200, quoted, {"content-type": "image/png"}))
        host.route("GET", r"/headimg_dl", lambda r: Reply(200, avatar, {"content-type": "image/png"}))
        bot = OneBot()
        bot.stored[778] = {"message": [{"type": "image", "data": {"file": "q.png", "url": f"{host.url}/quoted.png"}}]}
        chain = [
            Comp.Reply(id="778", chain=[]),  # AstrBot could not resolve the quote: fetched again via get_msg
            Comp.Image(file=f"{host.url}/inline.png", url=f"{host.url}/inline.png"),
            Comp.At(qq="40002", name="friend"),
            Comp.Plain("/改图 合影"),
        ]
        async with plugin_running(settings(nats_url, tmp_path, allow_private=allow_private), bot) as plugin:
            assert plugin.bridge is not None and await plugin.bridge.start()
            plugin.bridge.avatar_template = host.url + "/headimg_dl?dst_uin={user}&spec=640"
            got = await plugin.bridge._images(make_event("/改图 合影", chain, bot=bot), mentions=True)
        fetched = [(r.path, r.headers.get("user-agent", "")) for r in host.requests]
    if allow_private:
        assert got == [quoted, picture, avatar]
        # All three by the bridge's own client (httpx), none by AstrBot's downloader (aiohttp's agent).
        assert [p for p, _ in fetched] == ["/quoted.png", "/inline.png", "/headimg_dl"]
        assert all(agent.startswith("python-httpx/") for _, agent in fetched), fetched
    else:
        assert got == [] and fetched == []  # a loopback host: refused before connecting
