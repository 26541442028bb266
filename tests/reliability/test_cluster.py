"""The shipped cluster config under load and under node loss, with per-actor permissions.

A 3-node JetStream cluster starts on 127.0.0.1 from ``deploy/nats/cluster.conf`` and the
generated ``auth.conf`` (``deploy/cluster.py``). Every actor logs in as its own user:

* the normal flow (draw, edit, selfie references) needs no right beyond its role's —
  the servers log no permission violation;
* each role is refused what it must not do (steal another provider's work, dispatch,
  answer attempts, end jobs, read another user's replies, delete the stream);
* streams and buckets at replicas 3: a node is SIGKILLed and restarted twice under load
  (once the router's own node, once the job stream's leader) and no job is lost; the
  clients reconnect by themselves.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import nats
import pytest
from nats.aio.client import Client as NATS

from aiimg.messages import JobCompleted, JobEvent, JobFailed, JobRequested, TerminalEvent
from aiimg.services.app.client import Client
from aiimg.services.app.selfie import ReferenceStore
from aiimg.services.app.stack import Stack, running
from aiimg.services.config import Config, config_from_dict
from aiimg.services.domain.errors import AiimgError
from aiimg.services.infra.bus import Bus, connect
from aiimg.services.providers.local import LocalProvider

from ..helpers import png
from .procs import deploy_module

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

cluster_mod = deploy_module("cluster")

NODE_LOSS_JOBS = int(os.environ.get("AIIMG_NODE_LOSS_JOBS", "90"))
"""Jobs submitted during the node-loss test (two node kills happen while they run)."""


@pytest.fixture(scope="module", name="cluster")
def _cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    cluster = cluster_mod.LoopbackCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster
    cluster.stop()


def role_config(cluster: Any, role: str, tmp: Path, **extra: Any) -> Config:
    data: dict[str, Any] = {
        "nats": {"url": cluster.url, "replicas": 3, **cluster.credentials(role)},
        "data_dir": str(tmp / role),
        "draw": {"local": {"delay": 0.05}},
        "actors": {"ack_wait": 5.0},
        "policy": {"timeout_grace": 5.0},
    }
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value}
    return config_from_dict(data)


@contextlib.asynccontextmanager
async def role_bus(cluster: Any, role: str, tmp: Path) -> AsyncIterator[Bus]:
    bus = await connect(role_config(cluster, role, tmp))
    try:
        await bus.ensure_layout()
        yield bus
    finally:
        await bus.close()


def violations(cluster: Any) -> list[str]:
    lines = []
    for node in cluster.nodes:
        log = node.store / "nats-server.log"
        if log.is_file():
            lines += [ln for ln in log.read_text(errors="replace").splitlines() if "Violation" in ln]
    return lines


async def test_each_role_does_its_work_without_a_single_permission_violation(cluster: Any, tmp_path: Path) -> None:
    before = len(violations(cluster))
    async with (
        role_bus(cluster, "router", tmp_path) as router_bus,
        role_bus(cluster, "local", tmp_path) as local_bus,
        role_bus(cluster, "bridge", tmp_path) as bridge_bus,
        running(Stack(router_bus, providers=[])),
        running(Stack(local_bus, router=False, providers=[LocalProvider(local_bus.config)])),
    ):
        client = Client(bridge_bus)
        drawn, data = await client.result(await client.submit("draw", "permissions", output="96x64"), timeout=60)
        edited, _ = await client.result(await client.submit("edit", "edit it", images=[png(120, 80)]), timeout=60)
        refs = await ReferenceStore(bridge_bus).replace("bot-1", [png(90, 90, (1, 2, 3))])
        assert await ReferenceStore(bridge_bus).load("bot-1")
        selfie, _ = await client.result(await client.submit("selfie", "selfie", inputs=refs), timeout=60)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert drawn.provider == edited.provider == selfie.provider == "local"
    assert violations(cluster)[before:] == []


async def test_a_provider_waits_for_the_router_to_create_the_layout(cluster: Any, tmp_path: Path) -> None:
    """Only the router may create the layout; a provider started first says so, or waits for it."""
    async with role_bus(cluster, "admin", tmp_path) as admin:
        n = admin.names
        for stream in (n.jobs_stream, f"OBJ_{n.blob_bucket}", f"KV_{n.kv_bucket}"):
            with contextlib.suppress(Exception):
                await admin.js.delete_stream(stream)
    provider = await connect(role_config(cluster, "local", tmp_path))
    router = await connect(role_config(cluster, "router", tmp_path))
    try:
        with pytest.raises(AiimgError) as err:
            await provider.ensure_layout(wait=1.0)
        assert "stream AIIMG_JOBS missing" in str(err.value) and "start it first" in str(err.value)
        async with anyio.create_task_group() as tg:
            tg.start_soon(provider.ensure_layout)  # waits …
            await anyio.sleep(1.0)
            await router.ensure_layout()  # … until the router has created it
        assert await provider._layout_missing() == ""
    finally:
        await provider.close()
        await router.close()


class Denials:
    """A raw connection as ``role`` that records the server's permission errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: NATS | None = None

    async def connect(self, cluster: Any, role: str) -> NATS:
        creds = cluster.credentials(role)

        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(
            servers=cluster.url.split(","),
            user=creds["user"],
            password=creds["password"],
            inbox_prefix=creds["inbox_prefix"],
            error_cb=on_error,
            allow_reconnect=False,
        )
        return self.nc

    async def refused(self, what: str) -> bool:
        """Whether the server answered ``-ERR 'Permissions Violation for <what>'`` (nats-py lower-cases it)."""
        wanted = f"permissions violation for {what}".lower()
        with anyio.move_on_after(5):
            while not any(wanted in e.lower() for e in self.errors):
                await anyio.sleep(0.02)
        return any(wanted in e.lower() for e in self.errors)


