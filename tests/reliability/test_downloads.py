"""The download guard: URLs named by upstream replies or chat messages, fetched safely.

``services.providers._common.download`` with the download client
(``services.infra.http.download_client``): http(s) only, every redirect re-checked, a size cap
on the declared and on the streamed length, an overall timeout, an API key that never
follows a redirect to another origin — and no address that is not globally reachable,
however it is spelled, whatever a name resolves to, and whenever it resolves:

* an address is allowed only when public (``services.infra.http.address_allowed``): loopback,
  private, link-local, shared (100.64/10, where cloud metadata lives), reserved,
  documentation, multicast, IPv4 inside IPv6 (mapped, NAT64, 6to4) are refused;
* numeric spellings (``2130706433``, ``0x7f.1``, ``127.1``) and trailing dots are read as
  the address they are; ``localhost`` names are refused without asking DNS;
* a name is resolved once per connection, by the connector's guarding resolver, and the
  connection goes to exactly the addresses that were checked (DNS rebinding cannot swap
  them); a name that does not resolve is refused (fail closed).

Loopback only: the resolver is injected (``AddressGuard(resolve=…)``), and where a test
needs a "public" host, the guard is told that one loopback address (127.0.0.2) is public
(``allowed=…``). No test traffic leaves the machine.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import anyio
import httpx
import pytest

from aiimg.messages import AttemptFailed, JobFailed
from aiimg.services.app.client import Client
from aiimg.services.app.stack import Stack, running
from aiimg.services.config import Config, config_from_dict
from aiimg.services.domain.config import NetworkConfig
from aiimg.services.domain.errors import AddressRefused, ConfigError, ProviderFailure
from aiimg.services.infra.bus import connect
from aiimg.services.infra.http import AddressGuard, DownloadClient, IPAddress, address_allowed, download_client
from aiimg.services.providers._common import download
from aiimg.services.providers._errors import failure_for
from aiimg.services.providers.openai_compat import OpenAICompatProvider

from ..conftest import make_config
from ..fakes.server import FakeUpstream, Reply, Request, json_reply

pytestmark = pytest.mark.anyio

CAP = 64 * 1024
PUBLIC_LOOPBACK = ipaddress.ip_address("127.0.0.2")
"""The one loopback address tests tell the guard to treat as a public host."""


def _net(**kw: object) -> NetworkConfig:
    base: dict[str, object] = {"allow_private_downloads": True, "download_max_bytes": CAP, "download_timeout": 3.0}
    return NetworkConfig(**{**base, **kw})  # type: ignore[arg-type]


def _config(**network: object) -> Config:
    return config_from_dict({"network": {"download_max_bytes": CAP, "download_timeout": 3.0, **network}})


Answer = Sequence[str] | Sequence[Sequence[str]] | BaseException


class Resolver:
    """An injected resolve function: ``answers[name]`` (a list of lists: one per call, the last
    repeating; an exception: raised). Unknown names do not resolve. Records every call."""

    def __init__(self, answers: dict[str, Answer] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[str] = []

    async def __call__(self, host: str) -> list[str]:
        self.calls.append(host)
        answer = self.answers.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if isinstance(answer, BaseException):
            raise answer
        if answer and not isinstance(answer[0], str):  # a sequence of answers, one per call
            turn = min(self.calls.count(host), len(answer)) - 1
            return list(answer[turn])
        return [str(a) for a in answer]


def _public_loopback(ip: IPAddress) -> bool:
    return ip == PUBLIC_LOOPBACK or address_allowed(ip)


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


@pytest.fixture(name="open_client")
async def _open_client() -> AsyncIterator[DownloadClient]:
    """A download client with ``network.allow_private_downloads = true`` (loopback servers reachable)."""
    async with download_client(_config(allow_private_downloads=True), 8) as client:
        yield client


@pytest.fixture(name="guarded")
async def _guarded() -> AsyncIterator[tuple[DownloadClient, Resolver]]:
    """The default download client (the guard on), resolving through an injected resolver that knows no name."""
    resolver = Resolver()
    async with download_client(_config(), 8, guard=AddressGuard(resolve=resolver)) as client:
        yield client, resolver


# ---- what the guard lets through ------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", False),
        ("127.255.255.254", False),
        ("10.1.2.3", False),
        ("172.16.0.9", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata (AWS, GCP, Azure)
        ("100.100.100.200", False),  # cloud metadata (Alibaba) in shared address space 100.64/10
        ("100.64.0.1", False),
        ("100.127.255.254", False),
        ("192.0.0.8", False),  # IETF protocol assignments 192.0.0/24 (stdlib <3.12.4 calls it global)
        ("192.0.0.170", False),
        ("192.0.2.1", False),  # documentation
        ("198.18.0.1", False),  # benchmarking
        ("198.51.100.7", False),
        ("203.0.113.9", False),
        ("192.88.99.1", False),  # 6to4 relay anycast (deprecated)
        ("0.0.0.0", False),
        ("0.1.2.3", False),
        ("224.0.0.1", False),  # multicast (the stdlib calls it global)
        ("239.255.255.250", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("::ffff:169.254.169.254", False),
        ("::ffff:10.0.0.1", False),
        ("::127.0.0.1", False),  # IPv4-compatible (deprecated)
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1 (the stdlib calls it global)
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("64:ff9b:1::a00:1", False),  # local-use NAT64
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1 (the stdlib <3.12.4 calls it global)
        ("2001::1", False),  # Teredo
        ("2001:db8::1", False),
        ("3fff::1", False),  # documentation (RFC 9637)
        ("fc00::1", False),
        ("fd12:3456::1", False),
        ("fe80::1", False),
        ("fe80::1%2", False),
        ("fec0::1", False),  # site-local (deprecated)
        ("ff0e::1", False),  # global-scope multicast (the stdlib calls it global)
        ("100::1", False),  # discard-only
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("100.63.255.255", True),  # just below 100.64/10
        ("100.128.0.0", True),  # just above
        ("2001:4860:4860::8888", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),  # a mapped public address is that public address
        ("64:ff9b::808:808", True),  # NAT64 of a public address (IPv6-only hosts)
    ],
)
def test_only_public_addresses_are_allowed(address: str, allowed: bool) -> None:
    assert address_allowed(ipaddress.ip_address(address)) is allowed


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1.",  # trailing dot
        "127.0.0.1..",
        "127.1",  # numeric shorthand
        "2130706433",  # one decimal number
        "0x7f000001",
        "0x7f.1",
        "0177.0.0.1",  # octal
        "017700000001",
        "127.000.000.001",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[0:0:0:0:0:ffff:127.0.0.1]",
        "localhost",
        "LOCALHOST",
        "localhost.",
        "printer.localhost",
        "localhost.localdomain",
    ],
)
async def test_loopback_in_any_spelling_is_refused_before_connecting(
    guarded: tuple[DownloadClient, Resolver], server: FakeUpstream, host: str
) -> None:
    client, resolver = guarded
    with pytest.raises(ProviderFailure) as err:
        await download(client, f"http://{host}:{server.port}/ok", _net(allow_private_downloads=False))
    # (httpx itself refuses some spellings, 0177.0.0.1, as not a URL.)
    assert err.value.reason == "invalid_response", err.value
    assert "private address" in err.value.message or "not a valid URL" in err.value.message, err.value
    assert server.requests == []  # refused before connecting
    assert resolver.calls == []  # an address or a local name: nothing to ask DNS


@pytest.mark.parametrize(
    ("answers", "refused"),
    [
        (["127.0.0.1"], "127.0.0.1"),
        (["::1"], "::1"),
        (["::ffff:127.0.0.1"], "::ffff:7f00:1"),
        (["8.8.8.8", "127.0.0.1"], "127.0.0.1"),  # one private answer among public ones is enough
        (["127.0.0.1", "8.8.8.8"], "127.0.0.1"),
    ],
)
async def test_a_public_looking_name_that_resolves_privately_is_refused(
    server: FakeUpstream, answers: list[str], refused: str
) -> None:
    resolver = Resolver({"images.cdn-example": answers})
    async with download_client(_config(), 4, guard=AddressGuard(resolve=resolver)) as client:
        with pytest.raises(ProviderFailure) as err:
            await download(client, f"http://images.cdn-example:{server.port}/ok", _net(allow_private_downloads=False))
    assert err.value.reason == "invalid_response" and refused in err.value.message, err.value
    assert server.requests == [] and resolver.calls == ["images.cdn-example"]


@pytest.mark.parametrize(
    "answer",
    ["100.100.100.200", "169.254.169.254", "10.0.0.5", "64:ff9b::a9fe:a9fe", "fd00:ec2::254", "192.0.0.8"],
)
async def test_a_name_for_a_metadata_or_internal_address_is_refused_by_the_guard(answer: str) -> None:
    """The guard itself, without connecting (a guard that let these through would reach the network)."""
    guard = AddressGuard(resolve=Resolver({"metadata.internal": [answer]}))
    with pytest.raises(AddressRefused) as err:
        await guard.addresses("metadata.internal")
    assert failure_for(err.value).reason == "invalid_response" and "private address" in err.value.message


@pytest.mark.parametrize(
    "failure",
    [
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        socket.gaierror(socket.EAI_AGAIN, "try again"),
        [],
    ],
    ids=["nxdomain", "servfail", "no-address"],
)
async def test_a_name_that_does_not_resolve_is_refused(
    server: FakeUpstream, failure: BaseException | list[str]
) -> None:
    """Fail closed: the old guard let a name it could not resolve through to the connect."""
    resolver = Resolver({"files.example": failure})
    async with download_client(_config(), 4, guard=AddressGuard(resolve=resolver)) as client:
        with pytest.raises(ProviderFailure) as err:
            await download(client, f"http://files.example:{server.port}/ok", _net(allow_private_downloads=False))
    assert err.value.reason == "network" and "resolve" in err.value.message, err.value
    assert server.requests == []


@pytest.fixture(name="two_hosts")
def _two_hosts() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    """A "public" host on 127.0.0.2 and a private one on 127.0.0.1, on the same port."""
    for _ in range(20):
        public = FakeUpstream(host=str(PUBLIC_LOOPBACK))
        public.start()
        private = FakeUpstream(host="127.0.0.1", port=public.port)
        try:
            private.start()
        except OSError:  # that port is taken on 127.0.0.1: another one
            public.stop()
            continue
        break
    else:
        pytest.fail("no port free on both 127.0.0.1 and 127.0.0.2")
    for up, body in ((public, b"public"), (private, b"PRIVATE")):
        up.route("GET", r"/ok", lambda r, b=body: Reply(200, b"\x89PNG" + b))  # type: ignore[misc]
        up.route("GET", r"/hop", lambda r: Reply(302, b"", {"location": "/ok", "connection": "close"}))
    try:
        yield public, private
    finally:
        public.stop()
        private.stop()


async def test_a_rebinding_name_is_fetched_from_the_address_that_was_checked(
    two_hosts: tuple[FakeUpstream, FakeUpstream],
) -> None:
    """DNS rebinding: the name answers a public address first and loopback afterwards. The
    old guard resolved once to check and again to connect; now the connection goes to the
    checked address and the name is resolved once."""
    public, private = two_hosts
    resolver = Resolver({"cdn.rebind-test": [[str(PUBLIC_LOOPBACK)], ["127.0.0.1"]]})
    guard = AddressGuard(resolve=resolver, allowed=_public_loopback)
    async with download_client(_config(), 4, guard=guard) as client:
        data, _ = await download(
            client, f"http://cdn.rebind-test:{public.port}/ok", _net(allow_private_downloads=False)
        )
    assert data == b"\x89PNGpublic"
    assert resolver.calls == ["cdn.rebind-test"]
    assert private.requests == []


async def test_a_rebinding_name_is_refused_at_its_next_connection(two_hosts: tuple[FakeUpstream, FakeUpstream]) -> None:
    """A redirect to the same name on a new connection: resolved and checked again, now loopback — refused."""
    public, private = two_hosts
    resolver = Resolver({"cdn.rebind-test": [[str(PUBLIC_LOOPBACK)], ["127.0.0.1"]]})
    guard = AddressGuard(resolve=resolver, allowed=_public_loopback)
    async with download_client(_config(), 4, guard=guard) as client:
        with pytest.raises(ProviderFailure) as err:
            await download(client, f"http://cdn.rebind-test:{public.port}/hop", _net(allow_private_downloads=False))
    assert err.value.reason == "invalid_response" and "127.0.0.1" in err.value.message
    assert [r.path for r in public.requests] == ["/hop"] and private.requests == []
    assert resolver.calls == ["cdn.rebind-test", "cdn.rebind-test"]


async def test_a_redirect_from_a_public_host_to_a_private_one_is_refused(
    two_hosts: tuple[FakeUpstream, FakeUpstream],
) -> None:
    public, private = two_hosts
    port = public.port
    public.route("GET", r"/to-loopback", lambda r: Reply(302, b"", {"location": f"http://127.0.0.1:{port}/ok"}))
    public.route("GET", r"/to-localhost", lambda r: Reply(302, b"", {"location": f"http://localhost:{port}/ok"}))
    public.route("GET", r"/to-name", lambda r: Reply(302, b"", {"location": f"http://intranet.example:{port}/ok"}))
    resolver = Resolver({"intranet.example": ["127.0.0.1"]})
    guard = AddressGuard(resolve=resolver, allowed=_public_loopback)
    async with download_client(_config(), 4, guard=guard) as client:
        data, _ = await download(client, f"{public.url}/ok", _net(allow_private_downloads=False))
        assert data == b"\x89PNGpublic"
        for path in ("/to-loopback", "/to-localhost", "/to-name"):
            with pytest.raises(ProviderFailure) as err:
                await download(client, public.url + path, _net(allow_private_downloads=False))
            assert "private address" in err.value.message, path
    assert private.requests == []


async def test_with_a_proxy_the_name_is_checked_and_the_proxy_connects(server: FakeUpstream) -> None:
    """Behind ``network.proxy`` the proxy resolves the name: the guard checks the name (pinning is the proxy's job)."""
    server.route("GET", r"/img.png", lambda r: Reply(200, b"\x89PNG via proxy"))
    resolver = Resolver({"cdn.example": ["8.8.8.8"], "internal.example": ["10.0.0.7"]})
    config = _config(proxy=server.url)
    async with download_client(config, 4, guard=AddressGuard(resolve=resolver)) as client:
        data, _ = await download(client, "http://cdn.example/img.png", _net(allow_private_downloads=False))
        assert data == b"\x89PNG via proxy"
        with pytest.raises(ProviderFailure) as err:
            await download(client, "http://internal.example/img.png", _net(allow_private_downloads=False))
        assert "10.0.0.7" in err.value.message
        with pytest.raises(ProviderFailure):
            await download(client, "http://169.254.169.254/latest/meta-data/", _net(allow_private_downloads=False))
    # The proxy saw the allowed request only (absolute-form: the proxy resolves cdn.example).
    assert [r.path for r in server.requests] == ["/img.png"]
    assert resolver.calls == ["cdn.example", "internal.example"]


async def test_loopback_is_allowed_when_private_downloads_are(server: FakeUpstream) -> None:
    resolver = Resolver()
    async with download_client(
        _config(allow_private_downloads=True), 4, guard=AddressGuard(resolve=resolver)
    ) as client:
        for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]"):
            data, _ = await download(client, f"http://{host}:{server.port}/ok", _net())
            assert data.startswith(b"\x89PNG"), host
    assert len(server.requests) == 3 and resolver.calls == []  # the guard is off: not even asked


