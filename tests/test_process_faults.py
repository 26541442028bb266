"""Real processes, real kills: actors run as `aiimg serve --only …` and are SIGKILLed mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from messages import AttemptDispatched, AttemptSucceeded, JobCompleted
from services.bus import Bus, connect
from services.client import Client
from services.config import load_config
from services.providers.local import LocalProvider
from services.stack import Stack, running

pytestmark = pytest.mark.anyio


class ServeProcess:
    """`aiimg serve --only …` in a child process, with its JSON log lines collected."""

    def __init__(self, config_path: Path, only: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "--config", str(config_path), "serve", "--only", only],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        self.lines: list[dict[str, object]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            try:
                self.lines.append(json.loads(raw))
            except ValueError:
                self.lines.append({"event": raw.decode(errors="replace").strip()})

    def saw(self, event: str) -> bool:
        return any(line.get("event") == event for line in self.lines)

    async def wait_for(self, event: str, timeout: float = 30) -> None:
        with anyio.fail_after(timeout):
            while not self.saw(event):
                if self.proc.poll() is not None:
                    raise AssertionError(f"serve exited early ({self.proc.returncode}): {self.lines[-5:]}")
                await anyio.sleep(0.05)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(name="config_file")
def _config_file(nats_url: str, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "aiimg.toml"
    path.write_text(
        f"""
data_dir = "{tmp_path / "data"}"
[nats]
url = "{nats_url}"
prefix = "p{uuid.uuid4().hex[:10]}"
[actors]
ack_wait = 2.0
[draw.local]
delay = 3.0
[log]
format = "json"
"""
    )
    yield path


async def _events(bus: Bus, job: str) -> list[object]:
    return [e for _, e in await bus.history(job)]


async def test_provider_killed_mid_job_is_redelivered_and_completes_once(config_file: Path) -> None:
    config = load_config(config_file)
    bus = await connect(config)
    await bus.ensure_layout()
    first = ServeProcess(config_file, "local")
    second: ServeProcess | None = None
    try:
        async with running(Stack(bus, providers=[])):  # the router, in this process
            await first.wait_for("provider_started")
            client = Client(bus)
            job = await client.submit("draw", "survive a crash")
            await first.wait_for("attempt_started")
            first.kill()  # mid-call: the work item is neither acked nor nak'd
            second = ServeProcess(config_file, "local")
            end = await client.wait(job, timeout=60)
        assert isinstance(end, JobCompleted)
        events = await _events(bus, job)
        assert sum(isinstance(e, AttemptDispatched) for e in events) == 1
        assert sum(isinstance(e, AttemptSucceeded) for e in events) == 1
        assert sum(isinstance(e, JobCompleted) for e in events) == 1
        assert second.saw("attempt_succeeded") and not first.saw("attempt_succeeded")
    finally:
        first.stop()
        if second:
            second.stop()
        await bus.close()


async def test_router_killed_mid_job_new_router_completes_it(config_file: Path) -> None:
    config = load_config(config_file)
    bus = await connect(config)
    await bus.ensure_layout()
    router = ServeProcess(config_file, "router")
    router2: ServeProcess | None = None
    try:
        await router.wait_for("router_started")
        async with running(Stack(bus, router=False, providers=[LocalProvider(config)])):
            client = Client(bus)
            job = await client.submit("draw", "router crash")
            with anyio.fail_after(30):
                while not any(isinstance(e, AttemptDispatched) for e in await _events(bus, job)):
                    await anyio.sleep(0.05)
            router.kill()
            # The provider finishes (3 s) while no router runs; then a new router takes over.
            with anyio.fail_after(30):
                while not any(isinstance(e, AttemptSucceeded) for e in await _events(bus, job)):
                    await anyio.sleep(0.05)
            router2 = ServeProcess(config_file, "router")
            end = await client.wait(job, timeout=60)
        assert isinstance(end, JobCompleted)
        assert sum(isinstance(e, JobCompleted) for e in await _events(bus, job)) == 1
    finally:
        router.stop()
        if router2:
            router2.stop()
        await bus.close()
