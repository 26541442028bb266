"""Finding the video URL in a reply from a Grok video gateway.

Chat-completions gateways put the generated video wherever they like: a top-level
``video_url``, an HTML ``<video src>`` or a markdown link in ``content``, content
parts, ``attachments``/``media``/``files``, or somewhere deeper. The search order
is the old plugin's (seed-plugin-behaviour.md §2.6), so a gateway that worked there
works here. Beyond the old rules, a URL without a video extension is accepted when
its shape is a known gateway video route (``/v1/files/video?id=``, ``generated_video``,
``/v1/videos/{id}/content``) or when its context says video (a ``video_url`` key, a
``video`` part or attachment type, a ``<video>`` tag, a markdown link labelled video),
and relative URLs are resolved against the API origin.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import deque
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

__all__ = ("find_video_url", "looks_like_video", "video_url_in_text")

_VIDEO_EXT = re.compile(r"\.(?:mp4|webm|mov)(?:$|[?#/&])", re.IGNORECASE)
_IMAGE_EXT = re.compile(r"\.(?:png|jpe?g|webp|gif|bmp|avif|heic)$", re.IGNORECASE)
_UNSAFE = re.compile(r"[<>\"'\s\x00-\x1f]")
_HTML_SRC = re.compile(r"<(?:video|source)\b[^>]*?\bsrc\s*=\s*[\"']?([^\"'\s>]+)", re.IGNORECASE)
_BARE_VIDEO = re.compile(
    r"(https?://[^\s<>\"')\]\}]+?\.(?:mp4|webm|mov)(?:\?[^\s<>\"')\]\}]*)?)(?=$|[\s<>\"')\]\}])", re.IGNORECASE
)
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_MD_REF = re.compile(r"^\s*\[([^\]]*)\]:\s*(\S+)", re.MULTILINE)
_ANY_URL = re.compile(r"https?://[^\s<>\"')\]\}]+", re.IGNORECASE)
_VIDEO_WORD = re.compile(r"video|视频|mp4|webm|movie|clip", re.IGNORECASE)
_PROXY_TOKEN = re.compile(r"/images/p_([A-Za-z0-9+/_=-]+)")
_KEYS_VIDEO = ("video_url", "video")
_KEYS_URL = ("file_url", "url", "href", "download_url")
_MAX_DEPTH = 6
_MAX_NODES = 2000


def _clean(url: str) -> str:
    return url.strip().rstrip(".,;:!?。，")


def _is_http(url: str) -> bool:
    if len(url) < 10 or _UNSAFE.search(url):
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def looks_like_video(url: str) -> bool:
    """True for an http(s) URL whose own shape says it is a video (extension or known route)."""
    if not isinstance(url, str):
        return False
    url = url.strip()
    if not _is_http(url):
        return False
    parts = urlsplit(url)
    if _VIDEO_EXT.search(parts.path) or _VIDEO_EXT.search(parts.query):
        return True
    path = parts.path.rstrip("/").lower()
    if path.endswith("/video") and parse_qs(parts.query).get("id"):
        return True  # grok2api-style /v1/files/video?id=… (old plugin PR #31)
    if "/videos/" in path and path.endswith("/content"):
        return True  # OpenAI-style /v1/videos/{id}/content
    if "generated_video" in url.lower():
        return True
    return _proxy_token_is_video(parts.path)


def _proxy_token_is_video(path: str) -> bool:
    """Gateways that hide the file name in ``/images/p_<base64(path)>``."""
    m = _PROXY_TOKEN.search(path)
    if not m:
        return False
    token = m.group(1) + "=" * (-len(m.group(1)) % 4)
    for decode in (base64.urlsafe_b64decode, base64.b64decode):
        try:
            text = decode(token.encode("ascii")).decode("utf-8", "ignore").lower()
        except (binascii.Error, ValueError):
            continue
        if "generated_video" in text or _VIDEO_EXT.search(text):
            return True
    return False


def _accept(value: Any, *, video_context: bool, origin: str) -> str | None:
    """``value`` as an absolute video URL, or None. Context lets an extension-less URL through."""
    if not isinstance(value, str):
        return None
    url = _clean(value)
    if url.startswith("/") and not url.startswith("//") and origin:
        url = urljoin(origin + "/", url.lstrip("/"))
    if looks_like_video(url):
        return url
    if video_context and _is_http(url) and not _IMAGE_EXT.search(urlsplit(url).path):
        return url
    return None


def video_url_in_text(text: str, *, origin: str = "") -> str | None:
    """A video URL inside free text: ``<video src>``, a bare video URL, a markdown link, a known route."""
    if not text:
        return None
    for m in _HTML_SRC.finditer(text):
        if url := _accept(m.group(1), video_context=True, origin=origin):
            return url
    for m in _BARE_VIDEO.finditer(text):
        if url := _accept(m.group(1), video_context=False, origin=origin):
            return url
    for rx in (_MD_LINK, _MD_REF):
        for m in rx.finditer(text):
            label, target = m.group(1), m.group(2)
            if url := _accept(target, video_context=bool(_VIDEO_WORD.search(label)), origin=origin):
                return url
    for m in _ANY_URL.finditer(text):
        if url := _accept(m.group(0), video_context=False, origin=origin):
            return url
    return None


def _says_video(item: dict[str, Any]) -> bool:
    kind = " ".join(str(item.get(k, "")) for k in ("type", "mime_type", "mime", "content_type", "kind"))
    return "video" in kind.lower()


def _in_dict(item: dict[str, Any], origin: str) -> str | None:
    """A URL held by one dict's usual keys (``video_url``, ``video``, ``url``, ``file_url``…)."""
    context = _says_video(item)
    for key in _KEYS_VIDEO:
        value = item.get(key)
        if isinstance(value, dict):
            value = value.get("url") or value.get("file_url")
        if url := _accept(value, video_context=True, origin=origin):
            return url
    for key in _KEYS_URL:
        value = item.get(key)
        if isinstance(value, dict):
            value = value.get("url") or value.get("file_url")
        if url := _accept(value, video_context=context, origin=origin):
            return url
    return None


