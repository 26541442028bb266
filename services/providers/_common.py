"""Pieces every HTTP provider shares: URL normalisation, key rotation, strict base64, safe
downloads and the 404 cool-down. (Errors: ``_errors``; JSON: ``_json``.)

Provider modules stay small by composing these; nothing here knows one upstream.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import anyio
import httpx
import pybase64

from ..domain.config import NetworkConfig
from ..domain.errors import AddressRefused, ConfigError, HostUnresolved, ProviderFailure, UpstreamResponseError
from ..infra.http import DownloadClient, read_body
from ._errors import failure_for, http_failure

__all__ = (
    "Cooldown",
    "KeyRing",
    "b64_text",
    "b64decode_strict",
    "decode_base64",
    "download",
    "each_key",
    "image_from_item",
    "has_version_segment",
    "join",
    "normalize_gemini_base",
    "normalize_openai_base",
)

# ---- URLs -------------------------------------------------------------------------

_OPENAI_SUFFIXES = (
    "/v1/chat/completions",
    "/chat/completions",
    "/v1/images/generations",
    "/images/generations",
    "/v1/images/edits",
    "/images/edits",
    "/v1/images",
    "/images",
)


_VERSION_SEGMENT = re.compile(r"v\d+(?:(?:alpha|beta|preview)\d*)?", re.IGNORECASE)
"""A path segment that names an API version: ``v1``, ``v3``, ``v1beta``, ``v2alpha1``."""


def has_version_segment(path: str) -> bool:
    """Whether a URL path already names an API version (``/v1``, ``/v1beta/openai``, ``/api/paas/v4``)."""
    return any(_VERSION_SEGMENT.fullmatch(segment) for segment in path.split("/"))


def normalize_openai_base(url: str, *, exact: bool = False) -> str:
    """The API root from a bare domain, a versioned root or a pasted endpoint.

    A pasted endpoint (``…/chat/completions``, ``…/images/generations``) loses that suffix. A
    path that already names a version anywhere is kept as it is — OpenAI's ``/v1``, Google's
    ``/v1beta/openai``, Zhipu's ``/api/paas/v4``, Ark's ``/api/v3`` — and only a path without
    one gets ``/v1`` appended: ``https://api.x.ai`` → ``https://api.x.ai/v1``, ``https://p/api``
    → ``https://p/api/v1``. ``exact`` (a block's ``base_url_exact``): the URL as given, only
    trailing slashes removed, for gateways whose root fits none of these rules.
    """
    value = url.strip().rstrip("/")
    if exact:
        return value
    lower = value.lower()
    for suffix in _OPENAI_SUFFIXES:
        if lower.endswith(suffix):
            value = value[: -len(suffix)].rstrip("/")
            break
    parsed = httpx.URL(value)
    if not (parsed.scheme and parsed.host):  # not an absolute URL: append to the text as it is
        return value if has_version_segment(value) else value + "/v1"
    if has_version_segment(parsed.path):
        return value
    return str(parsed.copy_with(path=parsed.path.rstrip("/") + "/v1", query=None, fragment=None))


def normalize_gemini_base(url: str) -> str:
    """``…/v1beta`` root for Gemini generateContent; never doubles ``/v1beta`` or ``/models``."""
    value = url.strip().rstrip("/")
    for suffix in ("/models", "/v1beta", "/v1"):
        if value.lower().endswith(suffix):
            value = value[: -len(suffix)].rstrip("/")
    for suffix in ("/v1beta",):
        if value.lower().endswith(suffix):
            value = value[: -len(suffix)].rstrip("/")
    return value + "/v1beta"


def join(base: str, path: str) -> str:
    """``base`` + ``/path`` with exactly one slash between."""
    return base.rstrip("/") + "/" + path.lstrip("/")


def resolve_against(base: str, path: str) -> str:
    return urljoin(base.rstrip("/") + "/", path.lstrip("/"))


# ---- keys ---------------------------------------------------------------------------


class KeyRing:
    """Round-robin over several API keys; a key is reported by its 1-based position, never its value."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = [k.strip() for k in keys if k and k.strip()]
        self._next = 0

    def __bool__(self) -> bool:
        return bool(self.keys)

    def take(self) -> tuple[int, str]:
        """(position starting at 1, key). Raises ``ProviderFailure(auth)`` when there are none."""
        if not self.keys:
            raise ProviderFailure("auth", "no API key configured")
        i = self._next % len(self.keys)
        self._next = i + 1
        return i + 1, self.keys[i]


