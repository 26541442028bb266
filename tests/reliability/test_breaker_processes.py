"""A provider's breaker tripped by one router process is honoured by another router process.

Routers run as ``aiimg serve --only router`` children; the providers run in the test (scripted:
``grok`` rejects its key, ``local`` draws). Router A sees grok fail twice and opens its breaker
(``policy.breaker_threshold = 2``); A is killed; router B, started after the breaker opened and
never having seen a failure, plans the next jobs without grok, and says why in the dispatch.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest

from aiimg.messages import AttemptDispatched, JobCompleted, JobRequested
from aiimg.services.app.stack import Stack, running
from aiimg.services.config import load_config
from aiimg.services.infra.bus import connect

from ..contracts.conftest import events, terminal
from ..helpers import ScriptedProvider, failing, succeeding
from .procs import ServeProcess, write_toml

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


async def test_a_breaker_opened_by_one_router_process_is_honoured_by_another(nats_url: str, tmp_path: Path) -> None:
    config_path = write_toml(
        tmp_path / "aiimg.toml",
        {
            "data_dir": str(tmp_path / "data"),
            "nats": {"url": nats_url, "prefix": "b" + uuid.uuid4().hex[:10]},
            "policy": {"breaker_threshold": 2, "breaker_cooldown": 600.0, "timeout_grace": 5.0},
            "draw": {
                "provider": "grok",
                "fallback_1": "local",
                "grok": {"api_keys": ["sk-test-never-sent"], "max_retries": 0, "timeout": 10.0},
            },
            "log": {"format": "json", "level": "info"},
        },
    )
    config = load_config(config_path)
    bus = await connect(config)
    await bus.ensure_layout()
    grok = ScriptedProvider(config, "grok", failing("auth", "grok HTTP 401: key #1 rejected"))
    local = ScriptedProvider(config, "local", succeeding())

    async def draw() -> list[str]:
        job = f"b-{uuid.uuid4().hex[:12]}"
        await bus.publish(JobRequested(job_id=job, op="draw", prompt="breaker", output="64x64"), client="c1")
        end = await terminal(bus, job, timeout=60)
        assert isinstance(end, JobCompleted) and end.provider == "local", end
        dispatched = [e for e in await events(bus, job) if isinstance(e, AttemptDispatched)]
        return [d.provider for d in dispatched] + [f"{k}: {v}" for d in dispatched for k, v in d.skipped.items()]

    a = ServeProcess(config_path, "router")
    b: ServeProcess | None = None
    try:
        async with running(Stack(bus, router=False, providers=[grok, local])):
            await a.wait_for("router_started", timeout=60)
            assert await draw() == ["grok", "local"]
            assert await draw() == ["grok", "local"]
            await a.wait_for("breaker_opened", timeout=10)
            b = ServeProcess(config_path, "router")
            await b.wait_for("router_started", timeout=60)
            a.kill()
            for _ in range(3):
                seen = await draw()
                assert seen[0] == "local" and seen[1].startswith("grok: circuit open until"), seen
            assert len(grok.calls) == 2, "grok was called after its breaker opened"
            assert not b.saw("breaker_opened")  # B learned it from the bus, not from failures of its own

            # `aiimg status` shows it, from the bus alone.
            text = await _aiimg(config_path, "status")
            assert re.search(r"^grok\s+draw\s+draw=open\s+2\s", text, re.M), text
            assert "grok draw: circuit open until" in text and "key #1 rejected" in text, text
            assert re.search(r"^local\s+draw,edit,selfie\s+closed\s+0\s+0 in flight, 0 queued", text, re.M), text
            doc = json.loads(await _aiimg(config_path, "status", "--json"))
            grok_status = next(p for p in doc["providers"] if p["provider"] == "grok")
            assert [(x["op"], x["state"], x["failures"]) for x in grok_status["breakers"]] == [("draw", "open", 2)]
            assert grok_status["recent_failures"] == 2 and doc["router"]["exists"]
    finally:
        a.stop()
        if b is not None:
            b.stop()
        await bus.close()


async def _aiimg(config_path: Path, *args: str) -> str:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "aiimg.services.app.cli", "--config", str(config_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    res = await anyio.to_thread.run_sync(run)
    assert res.returncode == 0, res.stderr
    return res.stdout
