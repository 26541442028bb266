"""One actor process for the benchmarks: the router, or one or more provider actors.

``python -m bench._actor CONFIG.json router`` or ``… provider ALIAS[,ALIAS] [--impl bench]``.
Prints ``READY <monotonic time>`` on stdout once its consumers are pulling, and stops
gracefully on SIGTERM (or at once on SIGKILL, which the recovery figure uses).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import anyio
import httpx

from aiimg.services.actors.provider import ProviderActor
from aiimg.services.app.stack import Stack
from aiimg.services.config import Config, config_from_dict
from aiimg.services.infra.bus import connect
from aiimg.services.infra.logging import configure_logging
from aiimg.services.providers.base import Provider

from ._sharded import sharded_client


def _providers(aliases: list[str], impl: str, config: Config) -> list[Provider]:
    if impl == "bench":
        from ._provider import bench_provider

        return [bench_provider(a)(config) for a in aliases]
    from aiimg.services.providers.catalog import load_provider

    return [load_provider(a, config) for a in aliases]


async def main(args: argparse.Namespace, config: Config) -> None:
    configure_logging(config.log.level, "json")
    bus = await connect(config)
    try:
        await bus.ensure_layout()
        if args.role == "router":
            stack = Stack(bus, router=True, providers=[])
        elif args.http_connections:
            # The fix proposed for ProviderActor: connections for its whole concurrency, spread
            # over several httpcore pools (one pool of 100 queues the rest, and its bookkeeping
            # costs O(requests in flight) of CPU per request).
            stack = Stack(bus, router=False, providers=[])
            for provider in _providers(args.aliases.split(","), args.impl, config):
                http = sharded_client(
                    args.http_connections,
                    timeout=httpx.Timeout(30.0, read=300.0),
                    follow_redirects=False,
                    trust_env=False,
                )
                stack.providers.append(ProviderActor(bus, provider, http=http))
            stack.actors = list(stack.providers)
        else:
            stack = Stack(bus, router=False, providers=_providers(args.aliases.split(","), args.impl, config))
        async with anyio.create_task_group() as tg:
            await tg.start(stack.run)
            print(f"READY {time.monotonic():.6f}", flush=True)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    await stack.stop()
                    break
    finally:
        await bus.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("role", choices=("router", "provider"))
    p.add_argument("aliases", nargs="?", default="")
    p.add_argument("--impl", choices=("real", "bench"), default="real")
    p.add_argument("--http-connections", type=int, default=0)
    try:
        args = p.parse_args()
        anyio.run(main, args, config_from_dict(json.loads(Path(args.config).read_text())))
    except KeyboardInterrupt:
        sys.exit(130)
