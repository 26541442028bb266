"""``aiimg``: serve the actors, submit draw/edit/video jobs, and trace a job's history."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import anyio
import msgspec

from ...messages import (
    AttemptDispatched,
    AttemptFailed,
    AttemptSucceeded,
    CancelRequested,
    JobCancelled,
    JobCompleted,
    JobEvent,
    JobFailed,
    JobRejected,
    JobRequested,
    Operation,
)
from ..config import Config, load_config
from ..domain.errors import AiimgError, JobError
from ..infra.logging import configure_logging, redact
from .client import Client
from .stack import Stack, open_bus, running
from .status import collect_status, format_status

__all__ = ("main",)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aiimg", description="Event-sourced image and video generation on NATS.")
    p.add_argument("--config", "-c", help="TOML config file (default: $AIIMG_CONFIG or ./aiimg.toml)")
    p.add_argument("--verbose", "-v", action="store_true", help="log at info level to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the router and provider actors")
    s.add_argument("--only", help="comma-separated subset: router,local,grok,…")

    for name, help_ in (("draw", "text to image"), ("edit", "edit images"), ("video", "image to video")):
        c = sub.add_parser(name, help=help_)
        c.add_argument("prompt")
        c.add_argument("-i", "--image", action="append", default=[], help="input image file (repeatable)")
        c.add_argument("--backend", default="", help="provider to try first (fallbacks still follow)")
        c.add_argument("--output", default="", help="4K | 2K | 1K | WxH | ratio such as 16:9")
        c.add_argument("-o", "--out", dest="out", help="file to write (default: aiimg-<job>.png/.mp4)")
        c.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the result")

    t = sub.add_parser("trace", help="print a job's event history")
    t.add_argument("job_id")

    k = sub.add_parser("cancel", help="cancel a running job")
    k.add_argument("job_id")

    st = sub.add_parser("status", help="each provider's breakers, backlog and recent failures")
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except AiimgError as exc:
        print(f"aiimg: {redact(str(exc))}", file=sys.stderr)
        return 2
    quiet_client = args.command != "serve" and not args.verbose
    configure_logging("warning" if quiet_client else config.log.level, config.log.format)
    try:
        return anyio.run(_dispatch, args, config)
    except KeyboardInterrupt:
        return 130
    except AiimgError as exc:
        print(f"aiimg: {redact(str(exc))}", file=sys.stderr)
        return 1


async def _dispatch(args: argparse.Namespace, config: Config) -> int:
    if args.command == "serve":
        return await _serve(config, args.only)
    if args.command == "trace":
        return await _trace(config, args.job_id)
    if args.command == "status":
        async with open_bus(config) as bus:
            status = await collect_status(bus, config)
        if args.json:
            print(msgspec.json.encode(status).decode())
        else:
            for line in format_status(status):
                print(redact(line))
        return 0
    if args.command == "cancel":
        async with open_bus(config) as bus:
            await Client(bus).cancel(args.job_id, "cancelled from the command line")
        print(f"cancel requested for {args.job_id}", file=sys.stderr)
        return 0
    return await _job(config, args)


async def _serve(config: Config, only: str | None) -> int:
    async with open_bus(config, announce=True) as bus:
        stack = Stack.from_only(bus, only.split(",") if only else None)
        async with anyio.create_task_group() as tg:
            await tg.start(stack.run)
            served = bus.nc.connected_url.geturl() if bus.nc.connected_url else "?"
            print(f"aiimg serving on {redact(served)}", file=sys.stderr)  # the URL may hold user:password
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    print("aiimg: stopping (finishing running jobs)…", file=sys.stderr)
                    await stack.stop()
                    break
    return 0


async def _job(config: Config, args: argparse.Namespace) -> int:
    op: Operation = args.command
    images: list[bytes] = []
    for path in args.image:
        try:
            images.append(await anyio.Path(path).read_bytes())
        except OSError as exc:
            raise AiimgError(f"cannot read input image {path}: {exc.strerror}") from None
    async with open_bus(config) as bus:
        client = Client(bus)
        if bus.embedded_here:  # no service to talk to: run the actors for this command
            async with running(Stack(bus)):
                return await _submit_and_wait(client, op, args, images)
        return await _submit_and_wait(client, op, args, images)


async def _submit_and_wait(client: Client, op: Operation, args: argparse.Namespace, images: list[bytes]) -> int:
    job_id = await client.submit(op, args.prompt, images=images, backend=args.backend, output=args.output)
    _progress(f"job {job_id} queued")
    started = time.monotonic()
    end: JobEvent | None = None
    with anyio.fail_after(args.timeout):
        async for event in client.follow(job_id):
            _show(event, started)
            if isinstance(event, (JobCompleted, JobFailed, JobCancelled, JobRejected)):
                end = event
                break
    if isinstance(end, JobCompleted):
        data = await client.blobs.get(end.result)
        ext = _EXTENSIONS.get(end.result.mime, "bin")
        out = anyio.Path(args.out or f"aiimg-{job_id}.{ext}")
        await out.write_bytes(data)
        print(str(out))
        return 0
    if isinstance(end, (JobFailed, JobCancelled, JobRejected)):
        print(f"aiimg: {redact(str(JobError(end)))}", file=sys.stderr)
    return 1


_EXTENSIONS = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/gif": "gif",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/quicktime": "mov",
}


def _progress(text: str) -> None:
    print(f"aiimg: {redact(text)}", file=sys.stderr, flush=True)


def _show(event: JobEvent, started: float) -> None:
    t = f"{time.monotonic() - started:6.2f}s"
    match event:
        case AttemptDispatched():
            wait = f" (retry in {event.not_before - event.at:.1f}s)" if event.not_before > event.at else ""
            _progress(f"{t} attempt {event.attempt} → {event.provider}{wait}")
        case AttemptFailed():
            _progress(f"{t} attempt {event.attempt} {event.provider} failed: {event.reason} {event.message}".rstrip())
        case AttemptSucceeded():
            r = event.result
            what = f"{r.width}x{r.height}" if r.width else f"{r.mime}, {r.size // 1024} KiB"
            _progress(f"{t} attempt {event.attempt} {event.provider} done ({what})")
        case JobCompleted():
            _progress(f"{t} done")
        case _:
            pass


async def _trace(config: Config, job_id: str) -> int:
    async with open_bus(config) as bus:
        job = await bus.read_job(job_id)
    if not job.entries:
        print(f"aiimg: no events for job {job_id} (unknown, or expired by retention)", file=sys.stderr)
        return 1
    for line in format_trace([(e.writer, e.event) for e in job.entries]):
        print(redact(line))  # events written before secrets were screened may still hold one
    return 0


def format_trace(entries: Sequence[JobEvent | tuple[str, JobEvent]]) -> list[str]:
    """One line per event: time, event, provider (or requesting client), reason/detail."""
    pairs = [entry if isinstance(entry, tuple) else ("", entry) for entry in entries]
    lines = []
    t0 = pairs[0][1].at if pairs else 0.0
    for writer, e in pairs:
        stamp = datetime.fromtimestamp(e.at, tz=UTC).strftime("%H:%M:%S.%f")[:-3]
        rel = f"+{e.at - t0:.3f}s".rjust(9)
        tag = e.__struct_config__.tag
        provider = getattr(e, "provider", "") or ""
        detail = ""
        match e:
            case JobRequested():
                provider = writer
                detail = (
                    f"op={e.op} backend={e.backend or 'auto'} output={e.output or 'default'} prompt={e.prompt[:60]!r}"
                )
            case AttemptDispatched():
                detail = f"attempt={e.attempt} chain={','.join(e.chain)}"
                if e.not_before > e.at:
                    detail += f" delay={e.not_before - e.at:.1f}s"
                detail += "".join(f" | skipped {k}: {v}" for k, v in e.skipped.items())
            case AttemptSucceeded():
                detail = f"attempt={e.attempt} {e.result.mime} {e.result.width}x{e.result.height} {e.result.size}B {e.elapsed_ms}ms"
            case AttemptFailed():
                detail = f"attempt={e.attempt} reason={e.reason} {e.message}".rstrip()
            case JobCompleted():
                detail = f"result={e.result.name}"
            case JobFailed():
                detail = e.message + "".join(f" | {f.provider}: {f.reason}" for f in e.failures)
            case JobCancelled() | CancelRequested():
                detail = e.reason
            case JobRejected():
                detail = f"reason={e.reason} {e.message}".rstrip()
        lines.append(f"{stamp} {rel}  {tag:<22} {provider:<14} {detail}".rstrip())
    return lines


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
