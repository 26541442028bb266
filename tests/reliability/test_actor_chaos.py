"""Actor crashes: many draw jobs while a chaos loop SIGKILLs the router and provider actors.

Real processes: the router and two ``openai_compat`` replicas run as ``aiimg serve --only …``
children on the session's nats-server; the upstream is a loopback OpenAI Images API with
random latency. A chaos loop kills a random actor process with SIGKILL (no drain, no ack,
no nak) and starts a new one, over and over, while jobs are submitted.

Every job must reach exactly one terminal event in its history, no requester may receive
two results on ``<prefix>.job.<id>.done.<client>``, and none may be lost. The figures are printed.

1,000 jobs by default (about 40 s on two cores); ``AIIMG_CHAOS_JOBS`` changes the count.
"""

from __future__ import annotations

import base64
import os
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import anyio
import pytest
from nats.aio.msg import Msg

from aiimg.messages import JobCompleted, JobFailed, JobRequested, decode_event
from aiimg.services.config import load_config
from aiimg.services.infra.bus import connect

from ..fakes.server import FakeUpstream, Reply, Request, json_reply
from ..helpers import png
from .procs import ServeProcess, write_toml

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(600)]

JOBS = int(os.environ.get("AIIMG_CHAOS_JOBS", "1000"))
KEY = "sk-test-chaos-1"


def images_upstream(rng: random.Random) -> FakeUpstream:
    """OpenAI ``POST /v1/images/generations`` answering a small PNG after 0–400 ms."""
    lock = threading.Lock()
    image = base64.b64encode(png(64, 64, (30, 140, 90))).decode()
    upstream = FakeUpstream()

    def generate(req: Request) -> Reply:
        if req.headers.get("authorization") != f"Bearer {KEY}":
            return json_reply({"error": {"message": "bad key", "type": "invalid_request_error"}}, 401)
        with lock:
            delay = rng.uniform(0.0, 0.4)
        return json_reply({"created": int(time.time()), "data": [{"b64_json": image}]}, delay=delay)

    upstream.route("POST", r"/v1/images/generations", generate)
    return upstream


async def test_chaos_kills_of_router_and_providers_lose_no_job(nats_url: str, tmp_path: Path) -> None:
    rng = random.Random(1000)
    prefix = "c" + uuid.uuid4().hex[:10]
    with images_upstream(random.Random(7)) as upstream:
        config_path = write_toml(
            tmp_path / "aiimg.toml",
            {
                "data_dir": str(tmp_path / "data"),
                "nats": {"url": nats_url, "prefix": prefix},
                "actors": {"ack_wait": 2.0, "concurrency": 32},
                "policy": {"backoff": 0.2, "max_backoff": 1.0, "timeout_grace": 5.0},
                "retention": {"job_max_age": 3600.0, "blob_max_age": 3600.0},
                "draw": {
                    "provider": "openai_compat",
                    "openai_compat": {
                        "base_url": upstream.url,
                        "api_keys": [KEY],
                        "model": "gpt-image-1",
                        "size": "64x64",
                        "timeout": 30.0,
                        "max_retries": 3,
                    },
                },
                "log": {"format": "json", "level": "info"},
            },
        )
        config = load_config(config_path)
        bus = await connect(config)
        await bus.ensure_layout()
        roles = ["router", "openai_compat", "openai_compat"]
        procs: list[ServeProcess] = [ServeProcess(config_path, r) for r in roles]
        retired: list[ServeProcess] = []
        results: defaultdict[str, int] = defaultdict(int)

        async def on_done(msg: Msg) -> None:
            results[decode_event(msg.data).job_id] += 1

        done_sub = await bus.nc.subscribe(bus.names.subject("done"), cb=on_done)
        kills: Counter[str] = Counter()
        jobs = [f"chaos-{i:05d}-{uuid.uuid4().hex[:8]}" for i in range(JOBS)]
        submitting = True
        try:
            for p in procs:
                await p.wait_for("router_started" if p.only == "router" else "provider_started", timeout=60)

            async def chaos() -> None:
                # Until every job is submitted, and a few more rounds after: kill one actor, start a new one.
                extra = 4
                while submitting or extra > 0:
                    if not submitting:
                        extra -= 1
                    await anyio.sleep(rng.uniform(0.5, 1.5))
                    # The router half the time (it is one process), else a random provider replica.
                    i = 0 if rng.random() < 0.5 else rng.randrange(1, len(procs))
                    victim = procs[i]
                    victim.kill()
                    kills[victim.only] += 1
                    retired.append(victim)
                    procs[i] = ServeProcess(config_path, victim.only)

            async with anyio.create_task_group() as tg:
                tg.start_soon(chaos)
                # Spread the submissions over at least 12 s so the kills land among running jobs.
                pause = max(12.0, JOBS / 40) / (JOBS / 10)
                for n, job_id in enumerate(jobs):
                    await bus.publish(JobRequested(job_id=job_id, op="draw", prompt=f"chaos {n}"))
                    if n % 10 == 9:
                        await anyio.sleep(pause)
                submitting = False

            ends: dict[str, list[Any]] = {}
            deadline = time.monotonic() + 300
            pending = list(jobs)
            while pending and time.monotonic() < deadline:
                still = []
                for job_id in pending:
                    events = [e for _, e in await bus.history(job_id)]
                    terminal = [e for e in events if isinstance(e, (JobCompleted, JobFailed))]
                    if terminal:
                        ends[job_id] = terminal
                    else:
                        still.append(job_id)
                pending = still
                if pending:
                    await anyio.sleep(0.5)
            await anyio.sleep(0.5)  # late duplicates on the done subject would arrive now
        finally:
            await done_sub.unsubscribe()
            for p in procs:
                p.stop()
            await bus.close()

    completed = sum(1 for t in ends.values() if isinstance(t[0], JobCompleted))
    failed = Counter(f.reason for t in ends.values() if isinstance(t[0], JobFailed) for f in t[0].failures)
    lost = len(jobs) - len(ends)
    duplicated_terminal = sum(len(t) - 1 for t in ends.values())
    duplicated_results = sum(1 for j in jobs if results.get(j, 0) > 1)
    missing_results = sum(1 for j in ends if results.get(j, 0) == 0)
    crashed_handlers = sum(len(p.events("handler_crashed")) for p in [*procs, *retired])
    print(
        f"\nactor chaos: submitted={len(jobs)} completed={completed} failed={len(ends) - completed} "
        f"{dict(failed)} lost={lost} duplicated={duplicated_terminal + duplicated_results} "
        f"kills survived={sum(kills.values())} {dict(kills)} upstream calls={len(upstream.requests)} "
        f"handler crashes={crashed_handlers}"
    )
    assert lost == 0, f"{lost} jobs never ended"
    assert duplicated_terminal == 0, "a job has two terminal events"
    assert duplicated_results == 0, "a requester received two results"
    assert missing_results == 0, "a requester subscribed to .done missed a result"
    assert completed == len(jobs), dict(failed)
    assert kills["router"] >= 2 and kills["openai_compat"] >= 2