_T = TypeVar("_T")


async def each_key(ring: KeyRing, call: Callable[[int, str], Awaitable[_T]], *, noun: str = "key") -> _T:
    """``call(position, key)`` with the ring's next key; on an ``auth`` failure, with the following one.

    Each key is tried at most once per attempt, so one revoked key among several does not
    fail every job that lands on it. Any other failure is raised at once: retries of
    transient reasons are the router's decision, not the provider's.
    """
    tried: list[int] = []
    last: ProviderFailure | None = None
    for _ in range(max(1, len(ring.keys))):
        position, key = ring.take()
        try:
            return await call(position, key)
        except ProviderFailure as exc:
            if exc.reason != "auth":
                raise
            tried.append(position)
            last = exc
    assert last is not None
    if len(tried) == 1:
        raise last
    listed = ", ".join(f"#{p}" for p in tried)
    raise ProviderFailure("auth", f"{last.message}; every {noun} was rejected ({listed})", status=last.status) from None


# ---- base64 -----------------------------------------------------------------------------

_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?(;[\w-]+=[\w.-]+)*;base64,", re.IGNORECASE)


def b64decode_strict(data: str | bytes | memoryview) -> bytes:
    """Canonical base64 (standard alphabet, padded, nothing else) → bytes; ``binascii.Error`` otherwise.

    pybase64's SIMD decoder: 0.09 ms per MB of image here, where ``binascii.a2b_base64``
    (a byte-at-a-time loop) takes 2.9 ms — the largest single cost of a provider actor's
    attempt on a 1 MB image (docs/benchmarks.md).
    """
    return pybase64.b64decode(data, validate=True)


def b64_text(data: bytes) -> str:
    """``data`` as base64 text, for request bodies and data URLs (pybase64: ~18x the stdlib)."""
    return pybase64.b64encode(data).decode("ascii")


def decode_base64(value: str, *, label: str = "") -> bytes:
    """Strictly decode base64 or a ``data:…;base64,`` URL (whitespace tolerated, padding fixed).

    Raises ``ProviderFailure(invalid_response)`` (its message headed by ``label``, the
    provider) on anything that is not clean base64, instead of silently decoding a prefix as
    the old regex did.
    """
    try:
        # Fast path for what upstreams send, canonical base64 with nothing to clean: one C pass.
        # The cleaning below costs ~9 ms per MB of image in re.sub alone (docs/benchmarks.md).
        return b64decode_strict(value)
    except (binascii.Error, ValueError):
        pass
    text = value.strip()
    m = _DATA_URL.match(text)
    if m:
        text = text[m.end() :]
    text = re.sub(r"\s+", "", text)
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        head = f"{label}: " if label else ""
        raise ProviderFailure("invalid_response", f"{head}image data is not valid base64") from None


# ---- downloads -----------------------------------------------------------------------------