def _in_part(part: Any, origin: str) -> str | None:
    if isinstance(part, str):
        return video_url_in_text(part, origin=origin)
    if not isinstance(part, dict):
        return None
    if url := _in_dict(part, origin):
        return url
    text = part.get("text")
    return video_url_in_text(text, origin=origin) if isinstance(text, str) else None


def _deep(data: Any, origin: str) -> str | None:
    """Breadth-first scan of the whole reply, bounded in depth and nodes."""
    queue: deque[tuple[Any, int]] = deque([(data, 0)])
    seen = 0
    while queue:
        obj, depth = queue.popleft()
        seen += 1
        if seen > _MAX_NODES:
            return None
        if depth > _MAX_DEPTH:
            continue
        if isinstance(obj, str):
            if url := video_url_in_text(obj, origin=origin):
                return url
        elif isinstance(obj, dict):
            if url := _in_dict(obj, origin):
                return url
            queue.extend((v, depth + 1) for v in obj.values())
        elif isinstance(obj, list):
            queue.extend((v, depth + 1) for v in obj)
    return None


def find_video_url(body: Any, *, origin: str = "") -> str | None:
    """The video URL in a chat-completions reply, searched in the old plugin's order.

    1. top-level ``video_url``; 2. ``choices[0].message.content`` (a string, or parts with
    ``url`` / ``video_url`` / ``text``); 3. ``message.attachments|media|files``; 4. a bounded
    breadth-first scan of everything. ``origin`` (``scheme://host``) resolves relative URLs.
    """
    if not isinstance(body, dict):
        return None
    if url := _accept(body.get("video_url"), video_context=True, origin=origin):
        return url
    message: dict[str, Any] = {}
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        msg = choices[0].get("message") or choices[0].get("delta")
        message = msg if isinstance(msg, dict) else {}
    content = message.get("content")
    if isinstance(content, str):
        if url := video_url_in_text(content, origin=origin):
            return url
    elif isinstance(content, list):
        for part in content:
            if url := _in_part(part, origin):
                return url
    for field in ("attachments", "media", "files"):
        items = message.get(field)
        if isinstance(items, list):
            for item in items:
                if url := _in_part(item, origin):
                    return url
    return _deep(body, origin)
