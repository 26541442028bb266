"""The submitting client of the throughput and concurrency figures, in its own process,
and the direct baselines (httpx against the same upstream, no bus) measured the same way.

``python -m bench._load jobs CONFIG.json N [--submitters K]``: submit N draw jobs with the
real :class:`services.app.client.Client` from K concurrent tasks, count terminal events on
one core subscription (``<prefix>.job.*.done.*``), and print a JSON summary.

``python -m bench._load direct URL N [--concurrency K] [--plain]``: N POSTs to ``URL`` with K
in flight, each decoded as a provider would (msgspec, then pybase64). The client is the one a
provider actor builds (``services.infra.http.upstream_client``: httpx on aiohttp's transport);
``--plain`` uses httpx's own transport instead (sharded pools, so it stays O(1) per request).

``python -m bench._load direct-memory URL``: one such call; prints the process's peak RSS
above its idle RSS (the memory figure's baseline).
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from aiimg.services.config import Config, config_from_dict
from aiimg.services.infra.http import upstream_client
from aiimg.services.providers._common import b64decode_strict
from aiimg.services.providers._images_api import _LEAN as LEAN_REPLY
from bench._env import KEY, proc_status, reset_peak
from bench._sharded import sharded_client


async def jobs(config: Config, n: int, submitters: int, timeout: float) -> dict[str, Any]:
    import os

    from aiimg.messages import decode_event
    from aiimg.services.app.client import Client
    from aiimg.services.infra.bus import connect

    bus = await connect(config)
    try:
        await bus.ensure_layout()
        client = Client(bus)
        done_times: list[float] = []
        failed = 0
        finished = anyio.Event()

        async def on_done(msg: Any) -> None:
            nonlocal failed
            done_times.append(time.monotonic())
            if decode_event(msg.data).__struct_config__.tag != "job.completed.v1":
                failed += 1
            if len(done_times) >= n:
                finished.set()

        sub = await bus.nc.subscribe(bus.names.subject("done"), cb=on_done)
        run = os.urandom(3).hex()
        next_index = 0
        started = time.monotonic()
        submitted_at: list[float] = []

        async def submitter() -> None:
            nonlocal next_index
            while next_index < n:
                i = next_index
                next_index += 1
                await client.submit("draw", f"load {run} {i}")
                submitted_at.append(time.monotonic())

        async with anyio.create_task_group() as tg:
            for _ in range(submitters):
                tg.start_soon(submitter)
        submit_done = time.monotonic()
        with anyio.move_on_after(timeout):
            await finished.wait()
        await sub.unsubscribe()
        ended = done_times[-1] if done_times else time.monotonic()
        done_times.sort()
        lo, hi = int(len(done_times) * 0.1), int(len(done_times) * 0.9) - 1
        steady = (hi - lo) / (done_times[hi] - done_times[lo]) if hi > lo and done_times[hi] > done_times[lo] else 0.0
        return {
            "jobs": n,
            "completed": len(done_times) - failed,
            "failed": failed,
            "wall_s": ended - started,
            "submit_s": submit_done - started,
            "rate": len(done_times) / (ended - started) if ended > started else 0.0,
            "steady_rate": steady,
            "first_done_s": (done_times[0] - started) if done_times else None,
            "started_monotonic": started,
        }
    finally:
        await bus.close()


def decode_reply(body: bytes) -> bytes:
    """The image of an Images API reply, decoded the way a provider does (its msgspec
    decoder with ``b64_json`` as raw JSON, then pybase64 on the string's bytes)."""
    reply = LEAN_REPLY.decode(body)
    assert reply.data, "no data in the reply"
    return b64decode_strict(memoryview(reply.data[0].b64_json)[1:-1])


def _decode_plain(body: bytes) -> bytes:
    """The same with the standard library only: the memory figure's naive client."""
    doc = json.loads(body)
    return base64.b64decode(doc["data"][0]["b64_json"], validate=True)


async def direct(url: str, n: int, concurrency: int, plain: bool = False) -> dict[str, Any]:
    done_times: list[float] = []
    client = (
        sharded_client(concurrency, trust_env=False, timeout=120) if plain else upstream_client(Config(), concurrency)
    )
    async with client as http:
        next_index = 0

        async def worker() -> None:
            nonlocal next_index
            while next_index < n:
                i = next_index
                next_index += 1
                r = await http.post(url, json={"model": "gpt-image-1", "prompt": f"direct {i}"}, headers=_auth())
                decode_reply(r.content)
                done_times.append(time.monotonic())

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for _ in range(min(concurrency, n)):
                tg.start_soon(worker)
    wall = done_times[-1] - started
    return {"jobs": n, "completed": len(done_times), "wall_s": wall, "rate": n / wall if wall else 0.0}


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


async def direct_memory(url: str) -> dict[str, Any]:
    import os

    pid = os.getpid()
    async with httpx.AsyncClient(trust_env=False, timeout=120) as http:
        # Warm up the client and the allocator on a request that is not measured.
        await http.get(url.rsplit("/v1/", 1)[0] + "/_log")
        idle = proc_status(pid)["VmRSS"]
        resettable = reset_peak(pid)
        r = await http.post(url, json={"model": "gpt-image-1", "prompt": "memory"}, headers=_auth())
        data = _decode_plain(r.content)
        size = len(data)
        del r, data
    peak = proc_status(pid)["VmHWM"]
    return {"idle_rss": idle, "peak_rss": peak, "above_idle": peak - idle, "image_bytes": size, "reset": resettable}


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="mode", required=True)
    j = sub.add_parser("jobs")
    j.add_argument("config")
    j.add_argument("n", type=int)
    j.add_argument("--submitters", type=int, default=32)
    j.add_argument("--timeout", type=float, default=120.0)
    d = sub.add_parser("direct")
    d.add_argument("url")
    d.add_argument("n", type=int)
    d.add_argument("--concurrency", type=int, default=64)
    d.add_argument("--plain", action="store_true", help="httpx's own transport, not the provider's client")
    m = sub.add_parser("direct-memory")
    m.add_argument("url")
    args = p.parse_args()
    if args.mode == "jobs":
        config = config_from_dict(json.loads(Path(args.config).read_text()))
        result = anyio.run(jobs, config, args.n, args.submitters, args.timeout)
    elif args.mode == "direct":
        result = anyio.run(direct, args.url, args.n, args.concurrency, args.plain)
    else:
        result = anyio.run(direct_memory, args.url)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
