"""The HTTP client provider actors call upstreams with.

Providers speak httpx (``httpx.AsyncClient``: requests, auth, redirects), and the
client's transport decides how bytes move:

* :class:`AiohttpTransport` (the default) sends each request over aiohttp's connection
  pool and C HTTP parser. httpx's own transport (httpcore + h11, pure Python) cost
  1.45 ms of CPU per call with 64 calls in flight here; httpx on this transport 0.31 ms
  (``docs/benchmarks.md``). It is what the provider actor's throughput, concurrency and
  failover figures rest on.
* :class:`CappedTransport` decodes ``gzip`` / ``deflate`` bodies itself, in bounded steps,
  and refuses a body over a byte limit — counted after decoding — while it streams, so one
  upstream answering 200 MB, endless bytes or a 1 MB gzip of 1 GiB cannot take the actor's
  memory. :class:`UpstreamClient` reads each body into one buffer (:func:`read_body`), so a
  body at the cap costs about the cap, not twice it.
* :class:`ShardedTransport` spreads requests over several httpx connection pools. httpcore's
  pool re-scans every connection on each request state change, so its CPU cost grows with
  the square of the requests in flight: one pool with 1,000 slow requests in flight spent
  ~40 ms of CPU per request here, shards of 64 connections keep each scan short. Used only
  where aiohttp cannot go: a SOCKS proxy (``network.proxy = "socks5://…"``).
"""

from __future__ import annotations

import io
import ipaddress
import itertools
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager

import aiohttp
import aiohttp.abc
import anyio
import httpx
from httpx._client import USE_CLIENT_DEFAULT, UseClientDefault
from httpx._types import AuthTypes
from yarl import URL

from ..domain.config import ConfigBase
from ..domain.errors import AddressRefused, BadEncoding, HostUnresolved, ResponseTooLarge

__all__ = (
    "ACCEPT_ENCODING",
    "DECODE_CHUNK",
    "SHARD",
    "AddressGuard",
    "AiohttpTransport",
    "CappedTransport",
    "DownloadClient",
    "GuardedResolver",
    "IPAddress",
    "Resolve",
    "ShardedTransport",
    "UpstreamClient",
    "address_allowed",
    "download_client",
    "read_body",
    "response_cap",
    "send_read",
    "system_resolve",
    "upstream_client",
)

SHARD = 64
"""Connections per pool shard."""

ACCEPT_ENCODING = "gzip, deflate"
"""The content encodings the client asks for: exactly those :class:`CappedTransport` decodes."""

DECODE_CHUNK = 1024 * 1024
"""Most bytes one inflate step produces: a compressed body grows the reader's buffer by at
most this much past the cap before it is refused, however densely it was compressed."""

_GZIP = zlib.MAX_WBITS | 16


def response_cap(config: ConfigBase) -> int:
    """Largest upstream response body an actor reads: the biggest storable blob, base64-encoded, plus 1 MiB."""
    return config.retention.max_blob_bytes * 4 // 3 + 1024 * 1024


class _CappedStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        total = 0
        async for chunk in self._inner:
            total += len(chunk)
            if total > self._limit:
                raise ResponseTooLarge(f"upstream response exceeds {self._limit} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Inflater:
    """Streaming gzip / deflate decoding that never produces more than ``limit`` bytes in all.

    Each ``zlib`` call is bounded by ``max_length`` (:data:`DECODE_CHUNK`), so 1 MB of
    gzip that inflates to 1 GiB is refused after ``limit`` decoded bytes instead of being
    expanded first. A gzip body may hold several members (RFC 1952); ``deflate`` is the
    zlib format (RFC 1950) or, as some servers send it, raw deflate — told apart by the
    zlib header, as browsers do.
    """

    def __init__(self, encoding: str, limit: int) -> None:
        self._gzip = encoding in ("gzip", "x-gzip")
        self._limit = limit
        self._head = b""
        self._z = zlib.decompressobj(_GZIP) if self._gzip else None
        self.total = 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._z is None:  # deflate: which kind is known from the first two bytes
            self._head += data
            if len(self._head) < 2:
                return
            cmf, flg = self._head[0], self._head[1]
            zlib_wrapped = cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf * 256 + flg) % 31 == 0
            self._z = zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)
            data, self._head = self._head, b""
        z = self._z
        while True:
            if z.eof:
                data = z.unused_data + data
                if not data:
                    return
                if not self._gzip:
                    raise BadEncoding("upstream sent bytes after the end of its deflate body")
                z = self._z = zlib.decompressobj(_GZIP)  # the next member
            try:
                out = z.decompress(data, DECODE_CHUNK)
            except zlib.error:
                raise BadEncoding("upstream body is not valid gzip/deflate data") from None
            data = z.unconsumed_tail
            if out:
                self.total += len(out)
                if self.total > self._limit:
                    raise ResponseTooLarge(f"upstream response exceeds {self._limit} bytes once decoded")
                yield out
            # Output may still be pending inside zlib when a call filled its max_length.
            if not data and len(out) < DECODE_CHUNK and not z.eof:
                return

    def finish(self, received: int) -> Iterator[bytes]:
        if not received:  # no body at all (HEAD, 204, 304): nothing to decode
            return
        yield from self.feed(b"")
        if self._z is None or not self._z.eof:
            raise BadEncoding("upstream compressed body ends early")


