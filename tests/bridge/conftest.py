"""Fixtures for the AstrBot bridge tests, on the real ``astrbot`` package (Python 3.12).

Without ``astrbot`` these tests are not skipped: one test item fails and says how to get
it (``.venv312``, see the message). AstrBot writes ``data/`` under ``$ASTRBOT_ROOT`` on
import, so that is pointed at a temporary folder first, and per test at ``tmp_path``.

Events are the real ``AiocqhttpMessageEvent`` with a stand-in OneBot client
(:class:`OneBot`) that records what AstrBot's QQ adapter would send to NapCat, so a
test sees the same OneBot segments a QQ user would get.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("ASTRBOT_ROOT", tempfile.mkdtemp(prefix="aiimg-astrbot-"))
os.environ["ASTRBOT_DISABLE_METRICS"] = "1"

try:
    import astrbot.api  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only on a venv without astrbot
    ASTRBOT_MISSING = (
        f"tests/bridge need the real `astrbot` package ({type(exc).__name__}: {exc}), which requires Python >= 3.12. "
        "Run the suite with `bash .ci/run` (it builds a 3.12 venv with `pip install -e '.[test,astrbot]'`), "
        "or use such a venv yourself, e.g. `python3.12 -m venv .venv312 && .venv312/bin/pip install -e '.[test,astrbot]'`."
    )
else:
    ASTRBOT_MISSING = ""

if ASTRBOT_MISSING:
    collect_ignore_glob = ["test_*.py"]

    class _AstrbotMissing(pytest.Item):
        def runtest(self) -> None:
            pytest.fail(ASTRBOT_MISSING, pytrace=False)

        def reportinfo(self) -> tuple[Path, int, str]:
            return self.path, 0, "astrbot is not importable"

    class _AstrbotMissingFile(pytest.File):
        def collect(self) -> Iterator[pytest.Item]:
            yield _AstrbotMissing.from_parent(self, name="astrbot_is_required")

    def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
        if file_path.name == "conftest.py" and file_path.parent == Path(__file__).parent:
            return _AstrbotMissingFile.from_parent(parent, path=file_path)
        return None

    def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
        # Run it last, so a `-x` run on a venv without astrbot still runs the rest of the suite first.
        missing = [i for i in items if isinstance(i, _AstrbotMissing)]
        items[:] = [i for i in items if not isinstance(i, _AstrbotMissing)] + missing

else:
    from astrbot.api.event import MessageChain
    from astrbot.api.platform import AstrBotMessage, MessageMember, MessageType, PlatformMetadata
    from astrbot.core.config.astrbot_config import AstrBotConfig
    from astrbot.core.platform.sources.aiocqhttp.aiocqhttp_message_event import AiocqhttpMessageEvent
    from astrbot.core.platform.sources.aiocqhttp.aiocqhttp_platform_adapter import AiocqhttpAdapter
    from astrbot.core.star.context import Context

ROOT = Path(__file__).resolve().parents[2]
"""The repository root, which is the plugin (``main.py``, ``metadata.yaml``, ``_conf_schema.json``)."""
BOT = "30001"
USER = "20001"
GROUP = "10001"


class OneBot:
    """Stands in for NapCat behind AstrBot's aiocqhttp adapter: records every call, answers get_msg.

    ``refuse_images_over`` makes it fail image sends larger than that many bytes, like QQ's
    "rich media transfer failed" (retcode 1200).
    """

    def __init__(self) -> None:
        self.sent: list[list[dict[str, Any]]] = []
        self.actions: list[tuple[str, dict[str, Any]]] = []
        self.stored: dict[int, dict[str, Any]] = {}
        self.refuse_images_over: int | None = None

    def _deliver(self, message: list[dict[str, Any]]) -> None:
        limit = self.refuse_images_over
        for seg in message:
            if limit is not None and seg["type"] == "image":
                data = seg["data"]["file"]
                if data.startswith("base64://") and len(base64.b64decode(data[9:])) > limit:
                    raise RuntimeError("ActionFailed: rich media transfer failed (retcode=1200)")
        self.sent.append(message)

    async def send_group_msg(self, group_id: int, message: list[dict[str, Any]], **_: Any) -> dict[str, Any]:
        self._deliver(message)
        return {"message_id": len(self.sent)}

    async def send_private_msg(self, user_id: int, message: list[dict[str, Any]], **_: Any) -> dict[str, Any]:
        self._deliver(message)
        return {"message_id": len(self.sent)}

    async def call_action(self, action: str, **params: Any) -> Any:
        self.actions.append((action, params))
        if action == "get_msg":
            return self.stored.get(int(params["message_id"]), {})
        return {}

    # ---- what tests read back ------------------------------------------------------

    def segments(self) -> list[dict[str, Any]]:
        return [seg for message in self.sent for seg in message]

    def texts(self) -> list[str]:
        return [s["data"]["text"] for s in self.segments() if s["type"] == "text"]

    def text(self) -> str:
        return "\n".join(self.texts())

    def images(self) -> list[bytes]:
        out = []
        for s in self.segments():
            if s["type"] == "image":
                file = s["data"]["file"]
                assert file.startswith("base64://"), file[:40]
                out.append(base64.b64decode(file[9:]))
        return out

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [s for s in self.segments() if s["type"] == kind]

    def reactions(self) -> list[int]:
        return [int(p["emoji_id"]) for a, p in self.actions if a == "set_msg_emoji_like"]


def make_event(
    text: str,
    chain: list[Any],
    *,
    bot: OneBot,
    group: str = GROUP,
    user: str = USER,
    message_id: str = "555",
    woken: bool | None = None,
) -> Any:
    """A real aiocqhttp event. ``text`` is ``message_str`` as the adapter builds it (wake prefix included).

    Like AstrBot's waking stage, a text starting with ``/`` is woken and loses the prefix.
    """
    m = AstrBotMessage()
    m.type = MessageType.GROUP_MESSAGE if group else MessageType.FRIEND_MESSAGE
    m.self_id = BOT
    m.session_id = group or user
    m.message_id = message_id
    m.group_id = group
    m.sender = MessageMember(user_id=user, nickname="tester")
    m.message = chain
    m.message_str = text
    m.raw_message = None
    meta = PlatformMetadata(name="aiocqhttp", description="OneBot", id="qq1")
    event = AiocqhttpMessageEvent(text, m, meta, m.session_id, bot)
    wake = text.strip().startswith("/") if woken is None else woken
    if wake:
        event.is_at_or_wake_command = True
        event.is_wake = True
        event.message_str = text.strip().removeprefix("/").strip()
    return event


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ROOT / "_conf_schema.json").read_text(encoding="utf-8"))
    return loaded


def plugin_settings(path: Path, **overrides: Any) -> dict[str, Any]:
    """The settings dict AstrBot's config loader builds from the plugin schema, plus nested overrides."""
    cfg = AstrBotConfig(config_path=str(path / "astrbot_plugin_aiimg_config.json"), schema=schema())
    data: dict[str, Any] = json.loads(json.dumps(dict(cfg)))
    return _merge(data, overrides)


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_context(bot: OneBot) -> Any:
    """A real AstrBot Context whose only platform is a real aiocqhttp adapter talking to ``bot``."""
    import asyncio
    from types import SimpleNamespace

    adapter = AiocqhttpAdapter({"id": "qq1", "ws_reverse_host": "127.0.0.1", "ws_reverse_port": 0}, {}, asyncio.Queue())
    adapter.bot = bot
    platforms = SimpleNamespace(platform_insts=[adapter])
    configs = SimpleNamespace(get_conf=lambda umo: {})  # per-chat AstrBot settings: defaults
    none: Any = None
    return Context(asyncio.Queue(), none, none, none, platforms, none, none, none, configs, none, none)


@pytest.fixture(autouse=True)
def _structlog_restored() -> Iterator[None]:
    """The plugin points structlog (process-wide) at AstrBot's logger; later tests get theirs back."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(autouse=True)
def _astrbot_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own AstrBot data folder (plugin data, caches, uploaded files)."""
    root = tmp_path / "astrbot"
    root.mkdir()
    monkeypatch.setenv("ASTRBOT_ROOT", str(root))


@contextlib.asynccontextmanager
async def plugin_running(settings: dict[str, Any], bot: OneBot) -> AsyncIterator[Any]:
    """The plugin as AstrBot loads it: ``AiimgPlugin(context=…, config=…)``, then ``initialize()``."""
    from aiimg.main import AiimgPlugin

    plugin = AiimgPlugin(context=make_context(bot), config=settings)
    await plugin.initialize()
    try:
        yield plugin
    finally:
        await plugin.terminate()


def chain_text(chain: MessageChain) -> str:
    return chain.get_plain_text()