# ---- scheme, redirects, size, time, keys -------------------------------------------------------


async def test_a_plain_download_returns_the_bytes_and_the_final_url(
    open_client: DownloadClient, server: FakeUpstream
) -> None:
    data, final = await download(open_client, f"{server.url}/to-ok", _net())
    assert data.startswith(b"\x89PNG") and final == f"{server.url}/ok"
    exact, _ = await download(open_client, f"{server.url}/exact", _net())
    assert len(exact) == CAP


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1/", "data:image/png;base64,AAAA", "//x/y"]
)
async def test_only_http_and_https_are_fetched(open_client: DownloadClient, url: str) -> None:
    with pytest.raises(ProviderFailure) as err:
        await download(open_client, url, _net())
    assert err.value.reason == "invalid_response" and "scheme" in err.value.message


@pytest.mark.parametrize("path", ["/to-file", "/to-ftp"])
async def test_a_redirect_to_another_scheme_is_refused(
    open_client: DownloadClient, server: FakeUpstream, path: str
) -> None:
    with pytest.raises(ProviderFailure) as err:
        await download(open_client, server.url + path, _net())
    assert err.value.reason == "invalid_response" and "scheme" in err.value.message


async def test_redirect_loops_end(open_client: DownloadClient, server: FakeUpstream) -> None:
    with pytest.raises(ProviderFailure) as err:
        await download(open_client, f"{server.url}/loop", _net(max_redirects=3))
    assert "too many redirects" in err.value.message
    assert len(server.calls("GET", r"/loop")) == 4


