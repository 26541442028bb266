"""The download guard (``services.providers._common.download``) for URLs named by upstreams or chats.

http(s) only, every redirect re-checked (scheme, private address, count), a size cap on
the declared and on the streamed length, an overall timeout, and an API key that never
follows a redirect to another origin. Loopback servers only: the private-address guard
is shown refusing loopback, and a "public" first hop is simulated by telling the guard
that one loopback address is public (no test traffic leaves 127.0.0.1).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import httpx
import pytest

from services.config import NetworkConfig
from services.errors import ProviderFailure
from services.providers import _common
from services.providers._common import download

from ..fakes.server import FakeUpstream, Reply, Request

pytestmark = pytest.mark.anyio

CAP = 64 * 1024


def _net(**kw: object) -> NetworkConfig:
    base: dict[str, object] = {"allow_private_downloads": True, "download_max_bytes": CAP, "download_timeout": 3.0}
    return NetworkConfig(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture(name="server")
def _server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        up.route("GET", r"/ok", lambda r: Reply(200, b"\x89PNG" + b"x" * 100, {"content-type": "image/png"}))
        up.route("GET", r"/exact", lambda r: Reply(200, b"y" * CAP))
        up.route("GET", r"/declared-huge", lambda r: Reply(200, b"z" * (CAP + 1)))
        up.route("GET", r"/streamed-huge", lambda r: Reply(200, iter([b"z" * 4096] * (CAP // 4096 + 2))))
        up.route("GET", r"/hang", lambda r: Reply(200, b"late", delay=10))
        up.route("GET", r"/missing", lambda r: Reply(404, b"not here"))
        up.route("GET", r"/to-file", lambda r: Reply(302, b"", {"location": "file:///etc/passwd"}))
        up.route("GET", r"/to-ftp", lambda r: Reply(301, b"", {"location": "ftp://127.0.0.1/x"}))
        up.route("GET", r"/to-ok", lambda r: Reply(307, b"", {"location": "/ok"}))
        up.route("GET", r"/loop", lambda r: Reply(302, b"", {"location": "/loop"}))
        yield up


async def test_a_plain_download_returns_the_bytes_and_the_final_url(
    http: httpx.AsyncClient, server: FakeUpstream
) -> None:
    data, final = await download(http, f"{server.url}/to-ok", _net())
    assert data.startswith(b"\x89PNG") and final == f"{server.url}/ok"
    exact, _ = await download(http, f"{server.url}/exact", _net())
    assert len(exact) == CAP


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1/", "data:image/png;base64,AAAA", "//x/y"]
)
async def test_only_http_and_https_are_fetched(http: httpx.AsyncClient, url: str) -> None:
    with pytest.raises(ProviderFailure) as err:
        await download(http, url, _net())
    assert err.value.reason == "invalid_response" and "scheme" in err.value.message


@pytest.mark.parametrize("path", ["/to-file", "/to-ftp"])
async def test_a_redirect_to_another_scheme_is_refused(
    http: httpx.AsyncClient, server: FakeUpstream, path: str
) -> None:
    with pytest.raises(ProviderFailure) as err:
        await download(http, server.url + path, _net())
    assert err.value.reason == "invalid_response" and "scheme" in err.value.message


async def test_redirect_loops_end(http: httpx.AsyncClient, server: FakeUpstream) -> None:
    with pytest.raises(ProviderFailure) as err:
        await download(http, f"{server.url}/loop", _net(max_redirects=3))
    assert "too many redirects" in err.value.message
    assert len(server.calls("GET", r"/loop")) == 4


async def test_the_size_cap_holds_for_declared_and_streamed_bodies(
    http: httpx.AsyncClient, server: FakeUpstream
) -> None:
    for path in ("/declared-huge", "/streamed-huge"):
        with pytest.raises(ProviderFailure) as err:
            await download(http, server.url + path, _net())
        assert err.value.reason == "invalid_response" and "cap" in err.value.message, path
    with pytest.raises(ProviderFailure):
        await download(http, f"{server.url}/ok", _net(), max_bytes=50)  # a per-call cap below the default


async def test_a_hanging_server_ends_at_the_timeout(http: httpx.AsyncClient, server: FakeUpstream) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):  # the actor records it as reason=timeout
        await download(http, f"{server.url}/hang", _net(download_timeout=0.5))
    assert time.monotonic() - started < 5


async def test_http_errors_are_typed(http: httpx.AsyncClient, server: FakeUpstream) -> None:
    with pytest.raises(ProviderFailure) as err:
        await download(http, f"{server.url}/missing", _net())
    assert err.value.reason == "unsupported" and err.value.status == 404


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
async def test_loopback_is_refused_unless_allowed(http: httpx.AsyncClient, server: FakeUpstream, host: str) -> None:
    port = server.url.rsplit(":", 1)[1]
    with pytest.raises(ProviderFailure) as err:
        await download(http, f"http://{host}:{port}/ok", _net(allow_private_downloads=False))
    assert "private or loopback" in err.value.message
    assert server.calls("GET", r"/ok") == []  # refused before connecting


@pytest.mark.parametrize(
    ("address", "private"),
    [
        ("10.1.2.3", True),
        ("172.16.0.9", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),  # cloud metadata
        ("0.0.0.0", True),
        ("::1", True),
        ("fc00::1", True),
        ("fe80::1", True),
        ("localhost", True),
        ("printer.localhost", True),
        ("8.8.8.8", False),
        ("2001:4860:4860::8888", False),
        ("example.com", False),
    ],
)
def test_what_counts_as_private(address: str, private: bool) -> None:
    assert _common._is_private(address) is private


async def test_a_redirect_from_a_public_host_to_a_private_one_is_refused(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard runs on every hop. Loopback 127.0.0.1 plays a public host; ``localhost`` stays private."""
    real = _common._is_private
    monkeypatch.setattr(_common, "_is_private", lambda host: False if host == "127.0.0.1" else real(host))
    with FakeUpstream() as up:
        port = up.url.rsplit(":", 1)[1]
        up.route("GET", r"/start", lambda r: Reply(302, b"", {"location": f"http://localhost:{port}/inside"}))
        up.route("GET", r"/inside", lambda r: Reply(200, b"internal"))
        data, _ = await download(http, f"{up.url}/inside", _net(allow_private_downloads=False))  # the "public" host
        assert data == b"internal"
        with pytest.raises(ProviderFailure) as err:
            await download(http, f"{up.url}/start", _net(allow_private_downloads=False))
        assert "private or loopback" in err.value.message
        assert len(up.calls("GET", r"/inside")) == 1  # only the direct fetch above


