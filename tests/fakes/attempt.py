"""Build the :class:`AttemptContext` a provider gets, to call a provider directly in a test.

The context is the real one the ProviderActor builds (settings block from the config,
a real ``httpx.AsyncClient`` that follows no redirects), minus the bus around it.

The actor has two clients: ``http`` for the upstream's API and ``downloads`` for URLs its
replies name. With ``network.allow_private_downloads = true`` (what tests of loopback
upstreams set) the two are built alike, so one ``DownloadClient`` — the ``http`` fixture
— may serve as both; a test of the guard passes ``downloads`` of its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import httpx

from aiimg.messages import AttemptDispatched, Operation
from aiimg.services.config import Config
from aiimg.services.infra.http import DownloadClient
from aiimg.services.providers.base import AttemptContext, InputImage

__all__ = ("attempt_context",)


def attempt_context(
    config: Config,
    alias: str,
    http: httpx.AsyncClient,
    *,
    op: Operation = "draw",
    prompt: str = "a red fox in the snow",
    output: str = "",
    inputs: Sequence[InputImage] = (),
    budget: float = 20.0,
    downloads: DownloadClient | None = None,
) -> AttemptContext:
    if downloads is None:
        assert isinstance(http, DownloadClient), "pass downloads=, or a DownloadClient as http"
        assert config.network.allow_private_downloads is not http.guarded, "the client's guard differs from config"
        downloads = http
    block = config.block(op, alias)
    assert block is not None, f"no {op} block for {alias}"
    dispatch = AttemptDispatched(
        job_id=uuid.uuid4().hex[:12],
        attempt=1,
        provider=alias,
        op=op,
        prompt=prompt,
        output=output,
        deadline=time.time() + budget,
    )
    return AttemptContext(
        dispatch=dispatch,
        settings=block,
        config=config,
        inputs=list(inputs),
        http=http,
        downloads=downloads,
        deadline=time.monotonic() + budget,
    )