async def test_the_size_cap_holds_for_declared_and_streamed_bodies(
    open_client: DownloadClient, server: FakeUpstream
) -> None:
    for path in ("/declared-huge", "/streamed-huge"):
        with pytest.raises(ProviderFailure) as err:
            await download(open_client, server.url + path, _net())
        assert err.value.reason == "invalid_response" and "cap" in err.value.message, path
    with pytest.raises(ProviderFailure):
        await download(open_client, f"{server.url}/ok", _net(), max_bytes=50)  # a per-call cap below the default


async def test_a_hanging_server_ends_at_the_timeout(open_client: DownloadClient, server: FakeUpstream) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):  # the actor records it as reason=timeout
        await download(open_client, f"{server.url}/hang", _net(download_timeout=0.5))
    assert time.monotonic() - started < 5


async def test_http_errors_are_typed(open_client: DownloadClient, server: FakeUpstream) -> None:
    with pytest.raises(ProviderFailure) as err:
        await download(open_client, f"{server.url}/missing", _net())
    assert err.value.reason == "unsupported" and err.value.status == 404


async def test_an_api_key_never_follows_a_redirect_to_another_origin(open_client: DownloadClient) -> None:
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
        await download(open_client, f"{gateway.url}/same", _net(), headers=headers)
        await download(open_client, f"{gateway.url}/away", _net(), headers=headers)
    assert seen == {"gateway": "Bearer sk-test-1", "storage": ""}


