"""What every figure runs on: a private nats-server, fake upstream processes, actor
processes, configs, test images, and /proc readings.

Everything lives under one temporary directory and is stopped by :class:`Env`'s exit,
whatever happens in a figure.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

from aiimg.services.config import Config, config_from_dict
from aiimg.services.infra.bus import Bus, connect
from aiimg.services.infra.embedded import EmbeddedServer

__all__ = ("ActorProc", "Env", "Sizes", "UpstreamProc", "proc_status")

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-bench-not-a-real-key-1"


@dataclass(frozen=True)
class Sizes:
    """How big each figure is: the full run, or ``--quick`` (tiny, for the smoke test)."""

    quick: bool
    overhead_jobs: int
    overhead_image_px: int
    throughput_jobs: int
    concurrency_jobs: int
    concurrency_latency_ms: int
    failover_jobs: int
    blob_bytes: int
    blob_reps: int
    memory_edge: int
    recovery_finished: int
    recovery_inflight: int
    breaker_jobs: int

    @classmethod
    def for_run(cls, quick: bool) -> Sizes:
        if quick:
            return cls(True, 6, 96, 40, 30, 200, 4, 1 << 20, 1, 256, 200, 10, 6)
        return cls(False, 200, 580, 5000, 1000, 2000, 100, 40 << 20, 3, 4096, 10_000, 100, 60)


class UpstreamProc:
    """A ``bench._upstream`` process serving one image; ``url`` is its root."""

    def __init__(self, image: Path, log_dir: Path) -> None:
        self.image = image
        self.log_path = log_dir / f"upstream-{image.stem}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        with self.log_path.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench._upstream", "--image", str(self.image)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fake upstream did not start; see {self.log_path}")
        self.url = f"http://127.0.0.1:{json.loads(line)['port']}"
        return self.url

    async def log(self) -> list[tuple[str, float, float, str, str]]:
        async with httpx.AsyncClient(trust_env=False) as http:
            r = await http.get(f"{self.url}/_log", timeout=30)
        return [tuple(e) for e in r.json()["log"]]  # type: ignore[misc]

    async def reset(self) -> None:
        async with httpx.AsyncClient(trust_env=False) as http:
            await http.post(f"{self.url}/_reset", timeout=30)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(Exception):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ActorProc:
    """A ``bench._actor`` process (router or provider actors) on a config file."""

    def __init__(self, config_path: Path, role: str, aliases: str = "", *extra: str, log_dir: Path) -> None:
        self.args = [sys.executable, "-m", "bench._actor", str(config_path), role, aliases, *extra]
        label = role if role == "router" else f"provider-{aliases.replace(',', '+')}"
        self.log_path = log_dir / f"{config_path.stem}-{label}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned = 0.0
        self.ready = 0.0
        """``time.monotonic()`` at spawn and when the actor said it was pulling (same clock)."""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 60.0) -> ActorProc:
        self.spawned = time.monotonic()
        with self.log_path.open("ab") as err:
            # Popen returns at once; the blocking wait for READY runs in a worker thread below.
            self.proc = subprocess.Popen(  # noqa: ASYNC220
                self.args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
            )
        proc = self.proc
        assert proc.stdout is not None
        stdout = proc.stdout
        with anyio.fail_after(timeout):
            line = await anyio.to_thread.run_sync(stdout.readline)
        if not line.startswith(b"READY"):
            raise RuntimeError(f"actor {' '.join(self.args[3:])} did not start: {_tail(self.log_path)}")
        self.ready = float(line.split()[1])
        return self

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await anyio.to_thread.run_sync(lambda: proc.wait(timeout=30))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def _tail(path: Path, lines: int = 8) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` / ``VmHWM`` (and friends) of ``pid`` in bytes, from /proc."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Vm") and value.strip().endswith("kB"):
            out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Env:
    """The run's shared environment. Use :meth:`open` as a context manager."""

    tmp: Path
    sizes: Sizes
    server: EmbeddedServer
    images: dict[str, Path] = field(default_factory=dict)
    upstreams: dict[str, UpstreamProc] = field(default_factory=dict)
    actors: list[ActorProc] = field(default_factory=list)
    profile_dir: Path | None = None
    """Where the throughput figure writes py-spy profiles of the actors (``--profile``)."""

    @classmethod
    @contextlib.contextmanager
    def open(cls, tmp: Path, sizes: Sizes) -> Iterator[Env]:
        server = EmbeddedServer(tmp / "nats")
        server.start()
        env = cls(tmp=tmp, sizes=sizes, server=server)
        (tmp / "logs").mkdir(exist_ok=True)
        try:
            yield env
        finally:
            for actor in env.actors:
                actor.kill()
            for up in env.upstreams.values():
                up.stop()
            server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def logs(self) -> Path:
        return self.tmp / "logs"

    # ---- images and upstreams ---------------------------------------------------

    def image(self, name: str) -> Path:
        """A PNG for ``name``: ``1mb`` (~1 MB noise), ``16kb``, ``4k`` (the memory figure's edge)."""
        if name not in self.images:
            path = self.tmp / f"image-{name}.png"
            path.write_bytes(_make_image(name, self.sizes))
            self.images[name] = path
        return self.images[name]

    def upstream(self, image: str) -> UpstreamProc:
        if image not in self.upstreams:
            up = UpstreamProc(self.image(image), self.logs)
            up.start()
            self.upstreams[image] = up
        return self.upstreams[image]

    # ---- configs and actors -----------------------------------------------------------

    def config(self, name: str, draw: dict[str, Any], **extra: Any) -> tuple[Config, Path]:
        """A config on a fresh subject prefix (its own stream, consumers and buckets), and its file."""
        prefix = f"b{uuid.uuid4().hex[:8]}"
        doc: dict[str, Any] = {
            "nats": {"url": self.url, "prefix": prefix},
            "data_dir": str(self.tmp / "data"),
            "retention": {"job_max_age": 3600.0, "blob_max_age": 3600.0},
            "draw": draw,
            "log": {"level": "info", "format": "json"},
            # The load client is one client submitting thousands of jobs at once: admission
            # limits (a fairness policy, tested in tests/reliability/test_attacks.py) would
            # reject most of them, and the figures measure the pipeline, not the policy.
            "limits": {"max_jobs_per_client": 0, "max_jobs_per_user": 0},
            **extra,
        }
        path = self.tmp / f"{name}.json"
        path.write_text(json.dumps(doc, indent=2))
        return config_from_dict(doc), path

    async def actor(self, config_path: Path, role: str, aliases: str = "", *extra: str) -> ActorProc:
        proc = ActorProc(config_path, role, aliases, *extra, log_dir=self.logs)
        self.actors.append(proc)
        return await proc.start()

    async def stop_actors(self) -> None:
        actors, self.actors = self.actors, []
        async with anyio.create_task_group() as tg:
            for actor in actors:
                tg.start_soon(actor.stop)

    @contextlib.asynccontextmanager
    async def bus(self, config: Config) -> Any:
        bus: Bus = await connect(config)
        try:
            await bus.ensure_layout()
            yield bus
        finally:
            await bus.close()