async def test_an_api_key_never_follows_a_redirect_to_another_origin(http: httpx.AsyncClient) -> None:
    seen: dict[str, str] = {}

    def record(name: str) -> object:
        def handler(req: Request) -> Reply:
            seen[name] = req.headers.get("authorization", "")
            return Reply(200, b"\x89PNG" + b"k" * 64)

        return handler

    with FakeUpstream() as gateway, FakeUpstream() as storage:
        gateway.route("GET", r"/same", lambda r: Reply(302, b"", {"location": "/final"}))
        gateway.route("GET", r"/final", record("gateway"))  # type: ignore[arg-type]
        gateway.route("GET", r"/away", lambda r: Reply(302, b"", {"location": f"{storage.url}/blob"}))
        storage.route("GET", r"/blob", record("storage"))  # type: ignore[arg-type]
        headers = {"Authorization": "Bearer sk-test-1"}
        await download(http, f"{gateway.url}/same", _net(), headers=headers)
        await download(http, f"{gateway.url}/away", _net(), headers=headers)
    assert seen == {"gateway": "Bearer sk-test-1", "storage": ""}


async def test_the_guard_holds_inside_a_running_event_loop_under_concurrency(
    http: httpx.AsyncClient, server: FakeUpstream
) -> None:
    results: list[str] = []

    async def one(path: str) -> None:
        try:
            await download(http, server.url + path, _net())
            results.append("ok")
        except ProviderFailure as exc:
            results.append(exc.reason)

    async with anyio.create_task_group() as tg:
        for path in ["/ok", "/streamed-huge", "/to-file", "/ok", "/declared-huge"] * 4:
            tg.start_soon(one, path)
    assert sorted(set(results)) == ["invalid_response", "ok"] and results.count("ok") == 8
