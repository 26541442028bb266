"""The HTTP client provider actors call upstreams with.

Providers speak httpx (``httpx.AsyncClient``: requests, auth, redirects, decoding), and
the client's transport decides how bytes move:

* :class:`AiohttpTransport` (the default) sends each request over aiohttp's connection
  pool and C HTTP parser. httpx's own transport (httpcore + h11, pure Python) cost
  1.45 ms of CPU per call with 64 calls in flight here; httpx on this transport 0.31 ms
  (``docs/benchmarks.md``). It is what the provider actor's throughput, concurrency and
  failover figures rest on.
* :class:`CappedTransport` refuses response bodies over a byte limit while they stream, so
  one upstream answering 200 MB (or endless bytes) cannot take the actor's memory.
* :class:`ShardedTransport` spreads requests over several httpx connection pools. httpcore's
  pool re-scans every connection on each request state change, so its CPU cost grows with
  the square of the requests in flight: one pool with 1,000 slow requests in flight spent
  ~40 ms of CPU per request here, shards of 64 connections keep each scan short. Used only
  where aiohttp cannot go: a SOCKS proxy (``network.proxy = "socks5://…"``).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import aiohttp
import httpx
from yarl import URL

from .config import Config
from .errors import ProviderFailure

__all__ = (
    "SHARD",
    "AiohttpTransport",
    "CappedTransport",
    "ShardedTransport",
    "response_cap",
    "send_read",
    "upstream_client",
)

SHARD = 64
"""Connections per pool shard."""


def response_cap(config: Config) -> int:
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
                raise ProviderFailure("invalid_response", f"upstream response exceeds {self._limit} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class CappedTransport(httpx.AsyncBaseTransport):
    """Refuses response bodies over ``limit`` bytes while they stream, as ``invalid_response``.

    Providers read JSON answers whole (``response.json()``); without a cap one upstream
    answering 200 MB (or endless bytes) would hold that much memory per attempt, times
    the actor's concurrency. Results larger than the blob limit could not be stored anyway.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, limit: int) -> None:
        self._inner = inner
        self._limit = limit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._limit:
            await response.aclose()
            raise ProviderFailure("invalid_response", f"upstream response of {declared} bytes exceeds {self._limit}")
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _CappedStream(response.stream, self._limit)
        return response

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

    httpx keeps everything above the wire — auth, cookies, redirects, content decoding,
    timeouts taken from each request's ``timeout`` extension — so aiohttp's own cookie jar,
    decompression and redirects are off. Exceptions become httpx's (:func:`_mapped`), so a
    provider cannot tell the transports apart. An HTTP(S) ``proxy`` is supported.
    """

    def __init__(self, connections: int, *, proxy: str | None = None) -> None:
        self._connections = max(1, connections)
        self._proxy = proxy or None
        # httpx's default context (certifi's CAs), so both transports trust the same servers.
        self._ssl = httpx.create_ssl_context()
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created on first use: an aiohttp session belongs to the running event loop.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._connections, limit_per_host=0, ssl=self._ssl, keepalive_timeout=5.0
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


def upstream_client(config: Config, concurrency: int, *, proxy: str | None = None) -> httpx.AsyncClient:
    """The client a provider actor running ``concurrency`` attempts at once calls upstreams with.

    ``proxy`` overrides ``network.proxy`` (a provider block with its own proxy URL).
    """
    proxy = proxy or config.network.proxy or None
    transport: httpx.AsyncBaseTransport
    if proxy and proxy.lower().startswith("socks"):
        transport = ShardedTransport(max(concurrency, 1), proxy=proxy)
    else:
        transport = AiohttpTransport(max(concurrency, 1), proxy=proxy)
    return httpx.AsyncClient(
        timeout=httpx.Timeout(30.0, read=300.0),
        follow_redirects=False,
        trust_env=False,
        transport=CappedTransport(transport, response_cap(config)),
    )


async def send_read(http: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """Send ``request`` and read the whole body into one buffer.

    ``Response.aread`` joins the body from a list of chunks, holding it twice at the
    peak; with a ``content-length`` and no content encoding the body is read straight
    into one preallocated buffer instead (a 4K ``b64_json`` answer is ~35 MB).
    """
    response = await http.send(request, stream=True)
    try:
        declared = response.headers.get("content-length", "")
        if not declared.isdigit() or response.headers.get("content-encoding"):
            await response.aread()
            return response
        buf = bytearray(int(declared))
        view = memoryview(buf)
        filled = 0
        async for chunk in response.aiter_raw():
            end = filled + len(chunk)
            if end > len(buf):
                raise ProviderFailure("invalid_response", "upstream sent more bytes than its content-length")
            view[filled:end] = chunk
            filled = end
        view.release()
        if filled != len(buf):
            raise ProviderFailure("invalid_response", "upstream reply shorter than its content-length")
        # httpx keeps a read body in ``_content``; a bytearray serves .content/.text/.json alike.
        response._content = buf  # type: ignore[assignment]
        return response
    finally:
        await response.aclose()
