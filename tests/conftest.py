"""Shared fixtures: a real nats-server with JetStream per test session, fresh prefixes per test.

Every test gets its own subject prefix (and so its own stream, consumers and buckets),
so tests never see each other's jobs while sharing one server process.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aiimg.services.config import Config, config_from_dict
from aiimg.services.infra.bus import Bus, connect
from aiimg.services.infra.embedded import EmbeddedServer, find_nats_server
from aiimg.services.infra.http import DownloadClient, download_client

from .fakes.server import FakeUpstream


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session", name="nats_server")
def _nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    try:
        find_nats_server()
    except Exception as exc:  # fail loudly: the suite needs a real server
        pytest.fail(f"nats-server is required for the test suite: {exc}")
    server = EmbeddedServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(name="nats_url")
def _nats_url(nats_server: EmbeddedServer) -> str:
    if not nats_server.running:  # a fault test may have killed it
        nats_server.start()
    return nats_server.url


def make_config(url: str, tmp_path: Path, **overrides: object) -> Config:
    """A config on ``url`` with a unique prefix; ``overrides`` are merged as a nested dict."""
    base: dict[str, object] = {
        "nats": {"url": url, "prefix": "t" + uuid.uuid4().hex[:10]},
        "data_dir": str(tmp_path / "data"),
        "retention": {"job_max_age": 3600.0, "blob_max_age": 3600.0},
    }
    return config_from_dict(_merge(base, overrides))


def _merge(a: dict[str, object], b: dict[str, object]) -> dict[str, object]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)  # type: ignore[arg-type]
        else:
            out[k] = v
    return out


@pytest.fixture(name="upstream")
def _upstream() -> Iterator[FakeUpstream]:
    """A loopback HTTP server for a fake upstream (see ``tests/fakes``)."""
    with FakeUpstream() as up:
        yield up


@pytest.fixture(name="http")
async def _http() -> AsyncIterator[DownloadClient]:
    """The clients a provider actor builds (``upstream_client``, ``download_client``): the same
    transport, timeouts and cap. With ``network.allow_private_downloads = true`` — loopback
    upstreams — the two are alike, so this one serves for both (``fakes/attempt.py``)."""
    async with download_client(config_from_dict({"network": {"allow_private_downloads": True}}), 16) as client:
        yield client


@pytest.fixture(name="config")
def _config(nats_url: str, tmp_path: Path) -> Config:
    return make_config(nats_url, tmp_path)


@pytest.fixture(name="bus")
async def _bus(config: Config) -> AsyncIterator[Bus]:
    bus = await connect(config)
    await bus.ensure_layout()
    yield bus
    await bus.close()