class _DecodedStream(httpx.AsyncByteStream):
    """The decoded body of a gzip/deflate response, capped at ``limit`` bytes on the wire and decoded."""

    def __init__(self, inner: httpx.AsyncByteStream, limit: int, encoding: str) -> None:
        self._inner = inner
        self._limit = limit
        self._inflater = _Inflater(encoding, limit)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        wire = 0
        async for chunk in self._inner:
            wire += len(chunk)
            if wire > self._limit:
                raise ResponseTooLarge(f"upstream response exceeds {self._limit} bytes")
            for out in self._inflater.feed(chunk):
                yield out
        for out in self._inflater.finish(wire):
            yield out

    async def aclose(self) -> None:
        await self._inner.aclose()


def _content_encodings(headers: httpx.Headers) -> list[str]:
    values = (v.strip().lower() for v in headers.get_list("content-encoding", split_commas=True))
    return [v for v in values if v and v != "identity"]


class CappedTransport(httpx.AsyncBaseTransport):
    """Refuses response bodies over ``limit`` bytes — counted after decoding — with ``ResponseTooLarge``.

    Providers read JSON answers whole (``response.json()``); without a cap one upstream
    answering 200 MB (or endless bytes) would hold that much memory per attempt, times
    the actor's concurrency. Results larger than the blob limit could not be stored anyway.

    The cap holds for what the body *becomes*: a ``gzip`` or ``deflate`` body is decoded
    here, in bounded steps (:class:`_Inflater`), and handed on without its
    ``content-encoding`` header so httpx does not decode it again. Any other encoding, or
    more than one (``gzip, gzip``: 2 KB → 1 MB → 1 GiB), is refused (``BadEncoding``) before
    a byte is decoded; clients of this transport ask only for ``gzip, deflate``
    (:data:`ACCEPT_ENCODING`).
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        try:
            encodings = _content_encodings(response.headers)
            if len(encodings) > 1 or (encodings and encodings[0] not in ("gzip", "x-gzip", "deflate")):
                named = ", ".join(encodings)[:60]
                raise BadEncoding(f"upstream answered with content-encoding {named!r}; only gzip or deflate, once")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self._limit:
                raise ResponseTooLarge(f"upstream response of {declared} bytes exceeds {self._limit}")
        except BaseException:
            await response.aclose()
            raise
        if not encodings:
            response.stream = _CappedStream(response.stream, self._limit)
            return response
        # The decoded body has neither that encoding nor that length any more.
        headers = [
            (name, value)
            for name, value in response.headers.multi_items()
            if name not in ("content-encoding", "content-length")
        ]
        return httpx.Response(
            status_code=response.status_code,
            headers=headers,
            stream=_DecodedStream(response.stream, self._limit, encodings[0]),
            request=request,
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class ShardedTransport(httpx.AsyncBaseTransport):
    """Round-robin over ``ceil(connections / shard)`` pools of at most ``shard`` connections."""

    def __init__(self, connections: int, shard: int = SHARD, *, proxy: str | None = None) -> None:
        count = max(1, -(-connections // shard))
        per = max(1, -(-connections // count))
        limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
        self._shards = [httpx.AsyncHTTPTransport(limits=limits, proxy=proxy, trust_env=False) for _ in range(count)]
        self._next = itertools.cycle(self._shards)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await next(self._next).handle_async_request(request)

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


@contextmanager
def _mapped() -> Iterator[None]:
    """aiohttp's exceptions as the httpx ones providers handle (``timeout`` vs ``network``)."""
    try:
        yield
    except httpx.HTTPError:
        raise
    except (aiohttp.ClientProxyConnectionError, aiohttp.ClientHttpProxyError) as exc:
        raise httpx.ProxyError(f"proxy: {type(exc).__name__}") from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx.ConnectTimeout("timed out connecting") from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise httpx.ReadTimeout("timed out reading the response") from exc
    except aiohttp.ClientConnectorError as exc:
        raise httpx.ConnectError(f"cannot connect: {type(exc).__name__}") from exc
    except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
        raise httpx.UnsupportedProtocol("not an http(s) URL") from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise httpx.RemoteProtocolError("server disconnected") from exc
    except aiohttp.ClientPayloadError as exc:
        raise httpx.RemoteProtocolError("malformed or truncated response body") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise httpx.ReadError(type(exc).__name__) from exc


