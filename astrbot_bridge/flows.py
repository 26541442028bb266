"""What each command does, from the chat event to the bus and back.

The :class:`Bridge` translates only: it parses the command (``commands``), reads the
input images (``images``), paces the user (``feedback``), submits a job with
``services.app.client`` / ``services.app.selfie``, waits for its terminal event and sends the
result (``sending``). Provider choice, retries, fallbacks and size handling all happen
in the router and the providers, configured by the same settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any

from astrbot.api import logger
from astrbot.api import message_components as Comp
from astrbot.api.event import MessageChain

from ..messages import BlobRef, JobCompleted, Operation
from ..services.app.client import Client
from ..services.app.selfie import submit_selfie, webui_references
from ..services.config import Config
from ..services.domain.errors import AiimgError, SelfieError
from ..services.providers._common import download
from . import texts
from .commands import Request, find_command, parse, resolve_tool_mode, valid_output
from .feedback import FAILED, PROCESSING, SUCCEEDED, Debouncer, UserSlots, react
from .images import AVATAR_URL, collect_images
from .runtime import BusRuntime, wait_budget
from .sending import ResultCache, Sink, limits_for, send_image, send_text, send_video

__all__ = ("Bridge", "event_sink", "proactive_sink")

HANDLED = "aiimg_handled"
"""Event extra set once a handler of this plugin took the message (the fallback then stays out)."""

REF_SHOW_LIMIT = 5

VIDEO_FRAME_OUTPUT = "16:9 1K"
"""Size of the start frame the video tool draws when the message has no image: video-shaped,
and small enough to send to the video API as a data URL."""


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

    def __init__(self, config: Config, *, data_dir: Path, site_packages: Path | None = None) -> None:
        self.config = config
        self.data_dir = data_dir
        self.runtime = BusRuntime(config, site_packages=site_packages)
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
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        # Each ends cancelled (what we asked for); anything else it ended with is logged, not lost.
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
            job = await self._submit(
                event, sink, client, op, request.prompt, images, output=request.output, backend=request.backend
            )
            if job is None:
                await react(event, FAILED)
                return
            await send_text(sink, texts.ACK[op])
            ok = await self._deliver(event, sink, client, op, job)
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
    ) -> str | None:
        """Write the job; on a refusal tell the chat why and return None."""
        job, why = await self._try_submit(event, client, op, prompt, images, output=output, backend=backend)
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
    ) -> tuple[str, str]:
        """``(job_id, "")``, or ``("", why)`` with the text explaining why no job was written."""
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
                    origin=_origin(event),
                )
            else:
                job = await client.submit(
                    op, prompt, images=images, inputs=inputs, output=output, backend=backend, origin=_origin(event)
                )
        except SelfieError as exc:
            return "", texts.SELFIE_DISABLED if exc.code == "disabled" else texts.SELFIE_NO_REFS
        except AiimgError as exc:
            return "", texts.BAD_IMAGE.format(reason=str(exc))
        except Exception as exc:  # the bus went away mid-request
            return "", texts.BUS_DOWN.format(reason=f"{type(exc).__name__}: {exc}")
        return job, ""

    async def _completed(
        self, sink: Sink, client: Client, op: Operation, job_id: str, *, failed: str = "{text}"
    ) -> JobCompleted | None:
        """Wait for the job's end; on anything but success tell the chat why (``failed`` wraps the
        failure text) and return None. A job that outlives its budget is cancelled."""
        budget = wait_budget(self.config, op)
        try:
            end = await client.wait(job_id, timeout=budget)
        except TimeoutError:
            try:
                await client.cancel(job_id, "no result in time")
            except Exception as exc:  # the bus went away: the job ends by its own deadline instead
                logger.warning(f"aiimg: could not cancel job {job_id}: {type(exc).__name__}: {exc}")
            await send_text(sink, texts.TIMEOUT.format(seconds=budget))
            return None
        except Exception as exc:
            await send_text(sink, texts.BUS_DOWN.format(reason=f"{type(exc).__name__}: {exc}"))
            return None
        if not isinstance(end, JobCompleted):
            await send_text(sink, failed.format(text=texts.failure_text(op, end)))
            return None
        return end

    async def _deliver(self, event: Any, sink: Sink, client: Client, op: Operation, job_id: str) -> bool:
        """Wait for the job's end and send the result or the reasons; True on success."""
        end = await self._completed(sink, client, op, job_id)
        if end is None:
            return False
        try:
            data = await client.blobs.get(end.result)
        except AiimgError as exc:
            await send_text(sink, texts.SEND_FAILED.format(reason=str(exc)))
            return False
        if op == "video":
            video = self.config.video
            return await send_video(
                sink,
                data,
                source_url=end.source_url,
                name=job_id,
                cache=self.video_cache,
                mode=video.send_mode,
                timeout=video.send_timeout_seconds,
            )
        return await send_image(
            sink,
            data,
            mime=end.result.mime,
            name=job_id,
            cache=self.image_cache,
            limits=limits_for(str(event.get_platform_name())),
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
            job = await self._submit(event, sink, client, "video", request.prompt, images[:1])
            if job is None:
                await react(event, FAILED)
                return
            await send_text(sink, texts.ACK["video"])
            ok = await self._deliver(event, sink, client, "video", job)
            await react(event, SUCCEEDED if ok else FAILED)

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
        job, why = await self._try_submit(event, client, op, prompt, images, output=output, backend=chosen)
        if why:
            self.slots.release(user)
            return why
        await react(event, PROCESSING)
        self._background(self._finish_later(event, later, client, op, job, user))
        return texts.TOOL_STARTED.format(what=texts.WHAT[op], job=job)

    async def video_tool(self, event: Any, *, prompt: str, later: Sink) -> str:
        """``aiimg_generate_video``: submit now, answer the LLM at once, send the video later via ``later``.

        The start frame is the message's image (quoted, sent, else an @-mentioned user's avatar);
        a message without one gets a frame drawn from the prompt first (``VIDEO_FRAME_OUTPUT``,
        on the draw chain), which the video job then animates.
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
        if images:
            job, why = await self._try_submit(event, client, "video", prompt, images[:1])
        else:
            job, why = await self._try_submit(event, client, "draw", prompt, [], output=VIDEO_FRAME_OUTPUT)
        if why:
            self.videos.release(user)
            return why
        await react(event, PROCESSING)
        self._background(self._video_later(event, later, client, job, user, prompt=prompt, frame=not images))
        return (texts.TOOL_STARTED if images else texts.TOOL_VIDEO_FRAME_FIRST).format(
            what=texts.WHAT["video"], job=job
        )

    async def _video_later(
        self, event: Any, sink: Sink, client: Client, job: str, user: str, *, prompt: str, frame: bool
    ) -> None:
        """Deliver a tool's video; with ``frame``, ``job`` draws the start frame and the video comes after."""
        with self.videos.held(user):
            try:
                ok = False
                video_job: str | None = job
                if frame:
                    video_job = await self._animate(event, sink, client, job, prompt)
                if video_job is not None:
                    ok = await self._deliver(event, sink, client, "video", video_job)
            except Exception as exc:
                logger.error(f"aiimg: delivering video job {job} failed: {type(exc).__name__}: {exc}")
                ok = False
            await react(event, SUCCEEDED if ok else FAILED)

    async def _animate(self, event: Any, sink: Sink, client: Client, frame_job: str, prompt: str) -> str | None:
        """Wait for the drawn start frame, then submit the video job on it (its result blob, not a copy)."""
        drawn = await self._completed(sink, client, "draw", frame_job, failed=texts.VIDEO_FRAME_FAILED)
        if drawn is None:
            return None
        job, why = await self._try_submit(event, client, "video", prompt, [], inputs=[drawn.result])
        if why:
            await send_text(sink, why)
            return None
        return job

    async def _finish_later(self, event: Any, sink: Sink, client: Client, op: Operation, job: str, user: str) -> None:
        with self.slots.held(user):
            try:
                ok = await self._deliver(event, sink, client, op, job)
            except Exception as exc:
                logger.error(f"aiimg: delivering job {job} failed: {type(exc).__name__}: {exc}")
                ok = False
            await react(event, SUCCEEDED if ok else FAILED)

    def _background(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
