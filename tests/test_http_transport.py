"""The provider actors' HTTP client (``services.infra.http.upstream_client``) on raw loopback
sockets: what goes on the wire, and how every way an upstream connection can fail comes
out as the httpx exception a provider maps to a typed failure reason."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import httpx
import pytest

from aiimg.services.config import Config, config_from_dict
from aiimg.services.domain.errors import UpstreamResponseError
from aiimg.services.infra.http import (
    AiohttpTransport,
    CappedTransport,
    ShardedTransport,
    response_cap,
    send_read,
    upstream_client,
)
from aiimg.services.providers._errors import failure_for

pytestmark = pytest.mark.anyio

Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A loopback TCP server running ``serve`` per connection; records each request head and body."""

    def __init__(self, serve: Serve) -> None:
        self._serve = serve
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.port = 0

    async def read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length) if length else b""
        self.requests.append((head, body))
        return head, body

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


Start = Callable[[Serve], Awaitable["RawServer"]]


@pytest.fixture
async def serve() -> AsyncIterator[Start]:
    servers: list[asyncio.Server] = []

    async def start(handler: Serve) -> RawServer:
        raw = RawServer(handler)
        server = await asyncio.start_server(raw._on_connect, "127.0.0.1", 0)
        raw.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return raw

    yield start
    for server in servers:
        server.close()


def reply(status: str, body: bytes, *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status}", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with upstream_client(Config(), 8) as client:
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_default_client_uses_aiohttp_under_the_response_cap() -> None:
    client = upstream_client(Config(), 4)
    transport = client._transport
    assert isinstance(transport, CappedTransport)
    assert isinstance(transport._inner, AiohttpTransport)
    await client.aclose()


async def test_a_socks_proxy_falls_back_to_httpx_own_transport() -> None:
    config = config_from_dict({"network": {"proxy": "socks5://127.0.0.1:1"}})
    try:
        client = upstream_client(config, 4)
    except ImportError as exc:  # httpx names the missing extra; that is a clear error too
        assert "socksio" in str(exc)
        return
    transport = client._transport
    assert isinstance(transport, CappedTransport) and isinstance(transport._inner, ShardedTransport)
    await client.aclose()


