"""Selfies: a bot's reference portraits, kept on the bus, and the selfie job built from them.

A selfie is an edit whose first inputs are the bot's reference portraits and whose
prompt asks to keep the face of the first one (the old plugin's identity-preserving
prompt, with a configurable prefix). Everything here is usable by any NATS client, not
only the AstrBot bridge:

* :class:`ReferenceStore` keeps up to ``selfie.max_references`` portraits per bot, in the
  namespace of the client that set them: the index (a list of :class:`~messages.BlobRef`)
  in the KV bucket under ``selfie.<client>.<bot>``, the bytes in the client's own
  object-store bucket ``<prefix>_refs_<client>``, which has no TTL (job blobs expire after
  ``retention.blob_max_age``, and a portrait must outlive that).
* WebUI-uploaded files (``selfie.reference_images``, paths relative to the data dir)
  take precedence over the stored set; a path that escapes the data dir is ignored.
* :func:`submit_selfie` writes a ``selfie`` job: references first, then the message's
  own images. The router sends it down the edit chain (``selfie.prefer_provider`` first).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgspec
import structlog
from nats.js.errors import KeyNotFoundError, NotFoundError

from ...messages import BlobRef
from ..config import Config
from ..domain.errors import BlobError, MediaError, SelfieError
from ..infra.blobs import BlobStore
from ..infra.bus import Bus
from ..infra.media import check_image
from .client import Client

__all__ = (
    "DEFAULT_PROMPT_PREFIX",
    "ReferenceSet",
    "ReferenceStore",
    "looks_like_selfie",
    "selfie_prompt",
    "submit_selfie",
    "webui_references",
)

DEFAULT_PROMPT_PREFIX = (
    "请根据参考图生成一张新的自拍照：\n"
    "1) 以第1张参考图的人脸身份为准（仅人脸身份特征），保持五官/气质一致。\n"
    "2) 如果还有其它参考图，请将它们仅作为服装/姿势/构图/场景的参考。\n"
    "3) 输出一张高质量照片风格自拍，不要拼图，不要水印。"
)
"""The old plugin's identity-preserving instruction; ``selfie.prompt_prefix`` replaces it."""

DEFAULT_REQUEST = "日常自拍照"
"""What the user asked for when they asked for nothing in particular."""

log = structlog.get_logger("aiimg.selfie")

_SELFIE_WORDS = ("自拍", "来一张你", "来张你", "你来一张", "你来张", "看看你")
_IMAGE_SUFFIX = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"})


def looks_like_selfie(prompt: str) -> bool:
    """Whether a free-text request asks for the bot's own picture (the old plugin's rule).

    An empty prompt counts, as do 自拍 / selfie / 来张你 / 看看你 and their variants.
    """
    text = prompt.strip()
    if not text:
        return True
    if "selfie" in text.lower():
        return True
    return any(word in text for word in _SELFIE_WORDS)


def selfie_prompt(request: str, extra_images: int, prefix: str = "") -> str:
    """The prompt of a selfie job: the instruction, the user's request, the extra-image count."""
    head = prefix.strip() or DEFAULT_PROMPT_PREFIX
    text = f"{head}\n\n用户要求：{request.strip() or DEFAULT_REQUEST}"
    if extra_images > 0:
        text += f"\n（额外参考图数量：{extra_images}）"
    return text


def webui_references(config: Config, base_dir: Path | None = None) -> list[Path]:
    """``selfie.reference_images`` resolved under the data dir: existing files only, none outside it."""
    root = (base_dir or config.data_path()).resolve()
    out: list[Path] = []
    for entry in config.selfie.reference_images:
        raw = entry.strip()
        if not raw or ".." in Path(raw).parts:
            continue
        path = (root / raw).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            continue
        out.append(path)
    return out[: max(0, config.selfie.max_references)]


class _RefIndex(msgspec.Struct, frozen=True, kw_only=True):
    refs: list[BlobRef]


_index_decoder = msgspec.json.Decoder(_RefIndex)


@dataclass(frozen=True, slots=True)
class ReferenceSet:
    """The portraits a selfie uses and where they came from (``webui`` or ``store``).

    WebUI files arrive as ``images`` (bytes, uploaded with the job); stored references as
    ``refs`` (already in the client's reference bucket, passed to the job as they are).
    """

    source: Literal["webui", "store", "none"]
    images: list[bytes]
    refs: list[BlobRef] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images) + len(self.refs)


