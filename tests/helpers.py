"""Test helpers: providers defined for tests on the real provider seam, and small utilities."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable

import anyio
from PIL import Image

from messages import Reason
from services.config import Config
from services.errors import ProviderFailure
from services.provider import AttemptContext, Output, Provider


def png(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


class ScriptedProvider(Provider):
    """A provider for runtime tests whose behaviour is a plain async function.

    It runs through the real ProviderActor (NATS, blobs, heartbeats); only the upstream
    call is replaced, as a provider module for a new upstream would replace it.
    """

    def __init__(self, config: Config, alias: str, behaviour: Callable[[AttemptContext], Awaitable[Output]]) -> None:
        super().__init__(config)
        self.alias = alias  # type: ignore[misc]
        self.behaviour = behaviour
        self.calls: list[AttemptContext] = []

    async def run(self, ctx: AttemptContext) -> Output:
        self.calls.append(ctx)
        return await self.behaviour(ctx)


def failing(
    reason: Reason, message: str = "scripted failure", retry_after: float = 0.0
) -> Callable[[AttemptContext], Awaitable[Output]]:
    async def run(ctx: AttemptContext) -> Output:
        raise ProviderFailure(reason, message, retry_after=retry_after)

    return run


def succeeding(
    delay: float = 0.0, color: tuple[int, int, int] = (10, 120, 200)
) -> Callable[[AttemptContext], Awaitable[Output]]:
    async def run(ctx: AttemptContext) -> Output:
        if delay:
            await anyio.sleep(delay)
        return Output(data=png(96, 64, color))

    return run
