"""What each command does, from the chat event to the bus and back.

The :class:`Bridge` translates only: it parses the command (``commands``), reads the
input images (``images``), paces the user (``feedback``), submits a job with
``services.app.client`` / ``services.app.selfie``, and sends the result (``sending``) when its
terminal event arrives. Provider choice, retries, fallbacks and size handling all happen
in the router and the providers, configured by the same settings.

Terminal events come from this client's durable results consumer (``delivery``): to the
handler still waiting for the job in this process if there is one (registered before the
job is submitted), else straight to the chat session stored in the job's request — so a
result that finishes while the plugin is reloading or AstrBot is restarting arrives once
it is back. A result is acked only after the chat got it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from astrbot.api import logger
from astrbot.api import message_components as Comp
from astrbot.api.event import MessageChain

from ..messages import (
    BlobRef,
    DecodeError,
    JobCompleted,
    JobRequested,
    Operation,
    TerminalEvent,
    decode_event,
    placed,
)
from ..services.app.client import Client, new_job_id
from ..services.app.selfie import submit_selfie, webui_references
from ..services.config import Config
from ..services.domain.errors import AiimgError, SelfieError
from ..services.infra.delivery import Delivery
from ..services.infra.retry import Backoff
from ..services.providers._common import download
from . import texts
from .commands import Request, find_command, parse, resolve_tool_mode, valid_output
from .delivery import LastResults, Stopped, Waiter, Waiters
from .feedback import FAILED, PROCESSING, SUCCEEDED, Debouncer, UserSlots, react
from .images import AVATAR_URL, collect_images
from .runtime import BusRuntime, wait_budget
from .sending import ResultCache, Sink, limits_for, send_image, send_text, send_video

__all__ = ("DELIVER_RETRY", "Bridge", "event_sink", "proactive_sink", "proactive_target")

HANDLED = "aiimg_handled"
"""Event extra set once a handler of this plugin took the message (the fallback then stays out)."""

REF_SHOW_LIMIT = 5

VIDEO_FRAME_OUTPUT = "16:9 1K"
"""Size of the start frame the video tool draws when the message has no image: video-shaped,
and small enough to send to the video API as a data URL."""

DELIVER_RETRY = Backoff(5.0, cap=300.0, tries=8)
"""A result nobody in this process waits for, that could not reach its chat (the platform not
loaded or not connected yet, a send refused), comes back after 5 s, doubling, at most 5 min;
after 8 tries (about 10 minutes) it is logged once and dropped."""

HANDOVER_PROGRESS = 30.0
"""While a live handler sends a result, its message's ack deadline is renewed this often."""

STOP_DRAIN = 10.0
"""Seconds a stopping plugin lets LLM-tool deliveries that are sending finish."""

THEN = "then"
"""Request origin key naming what the bridge does with the result next (``"video"``: animate
the drawn start frame), so that a start that receives the result in place of the handler that
asked (a plugin reload in between) goes on with it (see ``Bridge._deliver_later``)."""

_TERMINAL = (
    "job.completed.v1",
    "job.failed.v1",
    "job.cancelled.v1",
    "job.rejected.v1",
)


def event_sink(event: Any) -> Sink:
    """Send within the handler, through the event's own platform."""
    send: Sink = event.send
    return send


def proactive_sink(context: Any, session: str) -> Sink:
    """Send later, to the chat ``session`` (unified_msg_origin), e.g. after an LLM tool returned."""

    async def send(chain: MessageChain) -> None:
        if not await context.send_message(session, chain):
            raise RuntimeError("no platform adapter for this chat")

    return send


def proactive_target(context: Any, session: str) -> Sink | None:
    """A sink to chat ``session``, or None while no loaded platform adapter serves it (AstrBot
    loads plugins before platforms; an adapter may be disabled, or the session malformed)."""
    platform = session.split(":", 1)[0]
    insts = getattr(getattr(context, "platform_manager", None), "platform_insts", None) or []
    if not platform or not any(str(p.meta().id) == platform for p in insts):
        return None
    return proactive_sink(context, session)