async def download(
    http: DownloadClient,
    url: str,
    net: NetworkConfig,
    *,
    label: str = "download",
    max_bytes: int | None = None,
    timeout: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[bytes, str]:
    """GET ``url`` safely: http(s) only, redirects re-checked, size cap, overall timeout.

    ``http`` is the download client (:func:`services.infra.http.download_client`): unless
    ``network.allow_private_downloads`` is set it connects only to public addresses,
    checked for every connection, every redirect hop included (:class:`~services.infra.http.AddressGuard`).
    ``headers`` (e.g. an API key for a gateway that serves results behind auth) are sent
    only while the URL stays on ``url``'s origin: a redirect to another host never gets them.
    Returns ``(bytes, final_url)``. Failures are typed: ``network`` (unreachable, a name
    that does not resolve), ``timeout``, ``invalid_response`` (too large, bad scheme, a
    private address), named after ``label`` (the guard's and the transport's refusals through
    :func:`._errors.failure_for`).
    """
    if not (isinstance(http, DownloadClient) and http.guarded) and not net.allow_private_downloads:
        # Only the download client checks addresses; a caller mypy does not see (the bridge) could pass another.
        raise ConfigError(
            "download() needs the guarded download client (services.infra.http.download_client) "
            "unless network.allow_private_downloads is true"
        )
    limit = max_bytes or net.download_max_bytes
    current = url
    origin = _origin(url)
    with anyio.fail_after(timeout or net.download_timeout):
        for _ in range(net.max_redirects + 1):
            try:
                parts = urlsplit(current)
                hostname = parts.hostname
                parts.port  # noqa: B018 - raises ValueError for a port out of range
            except ValueError:  # "http://[::1/x", "http://h:99999/"
                raise ProviderFailure("invalid_response", f"{label}: not a valid URL") from None
            if parts.scheme not in ("http", "https") or not hostname:
                raise ProviderFailure("invalid_response", f"{label}: refusing URL scheme {parts.scheme or '?'}")
            if parts.username is not None or parts.password is not None:
                # Credentials inside a URL named by an upstream or a chat: never sent anywhere.
                raise ProviderFailure("invalid_response", f"{label}: refusing a URL with credentials in it")
            sent = dict(headers) if headers and _origin(current) == origin else None
            try:
                async with http.stream("GET", current, headers=sent, follow_redirects=False) as resp:
                    if resp.status_code in (301, 302, 303, 307, 308) and resp.headers.get("location"):
                        current = urljoin(current, resp.headers["location"])
                        continue
                    if resp.status_code >= 400:
                        await resp.aread()  # an error page: within the transport's cap
                        raise http_failure(label, resp)
                    declared = resp.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > limit:
                        raise ProviderFailure(
                            "invalid_response", f"{label}: {int(declared)} bytes exceeds the {limit}-byte cap"
                        )
                    # One buffer, decoded bytes counted (the transport inflates gzip in bounded steps).
                    return await read_body(resp, limit), current
            except httpx.InvalidURL:
                raise ProviderFailure("invalid_response", f"{label}: not a valid URL") from None
            except (UpstreamResponseError, AddressRefused, HostUnresolved) as exc:
                # The guard's refusals and the transport's caps, named after this download.
                raise failure_for(exc, label=label) from None
        raise ProviderFailure("invalid_response", f"{label}: too many redirects")


def _origin(url: str) -> tuple[str, str, int | None]:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "", "", None
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


async def image_from_item(http: DownloadClient, item: Any, net: NetworkConfig, label: str) -> tuple[bytes, str] | None:
    """The image of one OpenAI-style ``data[]`` item: ``b64_json`` decoded strictly, else ``url``
    downloaded safely. Returns ``(bytes, source_url)``, or None when the item has neither."""
    if not isinstance(item, dict):
        return None
    b64 = item.get("b64_json")
    if isinstance(b64, str) and b64.strip():
        return decode_base64(b64), ""
    url = item.get("url")
    if isinstance(url, str) and url.strip():
        return await download(http, url.strip(), net, label=f"{label} image")
    return None


# ---- 404 cool-down -----------------------------------------------------------------------------


class Cooldown:
    """Parks an operation after a 404 for ``seconds``; a blocked call does not renew the wait.

    (The old plugin's blocked-call error text contained "404" and so re-armed itself forever.)
    ``clock`` is the monotonic clock it reads (a test passes its own).
    """

    def __init__(self, seconds: float = 600.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self._until: dict[str, float] = {}

    def check(self, label: str, operation: str) -> None:
        until = self._until.get(operation, 0.0)
        left = until - self.clock()
        if left > 0:
            raise ProviderFailure(
                "unsupported", f"{label} {operation} is parked for {left:.0f}s after a 404 (endpoint not available)"
            )

    def park(self, operation: str) -> None:
        self._until[operation] = self.clock() + self.seconds

    def clear(self, operation: str) -> None:
        self._until.pop(operation, None)
