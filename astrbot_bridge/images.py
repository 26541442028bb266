"""Input images of a chat message, as bytes, in the order a request uses them.

Order: images of the quoted message (``Reply.chain``), then the message's own images,
then the avatars of @-mentioned users (never the bot itself, never @all). Everything is
read into memory here, before any background work: AstrBot may delete its temp files
once the handler returns. An image that cannot be read is skipped, not fatal.

Unlike the old plugin there is no silent fallback to the sender's avatar: a request
that needs an image and has none gets a clear prompt to send or quote one.

Images named by an http(s) URL (QQ's quoted messages, most platforms' attachments) and
avatars are fetched by ``fetch`` — the bridge's download client, which connects only to
public addresses (``network.allow_private_downloads`` to allow a LAN image server) and
caps size and time — never by AstrBot's own downloader, which checks neither.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Awaitable, Callable
from typing import Any

from astrbot.api import logger
from astrbot.api import message_components as Comp
from PIL import Image as PILImage

from ..services.infra.media import sniff_mime

__all__ = ("AVATAR_URL", "avatar_url", "collect_images", "image_bytes", "mentioned_users")

AVATAR_URL = "https://q4.qlogo.cn/headimg_dl?dst_uin={user}&spec=640"
"""QQ avatar of a user id (what the old plugin fetched for @-mentions)."""

Fetch = Callable[[str], Awaitable[bytes]]


def avatar_url(user: str, template: str = AVATAR_URL) -> str:
    return template.format(user=user)


def _url_of(comp: Any) -> str:
    """The http(s) URL an ``Image`` component is read from, or "" (AstrBot reads ``url`` first, then ``file``)."""
    source = str(getattr(comp, "url", "") or getattr(comp, "file", "") or "")
    return source if source[:8].lower().startswith(("http://", "https://")) else ""


async def image_bytes(comp: Any, fetch: Fetch | None = None) -> bytes | None:
    """The bytes of an ``Image`` component: a local path, ``file://`` or ``base64://`` through
    AstrBot; an http(s) URL through ``fetch`` (skipped without it)."""
    url = _url_of(comp)
    try:
        if url:
            if fetch is None:
                return None
            data = await fetch(url)
        else:
            data = base64.b64decode(await comp.convert_to_base64(), validate=False)
    except Exception as exc:  # AstrBot raises bare Exception for unreadable sources
        logger.warning(f"aiimg: skipped an unreadable image ({type(exc).__name__}: {_short(exc)})")
        return None
    return _normalise(data)


def _short(exc: Exception) -> str:
    # A refused or failed download names the host at most (ProviderFailure); other errors may be long.
    return " ".join(str(exc).split())[:200]


def _normalise(data: bytes) -> bytes | None:
    """Reject what is not an image; turn an animated GIF into its first frame (JPEG), like the old plugin."""
    mime = sniff_mime(data)
    if mime is None or not mime.startswith("image/"):
        return None
    if mime != "image/gif":
        return data
    try:
        with PILImage.open(io.BytesIO(data)) as img:
            img.seek(0)
            out = io.BytesIO()
            img.convert("RGB").save(out, format="JPEG", quality=85)
            return out.getvalue()
    except Exception as exc:  # Pillow raises many types for a broken GIF: the image is skipped
        logger.warning(f"aiimg: skipped an undecodable GIF ({type(exc).__name__}: {_short(exc)})")
        return None


def mentioned_users(event: Any) -> list[str]:
    """User ids @-mentioned in the message, without the bot and without @all."""
    self_id = str(event.get_self_id())
    out: list[str] = []
    for comp in event.get_messages():
        if isinstance(comp, Comp.AtAll) or not isinstance(comp, Comp.At):
            continue
        qq = str(comp.qq or "")
        if not qq or qq == "all" or qq == self_id or qq in out:
            continue
        out.append(qq)
    return out


async def _quoted_images(event: Any, reply: Any) -> list[Any]:
    """Images of a quoted message; on QQ, fetch the quote again when AstrBot could not."""
    chain = list(reply.chain or [])
    if chain or event.get_platform_name() != "aiocqhttp":
        return [c for c in chain if isinstance(c, Comp.Image)]
    call = getattr(getattr(event, "bot", None), "call_action", None)
    if call is None or not str(reply.id).isdigit():
        return []
    try:
        data = await call("get_msg", message_id=int(reply.id))
    except Exception as exc:  # OneBot implementations raise their own types: the quote just has no images
        logger.warning(f"aiimg: could not fetch the quoted message ({type(exc).__name__}: {_short(exc)})")
        return []
    segments = (data or {}).get("message") if isinstance(data, dict) else None
    out: list[Any] = []
    for seg in segments if isinstance(segments, list) else []:
        if isinstance(seg, dict) and seg.get("type") == "image":
            info = seg.get("data") or {}
            url = info.get("url") or info.get("file")
            if isinstance(url, str) and url:
                out.append(Comp.Image(file=url, url=url))
    return out


async def collect_images(
    event: Any,
    *,
    include_mentions: bool = True,
    fetch: Fetch | None = None,
    avatar_template: str = AVATAR_URL,
) -> list[bytes]:
    """All input images of ``event`` as bytes: quoted, then inline, then @-mentioned avatars.

    ``fetch`` downloads a URL (http(s) images and avatars); without it those are skipped.
    """
    quoted: list[Any] = []
    inline: list[Any] = []
    for comp in event.get_messages():
        if isinstance(comp, Comp.Reply):
            quoted += await _quoted_images(event, comp)
        elif isinstance(comp, Comp.Image):
            inline.append(comp)
    out: list[bytes] = []
    for comp in [*quoted, *inline]:
        data = await image_bytes(comp, fetch)
        if data is not None:
            out.append(data)
    if include_mentions and fetch is not None:
        for user in mentioned_users(event):
            try:
                data = _normalise(await fetch(avatar_url(user, avatar_template)))
            except Exception as exc:
                logger.warning(f"aiimg: avatar of {user} unavailable ({type(exc).__name__})")
                continue
            if data is not None:
                out.append(data)
    return out