class _AiohttpStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped():
            # Whatever the socket has (up to aiohttp's 256 KiB read buffer), not fixed small chunks.
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        # Back to the pool if the body was read to the end; closed otherwise.
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one aiohttp session (HTTP/1.1, keep-alive, ``connections`` at most).

    httpx keeps everything above the wire — auth, cookies, redirects, timeouts taken from
    each request's ``timeout`` extension — and :class:`CappedTransport` above it decodes
    content, so aiohttp's own cookie jar, decompression and redirects are off. Exceptions
    become httpx's (:func:`_mapped`), so a provider cannot tell the transports apart. An
    HTTP(S) ``proxy`` is supported. ``resolver`` replaces aiohttp's DNS resolution (and its
    DNS cache): the download client's :class:`GuardedResolver`.
    """

    def __init__(
        self, connections: int, *, proxy: str | None = None, resolver: aiohttp.abc.AbstractResolver | None = None
    ) -> None:
        self._connections = max(1, connections)
        self._proxy = proxy or None
        self._resolver = resolver
        # httpx's default context (certifi's CAs), so both transports trust the same servers.
        self._ssl = httpx.create_ssl_context()
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created on first use: an aiohttp session belongs to the running event loop.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._connections,
                limit_per_host=0,
                ssl=self._ssl,
                keepalive_timeout=5.0,
                resolver=self._resolver,
                # A guarding resolver checks the addresses of every new connection itself.
                use_dns_cache=self._resolver is None,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                trust_env=False,
                timeout=aiohttp.ClientTimeout(total=None),
                # httpx accepts long header lines (big cookies, long error reasons); so do we.
                max_line_size=65536,
                max_field_size=65536,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        body = await request.aread()
        session = self._get_session()
        with _mapped():
            response = await session.request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=list(request.headers.multi_items()),
                data=body or None,
                allow_redirects=False,
                proxy=self._proxy,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        extensions: dict[str, object] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1", "replace")
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_AiohttpStream(response),
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def read_body(response: httpx.Response, limit: int | None = None) -> bytes:
    """Read a streamed ``response``'s (decoded) body into one buffer, keep it as ``response.content``, close it.

    ``Response.aread`` collects chunks in a list and joins them: the body twice at the
    peak. Here the chunks go into one growing ``BytesIO``, whose ``getvalue()`` hands its
    buffer over without a copy, so a body of N bytes costs about N (measured in
    ``tests/reliability/test_response_memory.py``). ``limit`` refuses longer bodies
    (``ResponseTooLarge``) while they stream.
    """
    buf = io.BytesIO()
    try:
        async for chunk in response.aiter_bytes():
            if limit is not None and buf.tell() + len(chunk) > limit:
                raise ResponseTooLarge(f"body exceeds the {limit}-byte cap")
            buf.write(chunk)
    finally:
        await response.aclose()
    content = buf.getvalue()
    # httpx keeps a read body in ``_content``: .content, .text and .json() serve it from there.
    response._content = content
    return content


class UpstreamClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` whose non-streamed responses are read by :func:`read_body` (one buffer, no join)."""

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: AuthTypes | UseClientDefault | None = USE_CLIENT_DEFAULT,
        follow_redirects: bool | UseClientDefault = USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        response = await super().send(request, stream=True, auth=auth, follow_redirects=follow_redirects)
        if not stream:
            await read_body(response)
        return response


