"""Real processes for fault-injection tests: ``aiimg serve --only …`` children and the loopback cluster.

``ServeProcess`` runs one actor role exactly as a deployment does (a TOML config, the
CLI), collects its JSON log lines, and can be SIGKILLed. ``deploy_module`` loads the
scripts in ``deploy/`` (they are scripts, not a package) so tests run the shipped code.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def deploy_module(name: str) -> ModuleType:
    """``deploy/<name>.py`` imported as a module (cached in ``sys.modules``)."""
    key = f"aiimg_deploy_{name}"
    if key in sys.modules:
        return sys.modules[key]
    if str(DEPLOY) not in sys.path:
        sys.path.insert(0, str(DEPLOY))
    spec = importlib.util.spec_from_file_location(key, DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    """A minimal TOML writer for nested dicts of scalars and lists (test configs only)."""
    lines: list[str] = []

    def table(prefix: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if scalars and prefix:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {toml_value(v)}")
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", data)
    path.write_text("\n".join(lines) + "\n")
    return path


class ServeProcess:
    """`aiimg serve --only …` in a child process, with its JSON log lines collected."""

    def __init__(self, config_path: Path, only: str, *, env: dict[str, str] | None = None) -> None:
        self.only = only
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aiimg.services.app.cli", "--config", str(config_path), "serve", "--only", only],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=str(ROOT),
        )
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            text = raw.decode(errors="replace")
            self.raw.append(text)
            try:
                line = json.loads(text)
            except ValueError:
                line = {"event": text.strip()}
            self.lines.append(line if isinstance(line, dict) else {"event": text.strip()})

    def saw(self, event: str) -> bool:
        return any(line.get("event") == event for line in list(self.lines))

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in list(self.lines) if line.get("event") == event]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    async def wait_for(self, event: str, timeout: float = 30) -> None:
        with anyio.fail_after(timeout):
            while not self.saw(event):
                if self.proc.poll() is not None:
                    raise AssertionError(f"serve exited early ({self.proc.returncode}): {self.raw[-8:]}")
                await anyio.sleep(0.05)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._close()

    def _close(self) -> None:
        self._thread.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close()


async def raw_job_messages(bus: Any, job_id: str) -> list[bytes]:
    """Every stored message of a job, undecoded (what a scan for leaked secrets must read)."""
    from nats.js.errors import NotFoundError

    out: list[bytes] = []
    seq = 1
    while True:
        try:
            msg = await bus.js.get_msg(
                bus.names.jobs_stream, seq=seq, subject=bus.names.subject("history", job_id), next=True
            )
        except NotFoundError:
            return out
        out.append(msg.data or b"")
        seq = (msg.seq or seq) + 1