async def test_requests_go_out_byte_exact_and_keep_alive(serve: Start, http: httpx.AsyncClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await raw.read_request(reader)
            writer.write(reply("200 OK", b'{"ok": true}', "content-type: application/json"))
            await writer.drain()

    raw = await serve(handler)
    base = f"http://127.0.0.1:{raw.port}"
    # Percent-escapes in the path and query are sent as given, not re-quoted.
    r = await http.post(f"{base}/v1beta/models/a%2Fb:generateContent?key=x%2By", json={"prompt": "ü"})
    assert r.status_code == 200 and r.json() == {"ok": True}
    r = await http.post(f"{base}/v1/images/edits", files={"image": ("a.png", b"\x89PNG" + bytes(5000), "image/png")})
    assert r.status_code == 200
    head, body = raw.requests[0]
    assert head.startswith(b"POST /v1beta/models/a%2Fb:generateContent?key=x%2By HTTP/1.1\r\n")
    assert json.loads(body) == {"prompt": "ü"}
    head, body = raw.requests[1]
    assert b"multipart/form-data; boundary=" in head
    assert b"\x89PNG" + bytes(5000) in body
    assert raw.connections == 1, "the second request should reuse the kept-alive connection"


async def test_cookies_are_httpx_business_not_sent_twice(serve: Start, http: httpx.AsyncClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await raw.read_request(reader)
            writer.write(reply("200 OK", b"{}", "set-cookie: sid=abc; Path=/"))
            await writer.drain()

    raw = await serve(handler)
    await http.get(f"http://127.0.0.1:{raw.port}/one")
    await http.get(f"http://127.0.0.1:{raw.port}/two")
    second = raw.requests[1][0].lower()
    assert second.count(b"cookie:") <= 1 and second.count(b"sid=abc") <= 1


async def test_gzip_bodies_are_decoded_once(serve: Start, http: httpx.AsyncClient) -> None:
    payload = json.dumps({"data": [{"url": "http://x/y.png"}]}).encode()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.read_request(reader)
        writer.write(reply("200 OK", gzip.compress(payload), "content-encoding: gzip"))
        await writer.drain()

    raw = await serve(handler)
    r = await send_read(http, http.build_request("GET", f"http://127.0.0.1:{raw.port}/"))
    assert r.json() == json.loads(payload)


async def test_the_client_asks_only_for_the_encodings_the_cap_can_decode(serve: Start, http: httpx.AsyncClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.read_request(reader)
        writer.write(reply("200 OK", b"{}"))
        await writer.drain()

    raw = await serve(handler)
    await http.get(f"http://127.0.0.1:{raw.port}/")
    assert b"\r\naccept-encoding: gzip, deflate\r\n" in raw.requests[0][0].lower()


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


PAYLOAD = json.dumps({"data": [{"b64_json": "QUJD" * 5000}]}).encode()


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzip.compress(PAYLOAD)),
        ("x-gzip", gzip.compress(PAYLOAD)),
        ("GZIP", gzip.compress(PAYLOAD)),
        ("gzip", gzip.compress(PAYLOAD[:1000]) + gzip.compress(PAYLOAD[1000:])),  # two members (RFC 1952)
        ("deflate", zlib.compress(PAYLOAD)),  # the zlib format (RFC 1950)
        ("deflate", _raw_deflate(PAYLOAD)),  # raw deflate, as some servers send it
        ("identity", PAYLOAD),
        ("identity, gzip", gzip.compress(PAYLOAD)),
    ],
    ids=["gzip", "x-gzip", "upper-case", "two-members", "deflate-zlib", "deflate-raw", "identity", "identity-gzip"],
)
async def test_gzip_and_deflate_bodies_are_decoded_by_the_capped_transport(
    serve: Start, http: httpx.AsyncClient, encoding: str, body: bytes
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.read_request(reader)
        writer.write(reply("200 OK", body, f"content-encoding: {encoding}"))
        await writer.drain()

    raw = await serve(handler)
    r = await http.get(f"http://127.0.0.1:{raw.port}/")
    assert r.content == PAYLOAD
    # Decoded once, here: httpx must not see an encoding (it would decode again) or the wire length.
    assert "content-encoding" not in r.headers or r.headers["content-encoding"] == "identity"
    if encoding != "identity":
        assert "content-length" not in r.headers


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (["content-encoding: gzip, gzip"], gzip.compress(gzip.compress(PAYLOAD))),
        (["content-encoding: gzip", "content-encoding: gzip"], gzip.compress(gzip.compress(PAYLOAD))),
        (["content-encoding: deflate, gzip"], gzip.compress(zlib.compress(PAYLOAD))),
        (["content-encoding: br"], b"\x0b\x02\x80hello\x03"),
        (["content-encoding: zstd"], b"(\xb5/\xfd\x00X)\x00\x00hello"),
        (["content-encoding: compress"], b"\x1f\x9d\x90hello"),
        (["content-encoding: gzip"], b"this is not gzip at all"),
        (["content-encoding: gzip"], gzip.compress(PAYLOAD)[:-20]),  # truncated
        (["content-encoding: deflate"], zlib.compress(PAYLOAD) + b"trailing junk"),
    ],
    ids=["gzip-gzip", "gzip-twice-as-lines", "deflate-gzip", "br", "zstd", "compress", "garbage", "truncated", "junk"],
)
async def test_stacked_unknown_or_broken_encodings_are_invalid_responses(
    serve: Start, http: httpx.AsyncClient, headers: list[str], body: bytes
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.read_request(reader)
        writer.write(reply("200 OK", body, *headers))
        await writer.drain()

    raw = await serve(handler)
    with pytest.raises(UpstreamResponseError) as info:
        await http.get(f"http://127.0.0.1:{raw.port}/")
    assert failure_for(info.value).reason == "invalid_response", info.value


async def test_a_bodiless_answer_with_an_encoding_is_empty(serve: Start, http: httpx.AsyncClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await raw.read_request(reader)
            writer.write(b"HTTP/1.1 204 No Content\r\ncontent-encoding: gzip\r\n\r\n")
            await writer.drain()

    raw = await serve(handler)
    r = await http.get(f"http://127.0.0.1:{raw.port}/")
    assert r.status_code == 204 and r.content == b""


async def test_the_cap_counts_decoded_bytes(serve: Start) -> None:
    config = config_from_dict({"retention": {"max_blob_bytes": 1024}})
    cap = response_cap(config)
    small = gzip.compress(b"z" * (cap + 1))  # a few KB on the wire, one byte over the cap decoded
    fits = gzip.compress(b"z" * cap)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await raw.read_request(reader)
            writer.write(reply("200 OK", fits if b"/fits" in head else small, "content-encoding: gzip"))
            await writer.drain()

    raw = await serve(handler)
    async with upstream_client(config, 2) as client:
        with pytest.raises(UpstreamResponseError) as info:
            await client.get(f"http://127.0.0.1:{raw.port}/over")
        assert failure_for(info.value).reason == "invalid_response" and "decoded" in info.value.message
        assert len((await client.get(f"http://127.0.0.1:{raw.port}/fits")).content) == cap


async def test_redirects_are_returned_not_followed(serve: Start, http: httpx.AsyncClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.read_request(reader)
        writer.write(reply("302 Found", b"", "location: http://169.254.169.254/latest"))
        await writer.drain()

    raw = await serve(handler)
    r = await http.get(f"http://127.0.0.1:{raw.port}/")
    assert r.status_code == 302 and r.headers["location"].startswith("http://169.254")
    assert len(raw.requests) == 1


async def test_connection_refused_is_a_connect_error(http: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.ConnectError):
        await http.get(f"http://127.0.0.1:{free_port()}/")


async def test_a_silent_upstream_is_a_read_timeout(serve: Start, http: httpx.AsyncClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.read_request(reader)
        await asyncio.sleep(30)

    raw = await serve(handler)
    with pytest.raises(httpx.ReadTimeout):
        await http.get(f"http://127.0.0.1:{raw.port}/", timeout=httpx.Timeout(5.0, read=0.3))


async def test_a_stalled_body_is_a_read_timeout(serve: Start, http: httpx.AsyncClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10)
        await writer.drain()
        await asyncio.sleep(30)

    raw = await serve(handler)
    with pytest.raises(httpx.ReadTimeout):
        await http.get(f"http://127.0.0.1:{raw.port}/", timeout=httpx.Timeout(5.0, read=0.3))


@pytest.mark.parametrize(
    "answer",
    [
        b"",  # closed before any response
        b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n" + b"x" * 10,  # closed mid-body
        b"NOT HTTP AT ALL\r\n\r\n",  # garbage status line
    ],
    ids=["closed-before-reply", "closed-mid-body", "garbage"],
)
async def test_a_broken_connection_is_a_transport_error_not_a_timeout(
    serve: Start, http: httpx.AsyncClient, answer: bytes
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.read_request(reader)
        writer.write(answer)
        await writer.drain()

    raw = await serve(handler)
    with pytest.raises(httpx.TransportError) as info:
        await http.get(f"http://127.0.0.1:{raw.port}/")
    # A provider maps timeouts to "timeout" and other transport errors to "network".
    assert not isinstance(info.value, httpx.TimeoutException), repr(info.value)


async def test_the_response_cap_holds_on_this_transport(serve: Start) -> None:
    config = config_from_dict({"retention": {"max_blob_bytes": 1024}})
    cap = 1024 * 4 // 3 + 1024 * 1024

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await raw.read_request(reader)
        # Chunked and endless: only the streaming count can stop it.
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"y" * 65536)
        for _ in range(cap // 65536 + 10):
            writer.write(chunk)
            await writer.drain()

    raw = await serve(handler)
    async with upstream_client(config, 2) as client:
        with pytest.raises(UpstreamResponseError) as info:
            await client.get(f"http://127.0.0.1:{raw.port}/")
    assert failure_for(info.value).reason == "invalid_response"


async def test_a_cancelled_request_leaves_the_pool_usable(serve: Start, http: httpx.AsyncClient) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await raw.read_request(reader)
        if b"/slow" in head:
            await asyncio.sleep(30)
        writer.write(reply("200 OK", b"{}"))
        await writer.drain()

    raw = await serve(handler)
    with anyio.move_on_after(0.2) as scope:
        await http.get(f"http://127.0.0.1:{raw.port}/slow")
    assert scope.cancelled_caught
    r = await http.get(f"http://127.0.0.1:{raw.port}/fast")
    assert r.status_code == 200