def openai_block(base: str, **extra: Any) -> dict[str, Any]:
    """A ``draw.openai_compat``-style block pointing at a fake upstream path."""
    return {
        "base_url": base,
        "api_keys": [KEY],
        "model": "gpt-image-1",
        "size": "1024x1024",
        "max_retries": 0,
        "timeout": 60.0,
        **extra,
    }


def _make_image(name: str, sizes: Sizes) -> bytes:
    from PIL import Image, ImageChops

    buf = io.BytesIO()
    if name == "1mb":
        edge = sizes.overhead_image_px
        Image.frombytes("RGB", (edge, edge), os.urandom(edge * edge * 3)).save(buf, "PNG", compress_level=1)
    elif name == "16kb":
        Image.frombytes("RGB", (72, 72), os.urandom(72 * 72 * 3)).save(buf, "PNG", compress_level=1)
    elif name == "4k":
        # A photo-like mix: smooth gradients plus sensor-like noise, so PNG compresses it
        # about as well as it compresses a generated image (not a flat colour, not pure noise).
        edge = sizes.memory_edge
        noise = Image.effect_noise((edge, edge), 24)
        gradient = Image.linear_gradient("L").resize((edge, edge))
        img = Image.merge(
            "RGB", (ImageChops.add(gradient, noise, 2.0), noise, ImageChops.subtract(gradient, noise, 2.0, 64))
        )
        img.save(buf, "PNG", compress_level=1)
    else:
        raise ValueError(name)
    return buf.getvalue()
