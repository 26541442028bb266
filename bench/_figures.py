"""The seven figures of issue 5, each measured beside its baseline in the same run.

Every figure returns a :class:`Figure`: rows of (metric, measured, target, baseline)
for the table, and ``data`` with the raw numbers for the JSON file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
import httpx

from aiimg.messages import (
    AttemptDispatched,
    AttemptFailed,
    AttemptSucceeded,
    BlobRef,
    JobCompleted,
    JobRequested,
)
from aiimg.services.app.client import Client
from aiimg.services.config import Config
from aiimg.services.infra.blobs import BlobStore
from aiimg.services.infra.bus import Bus
from aiimg.services.infra.http import upstream_client

from . import _hops
from ._env import KEY, ROOT, ActorProc, Env, cpu_seconds, openai_block, proc_status, reset_peak
from ._load import decode_reply

__all__ = ("FIGURES", "Figure", "Row")


@dataclass
class Row:
    metric: str
    value: float | None
    unit: str
    target: str = ""
    met: bool | None = None
    baseline: float | None = None
    baseline_label: str = ""
    note: str = ""


@dataclass
class Figure:
    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "rows": [asdict(r) for r in self.rows],
            "data": self.data,
            **({"error": self.error} if self.error else {}),
        }


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


async def _cpu_of(pids: dict[str, int], run: Callable[[], Awaitable[Any]]) -> tuple[Any, dict[str, float]]:
    """Run ``run()`` and return its result with the CPU seconds each process spent meanwhile."""
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    result = await run()
    return result, {k: round(cpu_seconds(p) - before[k], 3) for k, p in pids.items()}


async def _subprocess_json(*args: str, timeout: float = 240.0) -> dict[str, Any]:
    """Run ``python -m bench.<args>`` and parse the JSON it prints last."""
    cmd = [sys.executable, "-m", *args]

    def run() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=timeout, check=False)

    done = await anyio.to_thread.run_sync(run)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stderr.decode(errors='replace')[-800:]}")
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


async def _direct_call(http: httpx.AsyncClient, url: str, prompt: str) -> bytes:
    r = await http.post(
        url, json={"model": "gpt-image-1", "prompt": prompt}, headers={"Authorization": f"Bearer {KEY}"}
    )
    return decode_reply(r.content)


# ---- 1. overhead ------------------------------------------------------------------------


async def overhead(env: Env) -> Figure:
    fig = Figure(
        "overhead", "Overhead: job through the bus vs a direct call with the provider's httpx client (~1 MB PNG)"
    )
    s = env.sizes
    up = env.upstream("1mb")
    image_bytes = env.image("1mb").stat().st_size
    draw = {
        "provider": "openai_compat",
        "openai_compat": openai_block(f"{up.url}/lat/0/v1"),
        "gemini_openai": openai_block(f"{up.url}/lat/50/v1"),
    }
    config, path = env.config("overhead", draw)
    await env.actor(path, "router")
    await env.actor(path, "provider", "openai_compat,gemini_openai")
    plans = [(0, "openai_compat", s.overhead_jobs), (50, "gemini_openai", max(2, s.overhead_jobs // 2))]
    samples: dict[int, dict[str, list[float]]] = {lat: {"bus": [], "direct": []} for lat, _, _ in plans}
    job_ids: dict[int, list[str]] = {lat: [] for lat, _, _ in plans}
    ends: dict[str, float] = {}
    async with env.bus(config) as bus, upstream_client(Config(), 64) as http:
        client = Client(bus)
        for lat, alias, _ in plans:  # warm up connections, caches and both processes
            for i in range(3):
                await _direct_call(http, f"{up.url}/lat/{lat}/v1/images/generations", f"warm {i}")
                await client.result(await client.submit("draw", f"warm {lat} {i}", backend=alias), timeout=60)
        for lat, alias, n in plans:
            url = f"{up.url}/lat/{lat}/v1/images/generations"
            for i in range(n):
                t0 = time.perf_counter()
                data = await _direct_call(http, url, f"direct {lat} {i}")
                samples[lat]["direct"].append(time.perf_counter() - t0)
                assert len(data) == image_bytes
                t0 = time.perf_counter()
                job = await client.submit("draw", f"overhead {lat} {i}", backend=alias)
                end, data = await client.result(job, timeout=60)
                samples[lat]["bus"].append(time.perf_counter() - t0)
                ends[job] = time.time()
                assert len(data) == image_bytes and end.provider == alias
                job_ids[lat].append(job)
        breakdown = {lat: await _stages(bus, job_ids[lat], ends) for lat in job_ids}
    await env.stop_actors()
    floor = await _overhead_floor(env, config, env.image("1mb").read_bytes(), max(4, s.overhead_jobs // 4))
    for lat, _, n in plans:
        b, d = samples[lat]["bus"], samples[lat]["direct"]
        p50, p99 = pct(b, 0.5) - pct(d, 0.5), pct(b, 0.99) - pct(d, 0.99)
        fig.rows += [
            Row(f"{lat} ms upstream: overhead p50", ms(p50), "ms", "≤ 3 ms", ms(p50) <= 3, ms(pct(d, 0.5)),
                "direct p50", f"bus p50 {ms(pct(b, 0.5))} ms, ratio {pct(b, 0.5) / pct(d, 0.5):.2f}x, n={n}; "
                f"floor {floor['total_ms']} ms = blob put {floor['put_ms']} + get {floor['get_ms']} "
                f"+ four stored hops {floor['four_hops_ms']} (bare, one at a time)"),
            Row(f"{lat} ms upstream: overhead p99", ms(p99), "ms", "≤ 15 ms", ms(p99) <= 15, ms(pct(d, 0.99)),
                "direct p99", f"bus p99 {ms(pct(b, 0.99))} ms, ratio {pct(b, 0.99) / pct(d, 0.99):.2f}x"),
        ]  # fmt: skip
        fig.data[f"lat{lat}"] = {
            "n": n,
            "bus_ms": [ms(x) for x in b],
            "direct_ms": [ms(x) for x in d],
            "stages_ms_p50": breakdown[lat],
        }
    fig.data["image_bytes"] = image_bytes
    fig.data["floor_ms_p50"] = floor
    return fig


async def _overhead_floor(env: Env, config: Config, image: bytes, n: int) -> dict[str, float]:
    """What a job through the bus cannot avoid beyond the direct call, each part alone (p50):
    the image stored in and read from the blob store once, and four stored hops (request →
    router → dispatch → provider → result → router → completion → client) with bare nats-py."""
    puts: list[float] = []
    gets: list[float] = []
    async with env.bus(config) as bus:
        store = BlobStore(bus)
        for i in range(n + 3):
            data = i.to_bytes(8, "big") + image[8:]  # a new blob each time, the image's size
            t0 = time.perf_counter()
            ref = await store.put(data)
            t1 = time.perf_counter()
            await store.get(ref)
            t2 = time.perf_counter()
            if i >= 3:  # warm-up
                puts.append(t1 - t0)
                gets.append(t2 - t1)
    two_hops = await _two_stored_hops(env, n)
    put_ms, get_ms, hops_ms = ms(pct(puts, 0.5)), ms(pct(gets, 0.5)), ms(2 * pct(two_hops, 0.5))
    return {
        "put_ms": put_ms,
        "get_ms": get_ms,
        "four_hops_ms": hops_ms,
        "total_ms": round(put_ms + get_ms + hops_ms, 3),
    }


async def _stages(bus: Bus, job_ids: list[str], ends: dict[str, float]) -> dict[str, float]:
    """Median time of each hop, from the events' own timestamps (same machine clock)."""
    hops: dict[str, list[float]] = {
        "client→router dispatch": [],
        "dispatch→provider result (incl. upstream + blob put)": [],
        "provider elapsed_ms (upstream + decode + blob put)": [],
        "result→router completion": [],
        "completion→client has bytes (follow + blob get)": [],
    }
    for job in job_ids[-50:]:
        events = {type(e).__name__: e for _, e in await bus.history(job)}
        req, disp = events.get("JobRequested"), events.get("AttemptDispatched")
        ok, done = events.get("AttemptSucceeded"), events.get("JobCompleted")
        if not (isinstance(req, JobRequested) and isinstance(disp, AttemptDispatched)):
            continue
        if not (isinstance(ok, AttemptSucceeded) and isinstance(done, JobCompleted)):
            continue
        hops["client→router dispatch"].append(disp.at - req.at)
        hops["dispatch→provider result (incl. upstream + blob put)"].append(ok.at - disp.at)
        hops["provider elapsed_ms (upstream + decode + blob put)"].append(ok.elapsed_ms / 1000)
        hops["result→router completion"].append(done.at - ok.at)
        hops["completion→client has bytes (follow + blob get)"].append(ends[job] - done.at)
    return {k: ms(statistics.median(v)) for k, v in hops.items() if v}


