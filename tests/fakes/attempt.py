"""Build the :class:`AttemptContext` a provider gets, to call a provider directly in a test.

The context is the real one the ProviderActor builds (settings block from the config,
a real ``httpx.AsyncClient`` that follows no redirects), minus the bus around it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import httpx

from messages import AttemptDispatched, Operation
from services.config import Config
from services.provider import AttemptContext, InputImage

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
) -> AttemptContext:
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
        deadline=time.monotonic() + budget,
    )