def upstream_client(config: ConfigBase, concurrency: int, *, proxy: str | None = None) -> UpstreamClient:
    """The client a provider actor running ``concurrency`` attempts at once calls upstreams with.

    ``proxy`` overrides ``network.proxy`` (a provider block with its own proxy URL).
    Every response body it reads costs at most :func:`response_cap` bytes, decoded, and
    about that much memory (:func:`read_body`).
    """
    proxy = proxy or config.network.proxy or None
    transport: httpx.AsyncBaseTransport
    if proxy and proxy.lower().startswith("socks"):
        transport = ShardedTransport(max(concurrency, 1), proxy=proxy)
    else:
        transport = AiohttpTransport(max(concurrency, 1), proxy=proxy)
    return UpstreamClient(
        headers={"Accept-Encoding": ACCEPT_ENCODING},
        timeout=httpx.Timeout(30.0, read=300.0),
        follow_redirects=False,
        trust_env=False,
        transport=CappedTransport(transport, response_cap(config)),
    )


async def send_read(http: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """Send ``request`` and read the whole body into one buffer (:func:`read_body`), with any client."""
    response = await http.send(request, stream=True)
    await read_body(response)
    return response


# ---- the download guard ---------------------------------------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str], Awaitable[Sequence[str]]]
"""A name → its addresses (``getaddrinfo``'s answers); raises ``OSError`` when it cannot."""

_NOT_GLOBAL_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # shared address space (carrier NAT; cloud metadata such as 100.100.100.200)
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local (cloud metadata 169.254.169.254)
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255
    )
)
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NOT_GLOBAL_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "2001::/23",  # IETF protocol assignments, Teredo (IPv4 inside)
        "2001:db8::/32",
        "2002::/16",  # 6to4 (IPv4 inside)
        "3fff::/20",  # documentation
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
"""The well-known NAT64 prefix: the address is its last 32 bits, in IPv4."""


def address_allowed(ip: IPAddress) -> bool:
    """Whether a download may connect to ``ip``: only globally reachable unicast addresses.

    ``is_global`` alone is not enough: it calls multicast global, and before Python
    3.12.4 / 3.11.10 also 192.0.0.0/24 and 6to4, so the IANA special-purpose ranges are
    listed here too. IPv4 inside IPv6 is judged as the IPv4 address it reaches
    (``::ffff:127.0.0.1``, NAT64 ``64:ff9b::7f00:1``); other IPv6 must be global unicast
    (2000::/3), which leaves out ``::``, IPv4-compatible ``::a.b.c.d``, ULA, link-local,
    site-local and multicast.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return address_allowed(ip.ipv4_mapped)
        if ip in _NAT64:
            return address_allowed(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return ip in _GLOBAL_UNICAST_V6 and ip.is_global and not any(ip in net for net in _NOT_GLOBAL_V6)
    return ip.is_global and not any(ip in net for net in _NOT_GLOBAL_V4)


async def system_resolve(host: str) -> list[str]:
    """The system resolver's addresses for ``host`` (``getaddrinfo``), each once."""
    infos = await anyio.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


_NUMERIC = frozenset("0123456789abcdefxABCDEFX.")


def _literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, if it spells one — including the forms ``inet_aton`` and
    so ``getaddrinfo`` accept (``2130706433``, ``0x7f.1``, ``127.1``, ``0177.0.0.1``)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host[:1].isdigit() and set(host) <= _NUMERIC:
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _local_name(name: str) -> bool:
    return name in ("localhost", "localhost.localdomain") or name.endswith(".localhost")


def _refused(what: str) -> AddressRefused:
    return AddressRefused(f"refusing a private address: {what}")


class AddressGuard:
    """Decides which addresses a download may connect to, and resolves names for the connector.

    ``resolve`` looks names up (default: :func:`system_resolve`); ``allowed`` judges one
    address (default: :func:`address_allowed`). Both are parameters so tests can answer
    for DNS (a rebinding name) and call one loopback address public.
    """

    def __init__(self, resolve: Resolve | None = None, allowed: Callable[[IPAddress], bool] = address_allowed) -> None:
        self._resolve: Resolve = resolve or system_resolve
        self._allowed = allowed

    def check_literal(self, host: str) -> bool:
        """For an address (in any spelling) or a ``localhost`` name: refuse it or return True.
        For any other name: False, the name must be resolved (:meth:`addresses`)."""
        name = host.strip("[]").rstrip(".").lower()
        if not name or _local_name(name):
            raise _refused(f"{host[:80]} is a local name")
        ip = _literal(name)
        if ip is None:
            return False
        if not self._allowed(ip):
            raise _refused(str(ip))
        return True

    async def addresses(self, host: str) -> list[str]:
        """The addresses to connect to for ``host``, every one of them checked; refuses otherwise.

        A name that does not resolve is refused (``HostUnresolved``): fail closed.
        """
        name = host.strip("[]").rstrip(".").lower()
        if self.check_literal(name):
            ip = _literal(name)
            return [str(ip)]
        shown = name[:80]
        try:
            answers = list(await self._resolve(name))
        except OSError as exc:
            raise HostUnresolved(f"cannot resolve {shown} ({type(exc).__name__}); not fetched") from None
        if not answers:
            raise HostUnresolved(f"cannot resolve {shown} (no address); not fetched")
        out: list[str] = []
        for answer in answers:
            try:
                ip = ipaddress.ip_address(answer)
            except ValueError:
                raise _refused(f"{shown} resolves to {answer[:60]!r}, not an address") from None
            if not self._allowed(ip):
                raise _refused(f"{shown} resolves to {ip}")
            out.append(str(ip))
        return out