async def test_the_guard_holds_inside_a_running_event_loop_under_concurrency(
    open_client: DownloadClient, server: FakeUpstream
) -> None:
    results: list[str] = []

    async def one(path: str) -> None:
        try:
            await download(open_client, server.url + path, _net())
            results.append("ok")
        except ProviderFailure as exc:
            results.append(exc.reason)

    async with anyio.create_task_group() as tg:
        for path in ["/ok", "/streamed-huge", "/to-file", "/ok", "/declared-huge"] * 4:
            tg.start_soon(one, path)
    assert sorted(set(results)) == ["invalid_response", "ok"] and results.count("ok") == 8


async def test_the_api_client_is_not_guarded_but_the_download_client_is(server: FakeUpstream) -> None:
    """Configured API base URLs may be LAN gateways; URLs an upstream names may not."""
    from aiimg.services.infra.http import upstream_client

    config = _config()
    async with upstream_client(config, 2) as api, download_client(config, 2) as downloads:
        assert (await api.get(f"{server.url}/ok")).status_code == 200
        with pytest.raises(ProviderFailure):
            await download(downloads, f"{server.url}/ok", config.network)
    assert [r.path for r in server.requests] == ["/ok"]


async def test_a_client_without_the_guard_is_refused_unless_private_downloads_are_allowed(
    server: FakeUpstream,
) -> None:
    """download() trusts its client to check addresses; a caller that is not type-checked
    (the AstrBot bridge) handing it another client is stopped before any request."""
    from aiimg.services.infra.http import upstream_client

    async with upstream_client(_config(), 2) as api:
        with pytest.raises(ConfigError):
            await download(api, f"{server.url}/ok", _net(allow_private_downloads=False))  # type: ignore[arg-type]
    async with download_client(_config(allow_private_downloads=True), 2) as open_client:
        with pytest.raises(ConfigError):
            await download(open_client, f"{server.url}/ok", _net(allow_private_downloads=False))
    assert server.requests == []


