"""The sharded httpx transport now lives in ``services.infra.http``; re-exported for the bench baselines."""

from __future__ import annotations

from typing import Any

import httpx

from aiimg.services.infra.http import SHARD, ShardedTransport

__all__ = ("SHARD", "ShardedTransport", "sharded_client")


def sharded_client(connections: int, **kwargs: Any) -> httpx.AsyncClient:
    """An ``AsyncClient`` for up to ``connections`` concurrent requests at a flat CPU cost per request."""
    return httpx.AsyncClient(transport=ShardedTransport(connections), **kwargs)