class ReferenceStore:
    """Per-bot reference portraits on the bus (KV index + object-store bytes), per client.

    Everything lives in this client's namespace, which only its NATS user may write: the
    index under ``selfie.<client>.<bot>`` in the KV bucket, the bytes in the bucket
    ``<prefix>_refs_<client>`` (no TTL). References set by an earlier version (one shared
    ``selfie.refs.<bot>`` key and ``<prefix>_selfie`` bucket) are copied over on first read.
    """

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.client_id = bus.config.nats.client()
        self.bucket = bus.names.refs_bucket(self.client_id)
        self.limit = max(1, bus.config.selfie.max_references)
        self._blobs = BlobStore(bus, self.bucket)  # a bucket without TTL; same content addressing
        self._ready = False

    def _key(self, bot_id: str) -> str:
        return self.bus.names.selfie_key(self.client_id, bot_id)

    async def _ensure_bucket(self) -> None:
        if not self._ready:
            await self.bus.ensure_object_bucket(self.bucket)
            self._ready = True

    async def refs(self, bot_id: str) -> list[BlobRef]:
        """The stored references of ``bot_id`` (empty when none are set)."""
        found = await self._read_index(self._key(bot_id))
        if found is not None:
            return found
        legacy = await self._read_index(self.bus.names.legacy_selfie_key(bot_id))
        if not legacy:
            return []
        return await self._migrate(bot_id, legacy)

    async def _read_index(self, key: str) -> list[BlobRef] | None:
        """The index under ``key``; ``None`` when there is none, ``[]`` when it was emptied."""
        kv = await self.bus.kv()
        try:
            entry = await kv.get(key)
        except (KeyNotFoundError, NotFoundError):
            return None
        if not entry.value:
            return None
        try:
            return list(_index_decoder.decode(entry.value).refs)
        except msgspec.DecodeError:
            log.warning("selfie_index_unreadable", key=key)
            return None

    async def _migrate(self, bot_id: str, legacy: list[BlobRef]) -> list[BlobRef]:
        images: list[bytes] = []
        for ref in legacy:
            try:
                images.append(await self._blobs.get(ref))
            except BlobError as exc:
                log.warning("selfie_reference_not_migrated", bot=bot_id, blob=ref.name, error=str(exc))
        refs = await self.replace(bot_id, images) if images else []
        log.info("selfie_references_migrated", bot=bot_id, count=len(refs))
        return refs

    async def load(self, bot_id: str) -> list[bytes]:
        """The bytes of ``bot_id``'s references; a blob that went missing is skipped (and logged)."""
        return await self.fetch(await self.refs(bot_id))

    async def fetch(self, refs: Sequence[BlobRef]) -> list[bytes]:
        """The bytes of ``refs``; a blob that went missing is skipped (and logged)."""
        out: list[bytes] = []
        for ref in refs:
            try:
                out.append(await self._blobs.get(ref))
            except BlobError as exc:
                log.warning("selfie_reference_missing", blob=ref.name, error=str(exc))
        return out

    async def replace(self, bot_id: str, images: Sequence[bytes]) -> list[BlobRef]:
        """Store ``images`` (at most ``selfie.max_references``) as ``bot_id``'s references."""
        await self._ensure_bucket()
        refs: list[BlobRef] = []
        for data in images[: self.limit]:
            try:
                # Magic bytes, the pixel limit, placeholders, a full decode.
                info = await check_image(data, max_pixels=self.bus.config.limits.max_pixels)
            except MediaError as exc:
                raise MediaError(exc.kind, f"reference image rejected: {exc.message}") from None
            refs.append(await self._blobs.put(data, info))
        kv = await self.bus.kv()
        await kv.put(self._key(bot_id), msgspec.json.encode(_RefIndex(refs=refs)))
        return refs

    async def delete(self, bot_id: str) -> int:
        """Forget ``bot_id``'s references; returns how many there were."""
        count = len(await self.refs(bot_id))
        kv = await self.bus.kv()
        with contextlib.suppress(KeyNotFoundError, NotFoundError):  # none set: nothing to forget
            await kv.delete(self._key(bot_id))
        return count

    async def resolve(self, bot_id: str, base_dir: Path | None = None) -> ReferenceSet:
        """WebUI files if any are configured and exist, else the stored set."""
        files = webui_references(self.bus.config, base_dir)
        if files:
            return ReferenceSet("webui", [p.read_bytes() for p in files])
        stored = await self.refs(bot_id)
        return ReferenceSet("store" if stored else "none", [], stored)


async def submit_selfie(
    client: Client,
    store: ReferenceStore,
    bot_id: str,
    request: str = "",
    *,
    images: Sequence[bytes] = (),
    base_dir: Path | None = None,
    backend: str = "",
    output: str = "",
    origin: Mapping[str, str] | None = None,
    job_id: str | None = None,
) -> str:
    """Write a selfie job for ``bot_id``: references first, then ``images``; returns the job id.

    Raises:
        SelfieError: ``selfie.enabled`` is false, or the bot has no reference portraits.
    """
    config = client.bus.config
    if not config.selfie.enabled:
        raise SelfieError("disabled", "selfie is disabled (selfie.enabled = false)")
    refs = await store.resolve(bot_id, base_dir)
    if not len(refs):
        raise SelfieError("no_references", "no reference portraits are set for this bot")
    prompt = selfie_prompt(request, len(images), config.selfie.prompt_prefix)
    # Stored references go in as they are (references first: the face comes from the first).
    uploaded = [await client.put_image(data) for data in [*refs.images, *images]]
    return await client.submit(
        "selfie",
        prompt,
        inputs=[*refs.refs, *uploaded],
        backend=backend,
        output=output,
        origin=origin,
        job_id=job_id,
    )