@pytest.mark.parametrize(
    ("role", "action", "subject"),
    [
        ("local", "pub", "$JS.API.CONSUMER.MSG.NEXT.AIIMG_JOBS.provider-grok"),  # another provider's work
        ("local", "pub", "$JS.API.CONSUMER.MSG.NEXT.AIIMG_JOBS.router"),
        ("local", "pub", "aiimg.job.x1.dispatch.local"),  # dispatch to itself
        ("local", "pub", "aiimg.job.x1.done.bridge"),  # end a job
        ("local", "pub", "aiimg.job.x1.requested"),
        ("local", "pub", "$JS.API.STREAM.DELETE.AIIMG_JOBS"),
        ("local", "pub", "$JS.API.CONSUMER.CREATE.AIIMG_JOBS"),
        ("local", "sub", "aiimg.job.*.dispatch.*"),  # read others' work items
        ("local", "sub", "_INBOX_aiimg-router.>"),  # another actor's replies
        ("bridge", "pub", "aiimg.job.x2.dispatch.local"),
        ("bridge", "pub", "aiimg.job.x2.attempt"),
        ("bridge", "pub", "aiimg.job.x2.done.bridge"),
        ("bridge", "pub", "$JS.API.CONSUMER.MSG.NEXT.AIIMG_JOBS.provider-local"),
        ("bridge", "pub", "$JS.API.STREAM.PURGE.AIIMG_JOBS"),
        ("bridge", "pub", "$JS.ACK.AIIMG_JOBS.router.1.1.1.1.1.1"),
        ("bridge", "sub", "_INBOX_aiimg-local.>"),
        ("router", "pub", "$O.aiimg_blobs.C.x"),  # the router never writes blobs
        ("router", "pub", "$JS.API.CONSUMER.MSG.NEXT.AIIMG_JOBS.provider-local"),
        ("router", "pub", "$JS.API.STREAM.DELETE.AIIMG_JOBS"),
        ("router", "pub", "aiimg.job.x3.requested"),
    ],
)
async def test_a_role_is_refused_what_it_must_not_do(cluster: Any, role: str, action: str, subject: str) -> None:
    probe = Denials()
    nc = await probe.connect(cluster, role)
    try:
        if action == "pub":
            await nc.publish(subject, b"{}", reply=cluster.credentials(role)["inbox_prefix"] + ".probe")
            await nc.flush()
            assert await probe.refused(f'publish to "{subject}"'), probe.errors
        else:
            await nc.subscribe(subject)
            await nc.flush()
            assert await probe.refused(f'subscription to "{subject}"'), probe.errors
    finally:
        await nc.close()


async def test_a_refused_write_does_not_reach_the_job_stream(cluster: Any, tmp_path: Path) -> None:
    async with role_bus(cluster, "admin", tmp_path) as admin:
        probe = Denials()
        nc = await probe.connect(cluster, "bridge")
        try:
            fake = b'{"type":"job.failed.v1","job_id":"forged-1","message":"forged"}'
            await nc.publish("aiimg.job.forged-1.done.bridge", fake)
            await nc.flush()
            assert await probe.refused('publish to "aiimg.job.forged-1.done.bridge"')
        finally:
            await nc.close()
        assert await admin.history("forged-1") == []