class _Counting:
    """A sink that counts what reached the chat and keeps the last refusal."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.sent = 0
        self.error = ""

    async def __call__(self, chain: MessageChain) -> None:
        try:
            await self._sink(chain)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"[:200]
            raise
        self.sent += 1


def video_job_id(frame_job: str) -> str:
    """The id of the video job that animates the start frame drawn by job ``frame_job``: fixed,
    so the frame's result delivered twice (a restart in between) starts one video, not two."""
    return f"{frame_job}-video"


def _origin(event: Any) -> dict[str, str]:
    return {
        "source": "astrbot",
        "platform": str(event.get_platform_name()),
        "session": str(event.unified_msg_origin),
        "user": str(event.get_sender_id()),
        "bot": str(event.get_self_id()),
    }


class Bridge:
    """One per plugin instance: the bus runtime, pacing state, result caches, background tasks."""

    def __init__(
        self,
        config: Config,
        *,
        data_dir: Path,
        site_packages: Path | None = None,
        reach: Callable[[str], Sink | None] | None = None,
    ) -> None:
        self.config = config
        self.data_dir = data_dir
        self.reach = reach
        """A sink to a chat session (unified_msg_origin), or None while it cannot be reached."""
        self.waiters = Waiters()
        self.last = LastResults(data_dir / "last_results.json")
        self.retry = DELIVER_RETRY
        self.runtime = BusRuntime(config, site_packages=site_packages, on_result=self.on_result)
        self.debounce = Debouncer(config.debounce_interval)
        self.slots = UserSlots(config.max_user_concurrency)
        self.videos = UserSlots(1)
        self.image_cache = ResultCache(data_dir / "images", config.max_cached_images)
        self.video_cache = ResultCache(data_dir / "videos", config.video.max_cached_videos)
        self.edit_presets = config.presets()
        self.video_presets = config.video_presets()
        self.avatar_template = AVATAR_URL
        self.tasks: set[asyncio.Task[None]] = set()

    # ---- lifecycle ----------------------------------------------------------------

    async def start(self) -> bool:
        ok = await self.runtime.start()
        if not ok:
            logger.error(f"aiimg: image service unavailable: {self.runtime.error}")
        return ok

    async def stop(self) -> None:
        # Live handlers stop waiting (their results come from the durable consumer next start);
        # deliveries already handed over finish, within the runtime's drain.
        self.waiters.stop()
        tasks = list(self.tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_DRAIN)
            for task in pending:
                task.cancel()  # its result comes back to the next start (not acked)
        # Anything a task ended with besides a cancel is logged, not lost.
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                logger.warning(f"aiimg: a background delivery ended with {type(outcome).__name__}: {outcome}")
        await self.runtime.stop()

    # ---- parsing ------------------------------------------------------------------

    def parse(self, text: str) -> Request | None:
        return parse(text, self.edit_presets, self.video_presets)

    def fallback_request(self, event: Any) -> Request | None:
        """A command AstrBot did not route: a preset command, or a command after an image or @."""
        text = event.message_str or ""
        request = self.parse(text) if event.is_at_or_wake_command else None
        return request or find_command(text, self.edit_presets, self.video_presets)

    # ---- dispatch -----------------------------------------------------------------

    async def handle(self, event: Any, request: Request) -> None:
        """Run ``request`` for ``event``; every path ends with something sent to the chat."""
        event.set_extra(HANDLED, True)
        sink = event_sink(event)
        kind = request.kind
        if kind in ("draw", "edit", "selfie"):
            await self._image_command(event, sink, request)
        elif kind == "video":
            await self._video_command(event, sink, request)
        elif kind == "selfie_ref":
            await self._references(event, sink, request)
        elif kind == "video_presets":
            await send_text(sink, texts.preset_list("视频预设", self.video_presets, "/视频 <预设名> [补充]"))
        elif kind == "edit_presets":
            await send_text(sink, texts.preset_list("改图预设", self.edit_presets, "/<预设名> [补充]"))
        elif kind == "resend":
            await self._resend(event, sink)
        else:
            await send_text(sink, texts.edit_help(self.edit_presets))

    async def _client(self, sink: Sink) -> Client | None:
        if await self.runtime.start() and self.runtime.client is not None:
            return self.runtime.client
        await send_text(sink, texts.BUS_DOWN.format(reason=self.runtime.error or "not started"))
        return None

    async def _fetch(self, url: str) -> bytes:
        """A chat image or avatar URL, through the runtime's guarded download client."""
        http = self.runtime.http
        if http is None:
            raise RuntimeError("bus not started")
        data, _ = await download(http, url, self.config.network, label="chat image", timeout=30.0)
        return data

    async def _images(self, event: Any, *, mentions: bool) -> list[bytes]:
        return await collect_images(
            event, include_mentions=mentions, fetch=self._fetch, avatar_template=self.avatar_template
        )

    # ---- image jobs ---------------------------------------------------------------

    async def _image_command(self, event: Any, sink: Sink, request: Request) -> None:
        op: Operation = request.kind  # type: ignore[assignment]
        if op == "draw" and not request.prompt:
            await send_text(sink, texts.USAGE_DRAW)
            return
        if op == "selfie" and not self.config.selfie.enabled:
            await send_text(sink, texts.SELFIE_DISABLED)
            return
        client = await self._client(sink)
        if client is None:
            return
        images: list[bytes] = []
        if op == "edit":
            images = await self._images(event, mentions=True)
            if not images:
                await send_text(sink, texts.NEED_IMAGE_EDIT.format(command=request.command or "改图"))
                return
        elif op == "selfie":
            images = await self._images(event, mentions=False)
        user = str(event.get_sender_id())
        if not self.debounce.hit(f"{op}:{user}"):
            await send_text(sink, texts.TOO_FAST)
            return
        if not self.slots.try_acquire(user):
            await send_text(sink, texts.TOO_MANY.format(n=self.slots.running(user)))
            return
        with self.slots.held(user):
            await react(event, PROCESSING)
            waiter = await self._expect(sink)
            if waiter is None:
                return
            with waiter:
                job = await self._submit(
                    event,
                    sink,
                    client,
                    op,
                    request.prompt,
                    images,
                    output=request.output,
                    backend=request.backend,
                    job_id=waiter.job_id,
                )
                if job is None:
                    await react(event, FAILED)
                    return
                await send_text(sink, texts.ACK[op])
                ok = await self._deliver(event, sink, client, op, waiter)
            await self._react_outcome(event, sink, ok)

    async def _expect(self, sink: Sink) -> Waiter | None:
        """A fresh job id with its waiter registered (before the job exists); None while stopping."""
        try:
            return self.waiters.expect(new_job_id())
        except Stopped:
            await send_text(sink, texts.BUS_DOWN.format(reason="plugin stopping"))
            return None

    async def _react_outcome(self, event: Any, sink: Sink, ok: bool | None) -> None:
        if ok is None:  # the plugin stopped while waiting: the result comes after it is back
            await send_text(sink, texts.RESTARTING)
        else:
            await react(event, SUCCEEDED if ok else FAILED)

    async def _submit(
        self,
        event: Any,
        sink: Sink,
        client: Client,
        op: Operation,
        prompt: str,
        images: list[bytes],
        *,
        output: str = "",
        backend: str = "",
        job_id: str,
    ) -> str | None:
        """Write the job; on a refusal tell the chat why and return None."""
        job, why = await self._try_submit(
            event, client, op, prompt, images, output=output, backend=backend, job_id=job_id
        )
        if why:
            await send_text(sink, why)
            return None
        return job

    async def _try_submit(
        self,
        event: Any,
        client: Client,
        op: Operation,
        prompt: str,
        images: list[bytes],
        *,
        output: str = "",
        backend: str = "",
        inputs: Sequence[BlobRef] = (),
        job_id: str,
        then: str = "",
    ) -> tuple[str, str]:
        """``(job_id, "")``, or ``("", why)`` with the text explaining why no job was written.

        ``then`` (e.g. ``"video"``) is stored in the request's origin: what the bridge does with
        the result next, so a start that gets the result instead of this one can go on."""
        origin = _origin(event)
        if then:
            origin[THEN] = then
        try:
            if op == "selfie":
                refs = self.runtime.refs
                assert refs is not None
                job = await submit_selfie(
                    client,
                    refs,
                    str(event.get_self_id()),
                    prompt,
                    images=images,
                    base_dir=self.data_dir,
                    backend=backend,
                    output=output,
                    origin=origin,
                    job_id=job_id,
                )
            else:
                job = await client.submit(
                    op,
                    prompt,
                    images=images,
                    inputs=inputs,
                    output=output,
                    backend=backend,
                    origin=origin,
                    job_id=job_id,
                )
        except SelfieError as exc:
            return "", texts.SELFIE_DISABLED if exc.code == "disabled" else texts.SELFIE_NO_REFS
        except AiimgError as exc:
            return "", texts.BAD_IMAGE.format(reason=str(exc))
        except Exception as exc:  # the bus went away mid-request
            return "", texts.BUS_DOWN.format(reason=f"{type(exc).__name__}: {exc}")
        return job, ""

    async def _wait_end(self, sink: Sink, client: Client, op: Operation, waiter: Waiter) -> TerminalEvent | None:
        """The job's terminal event, or None once it outlived its budget (then it is cancelled
        and the chat told). Raises :class:`Stopped` if the plugin stops first (the results
        consumer hands the event to the next start)."""
        job_id = waiter.job_id
        budget = wait_budget(self.config, op)
        try:
            return await waiter.wait(budget)
        except TimeoutError:
            self.waiters.gave_up(job_id)
            try:
                await client.cancel(job_id, "no result in time")
            except Exception as exc:  # the bus went away: the job ends by its own deadline instead
                logger.warning(f"aiimg: could not cancel job {job_id}: {type(exc).__name__}: {exc}")
            await send_text(sink, texts.TIMEOUT.format(seconds=budget))
            return None

    async def _deliver(self, event: Any, sink: Sink, client: Client, op: Operation, waiter: Waiter) -> bool | None:
        """Wait for the job's end and send the result or the reasons; True on success, None if
        the plugin stopped first (the results consumer delivers it after the next start)."""
        try:
            end = await self._wait_end(sink, client, op, waiter)
        except Stopped:
            return None
        if end is None:
            return False
        return await self._present(
            sink,
            client,
            op,
            end,
            platform=str(event.get_platform_name()),
            session=str(event.unified_msg_origin),
        )

    async def _present(
        self,
        sink: Sink,
        client: Client,
        op: str,
        end: TerminalEvent,
        *,
        platform: str,
        session: str,
        failed: str = "{text}",
    ) -> bool:
        """Send a job's outcome to a chat: the result with its fallbacks, or the reasons (``failed``
        wraps the failure text). True if the result (or its preview, or a video link) reached
        the chat; it is then remembered for ``/重发图片``."""
        if not isinstance(end, JobCompleted):
            await send_text(sink, failed.format(text=texts.failure_text(op, end)))
            return False
        ok = await self._send_result(sink, client, op, end.result, end.source_url, end.job_id, platform)
        if ok:
            try:
                self.last.remember(session, end, op=op, platform=platform)
            except OSError as exc:  # a full or read-only disk: only /重发图片 misses it
                logger.warning(f"aiimg: could not remember the last result: {type(exc).__name__}: {exc}")
        return ok

    async def _send_result(
        self, sink: Sink, client: Client, op: str, ref: BlobRef, source_url: str, name: str, platform: str
    ) -> bool:
        try:
            data = await client.blobs.get(ref)
        except AiimgError as exc:
            await send_text(sink, texts.SEND_FAILED.format(reason=str(exc)))
            return False
        if op == "video":
            video = self.config.video
            return await send_video(
                sink,
                data,
                source_url=source_url,
                name=name,
                cache=self.video_cache,
                mode=video.send_mode,
                timeout=video.send_timeout_seconds,
            )
        return await send_image(
            sink, data, mime=ref.mime, name=name, cache=self.image_cache, limits=limits_for(platform)
        )

    # ---- results from the durable consumer ------------------------------------------

    async def on_result(self, delivery: Delivery) -> None:
        """One terminal event of this client's jobs: to its live handler, else to its chat."""
        bus, client = self.runtime.bus, self.runtime.client
        if bus is None or client is None:  # the runtime is going away: the next start takes it
            await delivery.nak(self.retry.delay(1))
            return
        try:
            event = decode_event(delivery.data)
            where = bus.names.parse(delivery.subject)
        except (DecodeError, ValueError) as exc:
            logger.warning(f"aiimg: unreadable result on {delivery.subject}: {exc}")
            await delivery.term()
            return
        if where.kind != "done" or not placed(where, event) or event.__struct_config__.tag not in _TERMINAL:
            logger.warning(f"aiimg: {event.__struct_config__.tag} on {delivery.subject} is not a result; skipped")
            await delivery.term()
            return
        end: TerminalEvent = event  # type: ignore[assignment]
        waiter = self.waiters.get(end.job_id)
        if waiter is not None and waiter.offer(end):
            if await self._handed_over(delivery, waiter):
                await delivery.ack()
            else:  # the handler ended before the chat had it: deliver it as if nobody waited
                await delivery.nak(self.retry.delay(1))
            return
        if self.waiters.given_up(end.job_id) and not isinstance(end, JobCompleted):
            await delivery.ack()  # the chat was told it timed out; the cancel adds nothing
            return
        await self._deliver_later(delivery, client, end)

    async def _handed_over(self, delivery: Delivery, waiter: Waiter) -> bool:
        """Whether the live handler delivered it; the message is kept ours while it sends (a long
        video upload must not make the server hand it out again)."""
        settled = asyncio.ensure_future(waiter.settled())
        try:
            while True:
                done, _ = await asyncio.wait({settled}, timeout=HANDOVER_PROGRESS)
                if done:
                    return settled.result()
                await delivery.in_progress()
        finally:
            settled.cancel()

    async def _deliver_later(self, delivery: Delivery, client: Client, end: TerminalEvent) -> None:
        """Send ``end`` to the chat its request came from; ack once something reached it."""
        job_id = end.job_id
        history = await client.bus.read_job(job_id)
        request = next((e.event for e in history.entries if isinstance(e.event, JobRequested)), None)
        session = request.origin.get("session", "") if request is not None else ""
        if request is None or not session:
            logger.warning(f"aiimg: job {job_id} ended, but its request names no chat session: nothing to send")
            await delivery.ack()
            return
        then = request.origin.get(THEN, "")
        if then == "video" and isinstance(end, JobCompleted) and not self.waiters.given_up(job_id):
            # A video tool's start frame whose handler is gone (a reload between the two steps).
            if await self._animate_later(client, request, end):
                await delivery.ack()
                return
        sink = self.reach(session) if self.reach is not None else None
        counted = _Counting(sink) if sink is not None else None
        if counted is not None:
            await delivery.in_progress()
            platform = request.origin.get("platform", "")
            failed = texts.VIDEO_FRAME_FAILED if then == "video" else "{text}"
            await self._present(counted, client, request.op, end, platform=platform, session=session, failed=failed)
            if counted.sent:
                await delivery.ack()
                return
        why = counted.error if counted is not None else "no loaded platform adapter can send to it proactively"
        tries = delivery.delivered
        if self.retry.gives_up(tries, 0.0):
            logger.error(f"aiimg: the result of job {job_id} could not be sent to chat {session} ({why}); dropped")
            await delivery.ack()
            return
        await delivery.nak(self.retry.delay(tries))

    async def _animate_later(self, client: Client, request: JobRequested, frame: JobCompleted) -> bool:
        """Submit the video job on a start frame that arrived after its handler was gone; its
        video then reaches the chat like any result nobody waits for. False (logged) if it could
        not be submitted: the frame itself is sent to the chat instead."""
        video_id = video_job_id(frame.job_id)
        origin = {k: v for k, v in request.origin.items() if k != THEN}
        try:
            if (await client.bus.read_job(video_id)).entries:
                return True  # submitted already (this result is delivered again)
            await client.submit("video", request.prompt, inputs=[frame.result], origin=origin, job_id=video_id)
        except Exception as exc:
            logger.error(
                f"aiimg: the start frame of video tool job {frame.job_id} is ready, but its video job could not "
                f"be submitted ({type(exc).__name__}: {exc}); sending the frame to the chat instead"
            )
            return False
        logger.info(f"aiimg: start frame {frame.job_id} arrived after a plugin restart; animating it as job {video_id}")
        return True

    # ---- /重发图片 ------------------------------------------------------------------

    async def _resend(self, event: Any, sink: Sink) -> None:
        last = self.last.get(str(event.unified_msg_origin))
        if last is None:
            await send_text(sink, texts.RESEND_NONE)
            return
        client = await self._client(sink)
        if client is None:
            return
        try:
            await client.blobs.get(last.result)
        except AiimgError:
            await send_text(sink, texts.RESEND_EXPIRED)
            return
        await self._send_result(
            sink, client, last.op, last.result, last.source_url, f"{last.job_id}_again", str(event.get_platform_name())
        )

    # ---- video --------------------------------------------------------------------

    async def _video_command(self, event: Any, sink: Sink, request: Request) -> None:
        if not self.config.video.enabled:
            await send_text(sink, texts.VIDEO_DISABLED)
            return
        if not request.prompt:
            await send_text(sink, texts.USAGE_VIDEO)
            return
        client = await self._client(sink)
        if client is None:
            return
        images = await self._images(event, mentions=True)
        if not images:
            await send_text(sink, texts.NEED_IMAGE_VIDEO)
            return
        user = str(event.get_sender_id())
        if not self.debounce.hit(f"video:{user}"):
            await send_text(sink, texts.TOO_FAST)
            return
        if not self.videos.try_acquire(user):
            await send_text(sink, texts.VIDEO_BUSY)
            return
        with self.videos.held(user):
            await react(event, PROCESSING)
            waiter = await self._expect(sink)
            if waiter is None:
                return
            with waiter:
                job = await self._submit(event, sink, client, "video", request.prompt, images[:1], job_id=waiter.job_id)
                if job is None:
                    await react(event, FAILED)
                    return
                await send_text(sink, texts.ACK["video"])
                ok = await self._deliver(event, sink, client, "video", waiter)
            await self._react_outcome(event, sink, ok)

    # ---- selfie references --------------------------------------------------------

    async def _references(self, event: Any, sink: Sink, request: Request) -> None:
        limit = self.config.selfie.max_references
        if request.action == "help":
            await send_text(sink, texts.REF_HELP.format(limit=limit))
            return
        if request.action == "unknown":
            await send_text(sink, texts.REF_UNKNOWN)
            return
        if await self._client(sink) is None or self.runtime.refs is None:
            return
        refs = self.runtime.refs
        bot = str(event.get_self_id())
        if request.action == "set":
            images = await self._images(event, mentions=False)
            if not images:
                await send_text(sink, texts.REF_NEED_IMAGE)
                return
            try:
                saved = await refs.replace(bot, images)
            except AiimgError as exc:
                await send_text(sink, texts.BAD_IMAGE.format(reason=str(exc)))
                return
            await send_text(sink, texts.REF_SAVED.format(n=len(saved)))
        elif request.action == "show":
            current = await refs.resolve(bot, self.data_dir)
            if not len(current):
                await send_text(sink, texts.REF_NONE)
                return
            shown = current.images[:REF_SHOW_LIMIT] or await refs.fetch(current.refs[:REF_SHOW_LIMIT])
            chain: list[Any] = [Comp.Image.fromBytes(b) for b in shown]
            source = {"webui": "webui", "store": "store"}.get(current.source, current.source)
            chain.append(Comp.Plain(texts.REF_SHOWN.format(source=source, n=len(current), m=len(shown))))
            try:
                await sink(MessageChain(chain))
            except Exception as exc:
                await send_text(sink, texts.SEND_FAILED.format(reason=f"{type(exc).__name__}"))
        else:
            removed = await refs.delete(bot)
            note = texts.REF_DELETED_WEBUI if webui_references(self.config, self.data_dir) else ""
            await send_text(sink, texts.REF_DELETED.format(n=removed) + note)

    # ---- LLM tool -----------------------------------------------------------------

    async def tool(self, event: Any, *, prompt: str, mode: str, backend: str, output: str, later: Sink) -> str:
        """``aiimg_generate``: submit now, answer the LLM at once, deliver the result later via ``later``."""
        output = output.strip()
        if not valid_output(output):
            return texts.TOOL_BAD_OUTPUT.format(output=output)
        if not await self.runtime.start() or self.runtime.client is None or self.runtime.refs is None:
            return texts.BUS_DOWN.format(reason=self.runtime.error or "not started")
        client, refs = self.runtime.client, self.runtime.refs
        images = await self._images(event, mentions=False)
        bot = str(event.get_self_id())
        has_refs = self.config.selfie.enabled and bool(
            webui_references(self.config, self.data_dir) or await refs.refs(bot)
        )
        op = resolve_tool_mode(mode, prompt, has_images=bool(images), has_references=has_refs)
        if op == "edit" and not images:
            images = await self._images(event, mentions=True)  # @someone: their avatar, never the sender's
            if not images:
                return texts.NEED_IMAGE_TOOL
        if op == "draw" and not prompt.strip():
            return texts.TOOL_EMPTY_PROMPT
        user = str(event.get_sender_id())
        if not self.debounce.hit(f"tool:{user}"):
            return texts.TOO_FAST
        if not self.slots.try_acquire(user):
            return texts.TOO_MANY.format(n=self.slots.running(user))
        chosen = "" if backend.strip().lower() in ("", "auto") else backend.strip()
        try:
            waiter = self.waiters.expect(new_job_id())
        except Stopped:
            self.slots.release(user)
            return texts.BUS_DOWN.format(reason="plugin stopping")
        job, why = await self._try_submit(
            event, client, op, prompt, images, output=output, backend=chosen, job_id=waiter.job_id
        )
        if why:
            waiter.release()
            self.slots.release(user)
            return why
        await react(event, PROCESSING)
        self._background(self._finish_later(event, later, client, op, waiter, user))
        return texts.TOOL_STARTED.format(what=texts.WHAT[op], job=job)

    async def video_tool(self, event: Any, *, prompt: str, later: Sink) -> str:
        """``aiimg_generate_video``: submit now, answer the LLM at once, send the video later via ``later``.

        The start frame is the message's image (quoted, sent, else an @-mentioned user's avatar);
        a message without one gets a frame drawn from the prompt first (``VIDEO_FRAME_OUTPUT``,
        on the draw chain), which the video job (:func:`video_job_id`) then animates. Both jobs'
        results come through the durable results consumer like the image tool's: a plugin stop
        hands whichever step is pending to the next start (``_deliver_later``).
        """
        if not self.config.video.enabled:
            return texts.VIDEO_DISABLED
        prompt = prompt.strip()
        if not prompt:
            return texts.TOOL_EMPTY_VIDEO_PROMPT
        if not await self.runtime.start() or self.runtime.client is None:
            return texts.BUS_DOWN.format(reason=self.runtime.error or "not started")
        client = self.runtime.client
        images = await self._images(event, mentions=True)
        user = str(event.get_sender_id())
        if not self.debounce.hit(f"video:{user}"):
            return texts.TOO_FAST
        if not self.videos.try_acquire(user):
            return texts.VIDEO_BUSY
        try:
            waiter = self.waiters.expect(new_job_id())
        except Stopped:
            self.videos.release(user)
            return texts.BUS_DOWN.format(reason="plugin stopping")
        if images:
            job, why = await self._try_submit(event, client, "video", prompt, images[:1], job_id=waiter.job_id)
        else:
            job, why = await self._try_submit(
                event, client, "draw", prompt, [], output=VIDEO_FRAME_OUTPUT, job_id=waiter.job_id, then="video"
            )
        if why:
            waiter.release()
            self.videos.release(user)
            return why
        await react(event, PROCESSING)
        self._background(self._video_later(event, later, client, waiter, user, prompt=prompt, frame=not images))
        return (texts.TOOL_STARTED if images else texts.TOOL_VIDEO_FRAME_FIRST).format(
            what=texts.WHAT["video"], job=job
        )

    async def _video_later(
        self, event: Any, sink: Sink, client: Client, waiter: Waiter, user: str, *, prompt: str, frame: bool
    ) -> None:
        """Deliver a tool's video; with ``frame``, ``waiter``'s job draws the start frame and the
        video job comes after. A stop at either step leaves it to the next start."""
        ok: bool | None = False
        with self.videos.held(user):
            try:
                video: Waiter | None = waiter
                if frame:
                    with waiter:  # ends normally once the video job is written (or the chat told why not)
                        video = await self._animate(event, sink, client, waiter, prompt)
                if video is not None:
                    with video:
                        ok = await self._deliver(event, sink, client, "video", video)
            except Stopped:  # between the steps: the frame's result goes to the next start, which animates it
                logger.info(f"aiimg: plugin stopping; the video tool job {waiter.job_id} goes on after the next start")
                return
            except Exception as exc:  # not acked: the results consumer sends it to the chat instead
                logger.error(f"aiimg: delivering video tool job {waiter.job_id} failed: {type(exc).__name__}: {exc}")
                return
        if ok is not None:
            await react(event, SUCCEEDED if ok else FAILED)

    async def _animate(self, event: Any, sink: Sink, client: Client, frame: Waiter, prompt: str) -> Waiter | None:
        """Wait for the drawn start frame, then submit the video job on it (its result blob, not a
        copy), its waiter registered first. None once the chat was told why there is no video;
        raises :class:`Stopped` when the plugin stops first."""
        end = await self._wait_end(sink, client, "draw", frame)
        if end is None:
            return None
        if not isinstance(end, JobCompleted):
            await send_text(sink, texts.VIDEO_FRAME_FAILED.format(text=texts.failure_text("draw", end)))
            return None
        video = self.waiters.expect(video_job_id(frame.job_id))
        _, why = await self._try_submit(event, client, "video", prompt, [], inputs=[end.result], job_id=video.job_id)
        if why:
            video.release()
            await send_text(sink, why)
            return None
        return video

    async def _finish_later(
        self, event: Any, sink: Sink, client: Client, op: Operation, waiter: Waiter, user: str
    ) -> None:
        """The LLM tool's delivery: the same path as a command's (a stop hands it to the next start)."""
        with self.slots.held(user):
            try:
                with waiter:
                    ok = await self._deliver(event, sink, client, op, waiter)
            except Exception as exc:  # not acked: the results consumer sends it to the chat instead
                logger.error(f"aiimg: delivering job {waiter.job_id} failed: {type(exc).__name__}: {exc}")
                return
        if ok is not None:
            await react(event, SUCCEEDED if ok else FAILED)

    def _background(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
