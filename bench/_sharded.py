"""An httpx transport that spreads requests over several connection pools.

httpcore's pool re-scans every connection on each request state change, so its CPU
cost grows with the square of the requests in flight: one ``AsyncClient`` with 1,000
slow requests in flight spends ~40 ms of CPU per request here (see docs/benchmarks.md).
Shards of at most :data:`SHARD` connections keep each scan short. Used by the direct
baseline and by the provider actor variant that shows the proposed fix.
"""

from __future__ import annotations

import itertools

import httpx

__all__ = ("SHARD", "ShardedTransport", "sharded_client")

SHARD = 64


class ShardedTransport(httpx.AsyncBaseTransport):
    def __init__(self, connections: int, shard: int = SHARD) -> None:
        count = max(1, -(-connections // shard))
        per = max(1, -(-connections // count))
        limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
        self._shards = [httpx.AsyncHTTPTransport(limits=limits) for _ in range(count)]
        self._next = itertools.cycle(self._shards)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await next(self._next).handle_async_request(request)

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


def sharded_client(connections: int, **kwargs: object) -> httpx.AsyncClient:
    """An ``AsyncClient`` for up to ``connections`` concurrent requests at a flat CPU cost per request."""
    return httpx.AsyncClient(transport=ShardedTransport(connections), **kwargs)  # type: ignore[arg-type]