class GuardedResolver(aiohttp.abc.AbstractResolver):
    """aiohttp's resolver for the download client: resolves each new connection's name once,
    through :meth:`AddressGuard.addresses`, and hands the connector exactly the addresses that
    were checked — so a name cannot answer a public address to a check and a private one to
    the connect (DNS rebinding)."""

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        out: list[aiohttp.abc.ResolveResult] = []
        for address in await self._guard.addresses(host):
            kind = socket.AF_INET6 if ":" in address else socket.AF_INET
            if family in (socket.AF_UNSPEC, kind):
                out.append(
                    aiohttp.abc.ResolveResult(
                        hostname=host,
                        host=address,
                        port=port,
                        family=kind,
                        proto=0,
                        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                    )
                )
        if not out:
            raise HostUnresolved(f"cannot resolve {host[:80]} (no address of the wanted family)")
        return out

    async def close(self) -> None:
        pass


class _GuardedTransport(httpx.AsyncBaseTransport):
    """Checks each request's host before ``inner`` connects.

    Addresses and local names are judged here (aiohttp connects to an address without
    asking its resolver). Names are judged by the connector's :class:`GuardedResolver`
    (``pinned``), or here when a proxy resolves them instead (not pinned: the proxy
    connects to whatever the name resolves to by then).
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, guard: AddressGuard, *, pinned: bool) -> None:
        self._inner = inner
        self._guard = guard
        self._pinned = pinned

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if not self._guard.check_literal(host) and not self._pinned:
            await self._guard.addresses(host)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class DownloadClient(UpstreamClient):
    """The client for URLs that upstream replies and chat messages name (``_common.download``).

    Unlike the API client (:func:`upstream_client`), whose base URLs are configured and may
    be LAN gateways, it refuses every address that is not public (``guarded``), unless
    ``network.allow_private_downloads`` is set. Built by :func:`download_client` only.
    """

    def __init__(self, *, guarded: bool, transport: httpx.AsyncBaseTransport) -> None:
        super().__init__(
            headers={"Accept-Encoding": ACCEPT_ENCODING},
            timeout=httpx.Timeout(30.0, read=300.0),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )
        self.guarded = guarded


def download_client(config: ConfigBase, concurrency: int, *, guard: AddressGuard | None = None) -> DownloadClient:
    """The download client of a provider actor (or the chat bridge) with ``concurrency`` downloads at once.

    With the guard on (``network.allow_private_downloads = false``, the default) every
    connection's host is resolved once by a :class:`GuardedResolver` and the connection
    goes to those checked addresses. Behind ``network.proxy`` the proxy resolves the name:
    the name is checked here, and pinning its address is the proxy's job. ``guard``
    replaces the default :class:`AddressGuard` (tests: an injected resolver).
    Bodies are capped and decoded as the API client's (:class:`CappedTransport`).
    """
    net = config.network
    proxy = net.proxy or None
    active = None if net.allow_private_downloads else (guard or AddressGuard())
    transport: httpx.AsyncBaseTransport
    if proxy and proxy.lower().startswith("socks"):
        transport = ShardedTransport(max(concurrency, 1), proxy=proxy)
    elif proxy:
        transport = AiohttpTransport(max(concurrency, 1), proxy=proxy)
    else:
        resolver = GuardedResolver(active) if active is not None else None
        transport = AiohttpTransport(max(concurrency, 1), resolver=resolver)
    if active is not None:
        transport = _GuardedTransport(transport, active, pinned=proxy is None)
    return DownloadClient(guarded=active is not None, transport=CappedTransport(transport, response_cap(config)))
