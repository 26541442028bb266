"""The actors are NATS micro services: ``$SRV.PING/INFO/STATS`` answered by every actor.

First on the session's nats-server without auth, then with the shipped ``auth.conf`` (each
actor connected as its own user, the questions asked as ``admin``, as ``nats micro ls`` would).
"""

from __future__ import annotations

import json
import secrets
import uuid
from pathlib import Path
from typing import Any

import anyio
import nats
import pytest
from nats.aio.client import Client as NATS

from aiimg.messages import JobCompleted
from aiimg.services import __version__
from aiimg.services.app.client import Client
from aiimg.services.app.stack import Stack, running
from aiimg.services.infra.bus import Bus, connect
from aiimg.services.infra.embedded import EmbeddedServer
from aiimg.services.providers.local import LocalProvider

from ..conftest import make_config
from ..helpers import ScriptedProvider, failing
from .procs import DEPLOY, deploy_module

pytestmark = pytest.mark.anyio

perms = deploy_module("permissions")


async def gather(
    nc: NATS, subject: str, expect: int, prefix: str = "aiimg", wait: float = 10.0
) -> list[dict[str, Any]]:
    """The answers of this deployment (``prefix``) to one request: once ``expect`` have come, or
    whatever came within ``wait`` seconds (discovery has many answerers and no end marker)."""
    inbox = nc.new_inbox()
    answers: list[dict[str, Any]] = []
    sub = await nc.subscribe(inbox)
    await nc.publish(subject, b"", reply=inbox)
    with anyio.move_on_after(wait):
        async for msg in sub.messages:
            if msg.data:  # not the server's "no responders" status
                answer = json.loads(msg.data)
                if answer.get("metadata", {}).get("prefix") == prefix:
                    answers.append(answer)
                    if len(answers) >= expect > 0:
                        break
    await sub.unsubscribe()
    return answers


async def test_every_actor_answers_ping_info_and_stats(bus: Bus) -> None:
    grok = ScriptedProvider(bus.config, "grok", failing("auth", "no key"))
    prefix = bus.names.prefix
    async with running(Stack(bus, providers=[LocalProvider(bus.config), grok])):
        pings = await gather(bus.nc, "$SRV.PING", 3, prefix)
        assert sorted(p["name"] for p in pings) == [f"{prefix}-grok", f"{prefix}-local", f"{prefix}-router"]
        assert {p["version"] for p in pings} == {__version__}
        assert all(p["type"] == "io.nats.micro.v1.ping_response" for p in pings)

        (info,) = await gather(bus.nc, f"$SRV.INFO.{prefix}-router", 1, prefix)
        assert [(e["name"], e["subject"]) for e in info["endpoints"]] == [("status", f"{prefix}.svc.router.status")]

        client = Client(bus)
        end = await client.wait(await client.submit("draw", "micro", output="64x64"), timeout=30)
        assert isinstance(end, JobCompleted)
        (stats,) = await gather(bus.nc, f"$SRV.STATS.{prefix}-local", 1, prefix)
        assert stats["endpoints"][0]["data"]["finished"] == {"succeeded": 1}
        (router,) = await gather(bus.nc, f"$SRV.STATS.{prefix}-router", 1, prefix)
        assert router["endpoints"][0]["data"]["handled"]["requested"] >= 1
        reply = await bus.nc.request(f"{prefix}.svc.router.status", b"", timeout=5)
        assert not reply.headers, reply.headers
        status = json.loads(reply.data)
        assert status["jobs_running"] == 0 and status["breakers_open"] == []
    # Stopped actors no longer answer.
    assert await gather(bus.nc, "$SRV.PING", 0, prefix, wait=0.5) == []


async def test_with_the_shipped_permissions_each_actor_answers_as_its_own_user(tmp_path: Path) -> None:
    passwords = {role: "p" + secrets.token_hex(12) for role in [*perms.roles(), "sys"]}
    env = {perms.password_var(role): passwords[role] for role in perms.roles()}
    env["NATS_SYS_PASSWORD"] = passwords["sys"]
    (tmp_path / "auth.conf").write_text((DEPLOY / "nats" / "auth.conf").read_text())
    (tmp_path / "server.conf").write_text("include ./auth.conf\n")
    server = EmbeddedServer(tmp_path / "nats", extra_args=["-c", str(tmp_path / "server.conf")], env=env)
    server.start()
    buses: list[Bus] = []
    try:

        async def as_role(role: str) -> Bus:
            nats_cfg = {
                "url": server.url,
                "prefix": "aiimg",
                "user": perms.user_name(role),
                "password": passwords[role],
                "inbox_prefix": perms.inbox_prefix(role),
            }
            bus = await connect(make_config(server.url, tmp_path / uuid.uuid4().hex, nats=nats_cfg))
            buses.append(bus)
            return bus

        router_bus = await as_role("router")
        await router_bus.ensure_layout()
        local_bus = await as_role("local")
        admin = await nats.connect(server.url, user="aiimg-admin", password=passwords["admin"])
        try:
            async with (
                running(Stack(router_bus, providers=[])),
                running(Stack(local_bus, router=False, providers=[LocalProvider(local_bus.config)])),
            ):
                names = sorted(p["name"] for p in await gather(admin, "$SRV.PING", 2))
                assert names == ["aiimg-local", "aiimg-router"]
                (stats,) = await gather(admin, "$SRV.STATS.aiimg-local", 1)
                assert stats["endpoints"][0]["data"]["provider"] == "local"
                assert json.loads((await admin.request("aiimg.svc.local.status", b"", timeout=5)).data)["concurrency"]
        finally:
            await admin.close()
    finally:
        for bus in buses:
            await bus.close()
        server.stop()