# ---- 2. throughput ---------------------------------------------------------------------


async def throughput(env: Env) -> Figure:
    fig = Figure("throughput", "Throughput: instant upstream, 16 KB image, each actor in its own process")
    s = env.sizes
    up = env.upstream("16kb")
    _, path = env.config(
        "throughput", {"provider": "openai_compat", "openai_compat": openai_block(f"{up.url}/lat/0/v1")}
    )
    router = await env.actor(path, "router")
    first = await env.actor(path, "provider", "openai_compat")
    pids = {"router": router.pid, "provider-1": first.pid, "nats-server": _server_pid(env)}
    # Warm-up, so the first figure does not pay for imports and connection setup.
    await _subprocess_json("bench._load", "jobs", str(path), str(max(10, s.throughput_jobs // 20)))
    one, cpu1 = await _cpu_of(pids, lambda: _subprocess_json("bench._load", "jobs", str(path), str(s.throughput_jobs)))
    if env.profile_dir is not None:
        one_prof = await _profiled(env, {"router": router.pid, "provider": first.pid}, path, s.throughput_jobs)
        fig.data["profile"] = one_prof
    second = await env.actor(path, "provider", "openai_compat")
    pids["provider-2"] = second.pid
    two, cpu2 = await _cpu_of(pids, lambda: _subprocess_json("bench._load", "jobs", str(path), str(s.throughput_jobs)))
    await env.stop_actors()
    direct_url = f"{up.url}/lat/0/v1/images/generations"
    base = await _subprocess_json("bench._load", "direct", direct_url, str(s.throughput_jobs))
    plain = await _subprocess_json("bench._load", "direct", direct_url, str(s.throughput_jobs), "--plain")
    for label, res, cpu in (("1 provider replica", one, cpu1), ("2 provider replicas", two, cpu2)):
        ok = res["completed"] == res["jobs"]
        per_job = {k: round(v / max(1, res["jobs"]) * 1000, 3) for k, v in cpu.items()}
        fig.rows.append(
            Row(f"{label}: sustained jobs/s", round(res["steady_rate"], 1), "jobs/s", "≥ 1,000",
                res["steady_rate"] >= 1000 and ok, round(base["rate"], 1),
                "direct calls/s, provider's httpx client, 64 in flight",
                f"sustained = completions 10th→90th percentile; whole run incl. ramp-up {res['rate']:.0f}/s; "
                f"{res['completed']}/{res['jobs']} done; CPU ms/job {per_job}; "
                f"httpx's own transport direct: {plain['rate']:.0f} calls/s")
        )  # fmt: skip
    fig.data.update(
        {"one_replica": one, "two_replicas": two, "cpu_s_one": cpu1, "cpu_s_two": cpu2, "direct": base, "plain": plain}
    )
    return fig


def _server_pid(env: Env) -> int:
    proc = env.server._proc  # the embedded server's child process
    assert proc is not None
    return proc.pid


async def _profiled(env: Env, pids: dict[str, int], config_path: Any, n: int) -> dict[str, str]:
    """Run one more load with py-spy recording each actor; return the profile files."""
    assert env.profile_dir is not None
    env.profile_dir.mkdir(parents=True, exist_ok=True)
    spies = []
    out: dict[str, str] = {}
    for name, pid in pids.items():
        target = env.profile_dir / f"{name}.txt"
        spies.append(
            subprocess.Popen(  # noqa: ASYNC220 - returns at once; py-spy runs beside us
                [os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "--pid", str(pid), "--rate", "250",
                 "--format", "raw", "--output", str(target), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        out[name] = str(target)
    await anyio.sleep(1.0)
    await _subprocess_json("bench._load", "jobs", str(config_path), str(n))
    for spy in spies:
        spy.send_signal(2)
    for spy in spies:
        await anyio.to_thread.run_sync(functools.partial(spy.wait, timeout=30))
    return out


# ---- 3. concurrency ----------------------------------------------------------------------


async def concurrency(env: Env) -> Figure:
    s = env.sizes
    lat = s.concurrency_latency_ms
    fig = Figure("concurrency", f"Concurrency: {s.concurrency_jobs} jobs at once, upstream takes {lat / 1000:g} s")
    up = env.upstream("16kb")
    draw = {"provider": "openai_compat", "openai_compat": openai_block(f"{up.url}/lat/{lat}/v1")}
    _, path = env.config("concurrency", draw, actors={"concurrency": s.concurrency_jobs})
    await env.actor(path, "router")
    await env.actor(path, "provider", "openai_compat")
    load = ("bench._load", "jobs", str(path), str(s.concurrency_jobs), "--submitters", "100")
    await up.reset()
    as_shipped = await _subprocess_json(*load)
    await env.stop_actors()
    # Where the time goes, on the upstream's clock (time.monotonic, shared by every process).
    t0 = as_shipped["started_monotonic"]
    log = await up.log()
    arrived = sorted(t - t0 for kind, t, *_ in log if kind == "recv")
    replied = sorted(t - t0 for kind, t, *_ in log if kind == "sent")
    phases = {
        "last request reached the upstream (s)": round(arrived[-1], 3) if arrived else None,
        "last reply sent (s)": round(replied[-1], 3) if replied else None,
        "last job done (s)": round(as_shipped["wall_s"], 3),
    }
    direct_args = ("bench._load", "direct", f"{up.url}/lat/{lat}/v1/images/generations", str(s.concurrency_jobs),
                   "--concurrency", str(s.concurrency_jobs))  # fmt: skip
    direct = await _subprocess_json(*direct_args)
    plain = await _subprocess_json(*direct_args, "--plain")
    limit = lat / 1000 * 1.25
    for label, res in (("provider actor", as_shipped),):
        fig.rows.append(
            Row(f"{label}: wall", round(res["wall_s"], 3), "s", f"≤ {limit:g} s",
                res["wall_s"] <= limit and res["completed"] == res["jobs"], round(direct["wall_s"], 3),
                "direct, provider's httpx client, all at once",
                f"{res['completed']}/{res['jobs']} done; submit took {res['submit_s']:.2f} s; "
                f"last request at the upstream {phases['last request reached the upstream (s)']} s, "
                f"last reply sent {phases['last reply sent (s)']} s; "
                f"httpx's own transport (sharded pools) direct: {plain['wall_s']:.2f} s")
        )  # fmt: skip
    fig.data.update({"as_shipped": as_shipped, "direct": direct, "plain": plain, "latency_ms": lat, "phases": phases})
    return fig


# ---- 4. failover -----------------------------------------------------------------------------


async def failover(env: Env) -> Figure:
    fig = Figure("failover", "Failover: primary's error response → fallback upstream receives the request")
    s = env.sizes
    up = env.upstream("16kb")
    draw = {
        "provider": "openai_compat",
        "fallback_1": "gemini_openai",
        "openai_compat": openai_block(f"{up.url}/policy/v1"),
        "gemini_openai": openai_block(f"{up.url}/lat/0/v1"),
    }
    config, path = env.config("failover", draw)
    await env.actor(path, "router")
    await env.actor(path, "provider", "openai_compat")
    await env.actor(path, "provider", "gemini_openai")
    jobs: list[str] = []
    async with env.bus(config) as bus, upstream_client(Config(), 64) as http:
        client = Client(bus)
        for i in range(3):
            await client.wait(await client.submit("draw", f"warm {i}"), timeout=60)
        await up.reset()
        for i in range(s.failover_jobs):
            job = await client.submit("draw", f"failover {i}")
            end = await client.wait(job, timeout=60)
            assert isinstance(end, JobCompleted) and end.provider == "gemini_openai", end
            jobs.append(job)
            # The physical floor: a client that falls back by itself on the error.
            r = await http.post(f"{up.url}/policy/v1/images/generations", json={"prompt": f"direct {i}"})
            assert r.status_code == 400
            await _direct_call(http, f"{up.url}/lat/0/v1/images/generations", f"direct {i}")
        log = await up.log()
        sent = {prompt: (t, wall) for kind, t, wall, p, prompt in log if kind == "sent" and "/policy/" in p}
        recv = {prompt: (t, wall) for kind, t, wall, p, prompt in log if kind == "recv" and "/lat/0/" in p}
        hops: dict[str, list[float]] = {
            "error sent → provider wrote AttemptFailed": [],
            "AttemptFailed → router wrote dispatch #2": [],
            "dispatch #2 → fallback upstream got the request": [],
        }
        for i, job in enumerate(jobs[-50:], start=max(0, len(jobs) - 50)):
            events = [e for _, e in await bus.history(job)]
            failed = next((e for e in events if isinstance(e, AttemptFailed)), None)
            second = next((e for e in events if isinstance(e, AttemptDispatched) and e.attempt == 2), None)
            if failed is None or second is None:
                continue
            hops["error sent → provider wrote AttemptFailed"].append(failed.at - sent[f"failover {i}"][1])
            hops["AttemptFailed → router wrote dispatch #2"].append(second.at - failed.at)
            hops["dispatch #2 → fallback upstream got the request"].append(recv[f"failover {i}"][1] - second.at)
    await env.stop_actors()
    stored = await _two_stored_hops(env, s.failover_jobs)
    bus_gaps = [recv[f"failover {i}"][0] - sent[f"failover {i}"][0] for i in range(s.failover_jobs)]
    direct_gaps = [recv[f"direct {i}"][0] - sent[f"direct {i}"][0] for i in range(s.failover_jobs)]
    fig.data["hops_ms_p50"] = {k: ms(statistics.median(v)) for k, v in hops.items() if v}
    for q, target, limit in ((0.5, "≤ 2 ms", 2.0), (0.99, "≤ 10 ms", 10.0)):
        value = ms(pct(bus_gaps, q))
        floor = ms(pct(direct_gaps, q) + pct(stored, q))
        fig.rows.append(
            Row(f"gap p{round(q * 100)}", value, "ms", target, value <= limit, ms(pct(direct_gaps, q)),
                "client falling back by itself",
                f"n={len(bus_gaps)}; two stored hops, bare nats-py: {ms(pct(stored, q))} ms; "
                f"floor (direct + those hops): {floor} ms")
        )  # fmt: skip
    fig.data.update(
        {
            "bus_ms": [ms(x) for x in bus_gaps],
            "direct_ms": [ms(x) for x in direct_gaps],
            "two_stored_hops_ms": [ms(x) for x in stored],
        }
    )
    return fig


async def breaker(env: Env) -> Figure:
    """A primary whose key was revoked (401 after 300 ms, as a remote API takes to refuse it):
    the same draws with the circuit breaker off (threshold out of reach) and on (default 3)."""
    fig = Figure("breaker", "Dead primary: what each draw pays with the breaker off and on")
    up = env.upstream("16kb")
    n = env.sizes.breaker_jobs
    runs: dict[str, dict[str, Any]] = {}
    for label, threshold in (("off", 10**9), ("on", 3)):
        draw = {
            "provider": "openai_compat",
            "fallback_1": "gemini_openai",
            "openai_compat": openai_block(f"{up.url}/dead/lat/300/v1"),
            "gemini_openai": openai_block(f"{up.url}/lat/0/v1"),
        }
        config, path = env.config(f"breaker-{label}", draw, policy={"breaker_threshold": threshold})
        await env.actor(path, "router")
        await env.actor(path, "provider", "openai_compat")
        await env.actor(path, "provider", "gemini_openai")
        async with env.bus(config) as bus:
            client = Client(bus)
            await up.reset()
            took: list[float] = []
            for i in range(n):
                t0 = time.monotonic()
                end = await client.wait(await client.submit("draw", f"breaker {label} {i}"), timeout=60)
                took.append(time.monotonic() - t0)
                assert isinstance(end, JobCompleted) and end.provider == "gemini_openai", end
            log = await up.log()
        await env.stop_actors()
        dead_calls = sum(1 for kind, _, _, p, _ in log if kind == "recv" and "/dead/" in p)
        runs[label] = {"ms": [ms(x) for x in took], "dead_calls": dead_calls}
    off, on = runs["off"], runs["on"]
    p50_on, p50_off = pct(on["ms"], 0.5), pct(off["ms"], 0.5)
    fig.rows.append(
        Row("draw p50, breaker on", p50_on, "ms", "≤ ½ breaker off", p50_on <= p50_off / 2, p50_off,
            "breaker off", f"n={n} sequential draws each; the dead upstream answers after 300 ms")
    )  # fmt: skip
    p99_on, p99_off = pct(on["ms"], 0.99), pct(off["ms"], 0.99)
    fig.rows.append(
        Row("draw p99, breaker on", p99_on, "ms", "≤ breaker off", p99_on <= p99_off * 1.1, p99_off,
            "breaker off", "the draws that tripped it pay the dead call, as without")
    )  # fmt: skip
    fig.rows.append(
        Row("calls to the dead upstream, breaker on", on["dead_calls"], "calls", "≤ threshold", on["dead_calls"] <= 3,
            off["dead_calls"], "breaker off", "policy.breaker_threshold = 3, cool-down 60 s")
    )  # fmt: skip
    fig.data.update(runs)
    return fig


async def _two_stored_hops(env: Env, n: int) -> list[float]:
    """The floor of the bus part of a failover: two JetStream hops with bare nats-py (``bench._hops``)."""
    prefix = f"hops{uuid.uuid4().hex[:6]}"
    await _hops.ensure(env.url, prefix)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for role in ("relay", "sink"):
            proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once; the ready line is read in a thread
                [sys.executable, "-m", "bench._hops", role, env.url, prefix],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            procs.append(proc)
            assert proc.stdout is not None
            with anyio.fail_after(60):
                await anyio.to_thread.run_sync(proc.stdout.readline)
        await _hops.measure(env.url, prefix, 10)  # warm up
        return await _hops.measure(env.url, prefix, n)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


# ---- 5. blob path ---------------------------------------------------------------------------


async def blobs(env: Env) -> Figure:
    s = env.sizes
    mb = s.blob_bytes / 1e6
    fig = Figure("blobs", f"Blob path: {s.blob_bytes >> 20} MB put/get, BlobStore vs nats-py ObjectStore")
    config, _ = env.config("blobs", {"provider": "local"})
    rates: dict[str, list[float]] = {"put": [], "get": [], "natspy_put": [], "natspy_get": []}
    async with env.bus(config) as bus:
        store = BlobStore(bus)
        native = await bus.js.object_store(bus.names.blob_bucket)
        base = os.urandom(s.blob_bytes)
        for rep in range(s.blob_reps + 1):  # rep 0 warms up both paths
            data = rep.to_bytes(8, "big") + base[8:]
            t0 = time.perf_counter()
            ref = await store.put(data)
            t1 = time.perf_counter()
            got = await store.get(ref)
            t2 = time.perf_counter()
            assert got == data
            del got
            name = f"natspy-{rep}"
            t3 = time.perf_counter()
            await native.put(name, data)
            t4 = time.perf_counter()
            result = await native.get(name)
            t5 = time.perf_counter()
            assert result.data == data
            del result
            if rep:
                rates["put"].append(mb / (t1 - t0))
                rates["get"].append(mb / (t2 - t1))
                rates["natspy_put"].append(mb / (t4 - t3))
                rates["natspy_get"].append(mb / (t5 - t4))
        floors = await _blob_floors(bus, store, ref, base)
    fig.data["floors_MBps"] = floors
    for way in ("put", "get"):
        value = round(statistics.median(rates[way]), 1)
        base_rate = round(statistics.median(rates[f"natspy_{way}"]), 1)
        fig.rows.append(
            Row(f"{way} MB/s (median of {s.blob_reps})", value, "MB/s", "≥ 500", value >= 500, base_rate,
                "nats-py ObjectStore (the old BlobStore)",
                f"{value / base_rate:.1f}x nats-py; floors here: " + ", ".join(f"{k} {v:.0f}" for k, v in floors.items()))
        )  # fmt: skip
    fig.data.update({k: [round(x, 1) for x in v] for k, v in rates.items()})
    fig.data["bytes"] = s.blob_bytes
    return fig


async def _blob_floors(bus: Bus, store: BlobStore, ref: BlobRef, data: bytes) -> dict[str, float]:
    """MB/s of the parts a get cannot avoid, on this machine, in this run.

    ``receive``: the same chunks fetched with one batched direct get through nats-py and
    thrown away (no hash, no assembly); ``sha256``: hashing the blob; ``assemble``: joining
    chunk-sized pieces into one ``bytes``. A get does all three, so its rate is bounded by
    1 / (1/receive + 1/assemble) even with the hash fully overlapped.
    """
    mb = len(data) / 1e6
    info = await store._info(ref.bucket, ref.name)
    assert info is not None
    nc = bus.nc
    best = float("inf")
    for _ in range(3):
        done = anyio.Event()

        async def on_msg(msg: Any, done: anyio.Event = done) -> None:
            if msg.headers and msg.headers.get("Status") and not msg.data:
                done.set()

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=0, pending_bytes_limit=0)
        t0 = time.perf_counter()
        request = {"seq": 1, "next_by_subj": f"$O.{ref.bucket}.C.{info.nuid}", "batch": info.chunks}
        await nc.publish(f"$JS.API.DIRECT.GET.OBJ_{ref.bucket}", json.dumps(request).encode(), reply=inbox)
        await done.wait()
        best = min(best, time.perf_counter() - t0)
        await sub.unsubscribe()
    t0 = time.perf_counter()
    hashlib.sha256(data).digest()
    sha = time.perf_counter() - t0
    size = max(1, info.options.max_chunk_size if info.options else 262144)
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    t0 = time.perf_counter()
    joined = b"".join(pieces)
    join = time.perf_counter() - t0
    del joined, pieces
    return {"receive": round(mb / best, 1), "sha256": round(mb / sha, 1), "assemble": round(mb / join, 1)}


# ---- 6. memory ------------------------------------------------------------------------------


async def memory(env: Env) -> Figure:
    s = env.sizes
    fig = Figure("memory", f"Memory: provider actor handling a {s.memory_edge}x{s.memory_edge} b64_json reply")
    up = env.upstream("4k")
    image_bytes = env.image("4k").stat().st_size
    draw = {"provider": "openai_compat", "openai_compat": openai_block(f"{up.url}/lat/0/v1", timeout=120.0)}
    config, path = env.config("memory", draw)
    await env.actor(path, "router")
    results: dict[str, list[dict[str, int]]] = {}
    async with env.bus(config) as bus:
        client = Client(bus)
        for impl in ("real", "bench"):
            actor = await env.actor(path, "provider", "openai_compat", "--impl", impl)
            results[impl] = [await _peak_of_job(client, actor, i) for i in range(2)]
            await actor.stop()
    await env.stop_actors()
    direct = await _subprocess_json("bench._load", "direct-memory", f"{up.url}/lat/0/v1/images/generations")
    base_ratio = round(direct["above_idle"] / image_bytes, 2)
    for impl, label in (("real", "openai_compat provider"), ("bench", "bench provider (no body copies)")):
        runs = results[impl]
        worst = max(r["above_idle"] for r in runs)
        ratio = round(worst / image_bytes, 2)
        fig.rows.append(
            Row(f"{label}: peak RSS above idle / image", ratio, "x", "≤ 3x", ratio <= 3, base_ratio,
                "direct httpx + json + b64decode",
                f"{worst / 1e6:.0f} MB above idle for a {image_bytes / 1e6:.1f} MB image; per job "
                + ", ".join(f"{r['above_idle'] / 1e6:.0f} MB" for r in runs))
        )  # fmt: skip
    fig.data.update({"image_bytes": image_bytes, "runs": results, "direct": direct})
    return fig


async def _peak_of_job(client: Client, actor: ActorProc, i: int) -> dict[str, int]:
    await anyio.sleep(0.3)
    idle = proc_status(actor.pid)["VmRSS"]
    if not reset_peak(actor.pid):
        raise RuntimeError("cannot reset VmHWM (/proc/<pid>/clear_refs not writable)")
    end = await client.wait(await client.submit("draw", f"memory {i}"), timeout=120)
    assert isinstance(end, JobCompleted), end
    peak = proc_status(actor.pid)["VmHWM"]
    return {"idle_rss": idle, "peak_rss": peak, "above_idle": peak - idle}


# ---- 7. recovery ---------------------------------------------------------------------------


async def recovery(env: Env) -> Figure:
    s = env.sizes
    fig = Figure(
        "recovery",
        f"Recovery: router restart with {s.recovery_finished:,} finished + {s.recovery_inflight} in-flight jobs",
    )
    up = env.upstream("16kb")
    runs = {}
    for finished in (0, s.recovery_finished):
        runs[finished] = await _recover(env, up.url, finished, s.recovery_inflight)
    empty, full = runs[0], runs[s.recovery_finished]
    for key, label in (("ready_to_all_s", "router ready → all in-flight progressed"),
                       ("spawn_to_all_s", "process spawn → all in-flight progressed")):  # fmt: skip
        value = round(full[key], 3)
        fig.rows.append(
            Row(label, value, "s", "≤ 1 s", value <= 1.0, round(empty[key], 3), "same with an empty history",
                f"first progress {full['ready_to_first_s']:.3f} s after ready; history {full['history_events']:,} events")
        )  # fmt: skip
    fig.data.update({"empty_history": empty, "full_history": full})
    return fig


async def _recover(env: Env, upstream: str, finished: int, inflight: int) -> dict[str, Any]:
    draw = {"provider": "openai_compat", "openai_compat": openai_block(f"{upstream}/lat/300/v1")}
    config, path = env.config(f"recovery-{finished}", draw)
    async with env.bus(config) as bus:
        events = await _synthesize_history(bus, finished)
        for durable in (bus.names.router_consumer, bus.names.provider_consumer("openai_compat")):
            await _ack_everything(bus, durable)
        seen: dict[str, set[str]] = {"dispatch": set(), "attempt": set(), "done": set()}
        times: dict[str, list[float]] = {"done": []}

        def counter(kind: str) -> Callable[[Any], Awaitable[None]]:
            async def cb(msg: Any) -> None:
                seen[kind].add(bus.names.job_id_of(msg.subject))
                if kind == "done":
                    times["done"].append(time.monotonic())

            return cb

        subs = [
            await bus.nc.subscribe(bus.names.subject("dispatch"), cb=counter("dispatch")),
            await bus.nc.subscribe(bus.names.subject("attempt"), cb=counter("attempt")),
            await bus.nc.subscribe(bus.names.subject("done"), cb=counter("done")),
        ]
        router = await env.actor(path, "router")
        await env.actor(path, "provider", "openai_compat")
        client = Client(bus)
        jobs = [await client.submit("draw", f"inflight {i}") for i in range(inflight)]
        await _until(lambda: seen["dispatch"] >= set(jobs), 60, "jobs dispatched")
        router.kill()  # SIGKILL: no goodbye, its unacked messages stay with the server
        await _until(lambda: seen["attempt"] >= set(jobs), 60, "attempt results while the router is down")
        assert not seen["done"] & set(jobs), "a job completed without a router"
        times["done"].clear()
        restarted = await env.actor(path, "router")
        await _until(lambda: seen["done"] >= set(jobs), 60, "jobs completed after the restart")
        for sub in subs:
            await sub.unsubscribe()
        completed = 0
        for job in jobs[:5]:
            history = await bus.history(job)
            completed += isinstance(history[-1][1], JobCompleted)
    await env.stop_actors()
    last = max(times["done"])
    first = min(times["done"])
    return {
        "finished_jobs": finished,
        "history_events": events,
        "inflight": inflight,
        "spawn_to_ready_s": restarted.ready - restarted.spawned,
        "ready_to_first_s": first - restarted.ready,
        "ready_to_all_s": last - restarted.ready,
        "spawn_to_all_s": last - restarted.spawned,
        "checked_completed": completed,
    }


async def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    with anyio.move_on_after(timeout) as scope:
        while not condition():
            await anyio.sleep(0.002)
    if scope.cancelled_caught:
        raise RuntimeError(f"timed out waiting for {what}")


async def _synthesize_history(bus: Bus, jobs: int) -> int:
    """``jobs`` finished jobs (requested → dispatched → succeeded → completed) in the stream."""
    if not jobs:
        return 0
    blob = await BlobStore(bus).put(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    ref = BlobRef(name=blob.name, size=blob.size, sha256=blob.sha256, mime="image/png", bucket=blob.bucket)
    now = time.time() - 60
    run = os.urandom(3).hex()
    count = 0

    async def publish_job(i: int) -> None:
        nonlocal count
        jid = f"hist{run}-{i:06d}"
        await bus.publish(JobRequested(job_id=jid, at=now, op="draw", prompt="history"))
        await bus.publish(
            AttemptDispatched(job_id=jid, at=now, attempt=1, provider="openai_compat", op="draw", prompt="history",
                              chain=["openai_compat"], deadline=now + 75)
        )  # fmt: skip
        await bus.publish(
            AttemptSucceeded(job_id=jid, at=now, attempt=1, provider="openai_compat", result=ref, elapsed_ms=5)
        )
        await bus.publish(JobCompleted(job_id=jid, at=now, result=ref, provider="openai_compat", attempt=1))
        count += 4

    batch = 250
    for start in range(0, jobs, batch):
        async with anyio.create_task_group() as tg:
            for i in range(start, min(jobs, start + batch)):
                tg.start_soon(publish_job, i)
    return count


async def _ack_everything(bus: Bus, durable: str) -> None:
    """Bring a durable consumer to where a live actor would be after finishing those jobs."""
    sub = await bus.js.pull_subscribe_bind(durable, stream=bus.names.jobs_stream)
    try:
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=0.5)
            except Exception:  # nats-py raises its TimeoutError when nothing is left
                break
            for msg in msgs:
                await msg.ack()
        await bus.nc.flush()
    finally:
        await sub.unsubscribe()


FIGURES: dict[str, Callable[[Env], Awaitable[Figure]]] = {
    "overhead": overhead,
    "throughput": throughput,
    "concurrency": concurrency,
    "failover": failover,
    "breaker": breaker,
    "blobs": blobs,
    "memory": memory,
    "recovery": recovery,
}
"""Every figure, in the order the suite runs them."""
