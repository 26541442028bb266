"""The HTTP client provider actors call upstreams with.

Two transports wrap httpx's:

* :class:`CappedTransport` refuses response bodies over a byte limit while they stream, so
  one upstream answering 200 MB (or endless bytes) cannot take the actor's memory.
* :class:`ShardedTransport` spreads requests over several connection pools. httpcore's pool
  re-scans every connection on each request state change, so its CPU cost grows with the
  square of the requests in flight: one pool with 1,000 slow requests in flight spent ~40 ms
  of CPU per request here, shards of 64 connections keep each scan short (docs/benchmarks.md).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import httpx

from .config import Config
from .errors import ProviderFailure

__all__ = ("SHARD", "CappedTransport", "ShardedTransport", "response_cap", "send_read", "upstream_client")

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


def upstream_client(config: Config, concurrency: int) -> httpx.AsyncClient:
    """The client a provider actor running ``concurrency`` attempts at once calls upstreams with."""
    transport = ShardedTransport(max(concurrency, 1), proxy=config.network.proxy or None)
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