def _terminal(events: list[JobEvent]) -> list[TerminalEvent]:
    return [e for e in events if e.__struct_config__.tag in ("job.completed.v1", "job.failed.v1", "job.cancelled.v1")]  # type: ignore[misc]


async def _submit_retrying(client: Client, job_id: str, n: int) -> None:
    """Submit, retrying through a leader election: the request is idempotent per job id."""
    with anyio.fail_after(60):
        while True:
            try:
                await client.bus.publish(JobRequested(job_id=job_id, op="draw", prompt=f"job {n}", output="64x64"))
                return
            except (AiimgError, TimeoutError, nats.errors.Error):
                await anyio.sleep(0.2)


def _port(bus: Bus) -> int | None:
    url = bus.nc.connected_url
    return url.port if url is not None else None


async def test_node_loss_under_load_loses_no_job(cluster: Any, tmp_path: Path) -> None:
    rng = random.Random(6)
    async with (
        role_bus(cluster, "router", tmp_path) as router_bus,
        role_bus(cluster, "local", tmp_path) as local_bus,
        role_bus(cluster, "bridge", tmp_path) as bridge_bus,
        role_bus(cluster, "admin", tmp_path) as admin,
        running(Stack(router_bus, providers=[])),
        running(Stack(local_bus, router=False, providers=[LocalProvider(local_bus.config)])),
    ):
        client = Client(bridge_bus)
        buses = {"router": router_bus, "local": local_bus, "bridge": bridge_bus}
        jobs = [f"nodeloss-{i:04d}-{rng.randrange(1 << 30):x}" for i in range(NODE_LOSS_JOBS)]
        kills: list[str] = []
        on_killed: dict[str, list[str]] = {}

        async def chaos() -> None:
            # Kill 1: the node the router is connected to. Kill 2: the job stream's leader.
            for round_ in range(2):
                await anyio.sleep(1.0)
                if round_ == 0:
                    port = _port(router_bus)
                    index = next(i for i, n in enumerate(cluster.nodes) if n.client_port == port)
                else:
                    leader = ""
                    with anyio.fail_after(30):
                        while not leader:
                            with contextlib.suppress(Exception):
                                info = await admin.js.stream_info(admin.names.jobs_stream)
                                leader = (info.cluster.leader if info.cluster else "") or ""
                            if not leader:
                                await anyio.sleep(0.2)
                    index = next(i for i, n in enumerate(cluster.nodes) if n.name == leader)
                node = cluster.nodes[index]
                on_killed[node.name] = [name for name, b in buses.items() if _port(b) == node.client_port]
                cluster.kill(index)
                kills.append(node.name)
                await anyio.sleep(1.5)
                await anyio.to_thread.run_sync(cluster.restart, index)

        async with anyio.create_task_group() as tg:
            tg.start_soon(chaos)
            for n, job_id in enumerate(jobs):
                await _submit_retrying(client, job_id, n)
                await anyio.sleep(0.04)

        ends: dict[str, list[TerminalEvent]] = {}
        with anyio.fail_after(150):
            for job_id in jobs:
                while True:
                    with contextlib.suppress(Exception):
                        terminal = _terminal([e for _, e in await admin.history(job_id)])
                        if terminal:
                            ends[job_id] = terminal
                            break
                    await anyio.sleep(0.1)
        reconnects = {name: int(b.nc.stats["reconnects"]) for name, b in buses.items()}
        connected = {name: b.nc.is_connected for name, b in buses.items()}

    outcomes = Counter(type(t[0]).__name__ for t in ends.values())
    reasons = Counter(
        f"{f.reason}: {f.message}" for t in ends.values() if isinstance(t[0], JobFailed) for f in t[0].failures
    )
    lost = len(jobs) - len(ends)
    duplicated = sum(len(t) - 1 for t in ends.values())
    print(
        f"\nnode loss: submitted={len(jobs)} completed={outcomes['JobCompleted']} "
        f"failed={outcomes['JobFailed']} {dict(reasons)} lost={lost} duplicated={duplicated} "
        f"node kills survived={len(kills)} ({', '.join(kills)}) clients on killed nodes={on_killed} "
        f"reconnects={reconnects}"
    )
    assert lost == 0 and duplicated == 0
    assert outcomes["JobCompleted"] == len(jobs), dict(reasons)
    assert all(isinstance(t[0], JobCompleted) for t in ends.values())
    assert len(kills) == 2
    assert all(connected.values()), connected
    for clients in on_killed.values():
        for name in clients:
            assert reconnects[name] >= 1, (name, reconnects)
    assert on_killed[kills[0]] and "router" in on_killed[kills[0]]
