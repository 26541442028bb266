"""Every cell of the role matrix (``deploy/permissions.py`` ``MATRIX``, shown in
``docs/operations.md``) tried against a real nats-server running the generated ``auth.conf``.

One server with JetStream and the shipped users; one connection per role. For each cell the
role publishes to (or subscribes on) the cell's probe subject: a cell marked allowed must
draw no permission error, a cell marked denied must draw exactly the server's
``Permissions Violation`` for that subject. A provider is probed as ``local``, a client as
``bridge``; ``{other}`` is another provider (``grok``) or client (``another``).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import nats
import pytest
from nats.aio.client import Client as NATS

from aiimg.messages import JobCancelled
from aiimg.services.config import Config, config_from_dict
from aiimg.services.domain.errors import BusError
from aiimg.services.infra.bus import connect
from aiimg.services.infra.delivery import Delivery
from aiimg.services.infra.embedded import EmbeddedServer

from .procs import DEPLOY, deploy_module

pytestmark = pytest.mark.anyio

perms = deploy_module("permissions")

ROLES = ("router", "local", "bridge", "admin")


@pytest.fixture(scope="module", name="auth_server")
def _auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedServer, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("matrix")
    passwords = {role: "p" + secrets.token_hex(12) for role in [*perms.roles(), "sys"]}
    env = {perms.password_var(role): passwords[role] for role in perms.roles()}
    env["NATS_SYS_PASSWORD"] = passwords["sys"]
    conf = tmp / "server.conf"
    (tmp / "auth.conf").write_text((DEPLOY / "nats" / "auth.conf").read_text())  # includes are relative
    conf.write_text("include ./auth.conf\n")
    server = EmbeddedServer(tmp / "nats", extra_args=["-c", str(conf)], env=env)
    server.start()
    yield server, passwords
    server.stop()


class Probe:
    """A connection as one role that records the server's permission errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: NATS | None = None

    async def on_error(self, exc: Exception) -> None:
        self.errors.append(str(exc).lower())

    def refusals(self, what: str) -> int:
        wanted = f"permissions violation for {what}".lower()
        return sum(wanted in e for e in self.errors)


@pytest.fixture(scope="module", name="anyio_backend")
def _anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", name="probes")
async def _probes(auth_server: tuple[EmbeddedServer, dict[str, str]]) -> AsyncIterator[dict[str, Probe]]:
    server, passwords = auth_server
    out: dict[str, Probe] = {}
    for role in ROLES:
        probe = Probe()
        probe.nc = await nats.connect(
            server.url,
            user=perms.user_name(role),
            password=passwords[role],
            inbox_prefix=perms.inbox_prefix(role),
            error_cb=probe.on_error,
            allow_reconnect=False,
        )
        out[role] = probe
    yield out
    for probe in out.values():
        assert probe.nc is not None
        await probe.nc.close()


CELLS: list[Any] = [pytest.param(role, cell, id=f"{role}: {cell.what}") for cell in perms.MATRIX for role in ROLES]


@pytest.mark.parametrize(("role", "cell"), CELLS)
async def test_role_matrix_cell(probes: dict[str, Probe], role: str, cell: Any) -> None:
    probe = probes[role]
    assert probe.nc is not None
    subject = perms.probe(cell, role)
    allowed = perms.kind(role) in cell.allowed
    if cell.action == "pub":
        what = f'publish to "{subject}"'
        await probe.nc.publish(subject, b"{}", reply=f"{perms.inbox_prefix(role)}.probe")
    else:
        what = f'subscription to "{subject}"'
        sub = await probe.nc.subscribe(subject)
    await probe.nc.flush()
    # The server answers a violation before the PONG of the flush; give the error callback a turn.
    with anyio.move_on_after(0.2 if allowed else 5.0):
        while not probe.refusals(what):
            await anyio.sleep(0.01)
    if cell.action == "sub":
        await sub.unsubscribe()
    if allowed:
        assert probe.refusals(what) == 0, f"{role} should be allowed to {cell.what} ({what})"
    else:
        assert probe.refusals(what) >= 1, f"{role} must not be able to {cell.what} ({what}): {probe.errors[-3:]}"


def test_matrix_covers_every_role_kind_both_ways() -> None:
    """Each kind has cells it may and cells it may not do (a matrix of one colour proves nothing)."""
    for kind in ("router", "provider", "client"):
        assert any(kind in c.allowed for c in perms.MATRIX), kind
        assert any(kind not in c.allowed for c in perms.MATRIX), kind
    assert all("admin" in c.allowed for c in perms.MATRIX)


def test_docs_show_the_matrix_that_is_tested() -> None:
    text = (Path(perms.OPERATIONS)).read_text(encoding="utf-8")
    assert perms.matrix_table() in text


async def test_a_client_runs_its_own_results_consumer_and_no_other(
    auth_server: tuple[EmbeddedServer, dict[str, str]],
) -> None:
    """Beyond single probes: the bridge creates ``deliver-bridge`` with nats-py, pulls and acks its
    own results through it, never sees another client's, and cannot create that client's consumer."""
    server, passwords = auth_server

    def config(role: str) -> Config:
        nats_cfg = {
            "url": server.url,
            "user": perms.user_name(role),
            "password": passwords[role],
            "inbox_prefix": perms.inbox_prefix(role),
        }
        return config_from_dict({"nats": nats_cfg})

    router = await connect(config("router"))
    bridge = await connect(config("bridge"))
    try:
        await router.ensure_layout()
        durable = await bridge.ensure_results_consumer("bridge")
        assert durable == "deliver-bridge"
        await router.publish(JobCancelled(job_id="mine-1"), client="bridge")
        await router.publish(JobCancelled(job_id="theirs-1"), client="another")
        got: list[str] = []

        async def handler(delivery: Delivery) -> None:
            got.append(delivery.subject)
            await delivery.ack()

        consumer = bridge.consumer(durable, handler, concurrency=2)
        async with anyio.create_task_group() as tg:
            await tg.start(consumer.run)
            with anyio.fail_after(10):
                while not got:
                    await anyio.sleep(0.02)
            await anyio.sleep(0.3)  # another client's result would arrive now
            await consumer.stop()
        assert got == ["aiimg.job.mine-1.done.bridge"]
        info = await bridge.js.consumer_info(bridge.names.jobs_stream, durable)
        assert info.num_ack_pending == 0 and info.num_pending == 0
        with pytest.raises(BusError, match="deliver-another"):
            await bridge.ensure_results_consumer("another")
    finally:
        await bridge.close()
        await router.close()