def test_the_guard_is_the_clients() -> None:
    assert download_client(_config(), 1).guarded
    assert not download_client(_config(allow_private_downloads=True), 1).guarded
    assert isinstance(download_client(_config(), 1), httpx.AsyncClient)


async def test_a_provider_actor_calls_a_lan_api_but_downloads_only_public_urls(
    nats_url: str, tmp_path: Path, server: FakeUpstream
) -> None:
    """End to end: the actor's API client reaches the configured loopback gateway; the image
    URL the gateway's reply names on loopback is refused by the actor's download client."""
    port = server.port
    reply = {"created": 1, "data": [{"url": f"http://127.0.0.1:{port}/ok"}]}
    server.route("POST", r"/v1/images/generations", lambda r: json_reply(reply))
    block = {"base_url": server.url, "api_keys": ["sk-test-1"], "model": "gpt-image-1", "max_retries": 0}
    config = make_config(nats_url, tmp_path, draw={"provider": "openai_compat", "openai_compat": block})
    assert not config.network.allow_private_downloads
    bus = await connect(config)
    await bus.ensure_layout()
    try:
        async with running(Stack(bus, providers=[OpenAICompatProvider(config)])) as stack:
            [actor] = stack.providers
            assert actor.downloads.guarded and not isinstance(actor.http, DownloadClient)
            end = await Client(bus).wait(await Client(bus).submit("draw", "a fox"), timeout=30)
        [failed] = [e for _, e in await bus.history(end.job_id) if isinstance(e, AttemptFailed)]
    finally:
        await bus.close()
    assert isinstance(end, JobFailed)
    assert failed.reason == "invalid_response" and "private address: 127.0.0.1" in failed.message, failed
    assert [r.path for r in server.requests] == ["/v1/images/generations"]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://[::1/broken.png", "not a valid URL"),
        ("http://example.com:99999/x.png", "not a valid URL"),
        ("http://user:sk-secret@example.com/x.png", "credentials"),
        ("https://only-a-user@example.com/x.png", "credentials"),
    ],
)
async def test_malformed_urls_and_urls_with_credentials_are_typed_failures(
    open_client: DownloadClient, url: str, why: str
) -> None:
    """They used to raise ValueError inside the provider (an internal error, its traceback logged)."""
    with pytest.raises(ProviderFailure) as err:
        await download(open_client, url, _net())
    assert err.value.reason == "invalid_response" and why in err.value.message
