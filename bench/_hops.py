"""The floor of a durable hop: bare nats-py, no aiimg code, each party in its own process.

A failover through the bus is two durable hops — the failed provider's ``AttemptFailed``
is stored and delivered to the router, whose next ``AttemptDispatched`` is stored and
delivered to the fallback provider — plus the two HTTP legs a client falling back by
itself also pays. This module measures those two hops with nothing of aiimg in them, on
a scratch stream per prefix configured like the jobs stream (file storage, duplicate window, one
durable pull consumer per reader with a standing pull request):

* ``relay``: pulls ``<p>.*.a``; for each message publishes ``<p>.<id>.b`` to the stream,
  waits for the stream's ack, acks the message — what the router does;
* ``sink``: pulls ``<p>.*.b`` and tells the orchestrator (core NATS) when each arrives —
  where the fallback provider would start its HTTP call;
* the orchestrator publishes ``<p>.<id>.a`` (waiting for its ack, as a provider does)
  and measures publish start → sink received, on ``time.monotonic()`` (one clock for
  every process on the machine).

``python -m bench._hops relay|sink URL PREFIX``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable

import nats
from nats.aio.msg import Msg
from nats.js import api as js_api


def _stream(prefix: str) -> str:
    """One scratch stream per prefix: every figure measuring hops gets its own."""
    return f"BENCH_HOPS_{prefix.upper()}"


async def ensure(url: str, prefix: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(
        js_api.StreamConfig(
            name=_stream(prefix),
            subjects=[f"{prefix}.>"],
            storage=js_api.StorageType.FILE,
            duplicate_window=120.0,
            allow_direct=True,
        )
    )
    for name, kind in (("relay", "a"), ("sink", "b")):
        await js.add_consumer(
            _stream(prefix),
            js_api.ConsumerConfig(
                durable_name=name,
                ack_policy=js_api.AckPolicy.EXPLICIT,
                filter_subject=f"{prefix}.*.{kind}",
                max_ack_pending=100_000,
            ),
        )
    await nc.close()


async def _pull(nc: nats.NATS, prefix: str, durable: str, handle: Callable[[Msg], Awaitable[None]]) -> None:
    """Keep one large pull request open on ``durable`` and hand each message to ``handle``."""
    inbox = nc.new_inbox()
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        queue.put_nowait(msg)

    await nc.subscribe(inbox, cb=on_msg)
    subject = f"$JS.API.CONSUMER.MSG.NEXT.{_stream(prefix)}.{durable}"
    request = json.dumps({"batch": 10_000, "expires": int(600e9)}).encode()
    await nc.publish(subject, request, reply=inbox)
    while True:
        msg = await queue.get()
        if msg.headers and msg.headers.get("Status") and not msg.data:
            await nc.publish(subject, request, reply=inbox)
            continue
        await handle(msg)


async def relay(url: str, prefix: str) -> None:
    nc = await nats.connect(url)

    async def handle(msg: Msg) -> None:
        job = msg.subject.split(".")[1]
        await nc.request(f"{prefix}.{job}.b", msg.data, timeout=10, headers={"Nats-Msg-Id": f"{job}.b"})
        await msg.ack()

    print(json.dumps({"ready": True}), flush=True)
    await _pull(nc, prefix, "relay", handle)


async def sink(url: str, prefix: str) -> None:
    nc = await nats.connect(url)

    async def handle(msg: Msg) -> None:
        received = time.monotonic()
        job = msg.subject.split(".")[1]
        await nc.publish(f"_hops.{prefix}.seen", json.dumps({"job": job, "t": received}).encode())
        await msg.ack()

    print(json.dumps({"ready": True}), flush=True)
    await _pull(nc, prefix, "sink", handle)


async def measure(url: str, prefix: str, n: int) -> list[float]:
    """Two stored hops, ``n`` times one after another: seconds from publish start to the sink."""
    nc = await nats.connect(url)
    seen: asyncio.Queue[dict[str, float]] = asyncio.Queue()

    async def on_seen(msg: Msg) -> None:
        seen.put_nowait(json.loads(msg.data))

    await nc.subscribe(f"_hops.{prefix}.seen", cb=on_seen)
    await nc.flush()
    gaps = []
    run = uuid.uuid4().hex[:8]  # message ids unique per run: the stream drops duplicates
    for i in range(n):
        job = f"{run}j{i}"
        started = time.monotonic()
        await nc.request(f"{prefix}.{job}.a", b'{"x": 1}', timeout=10, headers={"Nats-Msg-Id": f"{job}.a"})
        got = await asyncio.wait_for(seen.get(), 10)
        gaps.append(got["t"] - started)
        await asyncio.sleep(0.002)
    await nc.close()
    return gaps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=("relay", "sink"))
    p.add_argument("url")
    p.add_argument("prefix")
    args = p.parse_args()
    asyncio.run((relay if args.role == "relay" else sink)(args.url, args.prefix))


if __name__ == "__main__":
    main()
