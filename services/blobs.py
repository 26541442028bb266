"""Image and video bytes in the JetStream object store, addressed by content.

Blobs use the standard NATS object store format (bucket ``aiimg_blobs``), so any
NATS client with object-store support can read a result by the ``name`` in a
:class:`~messages.BlobRef`. Names are ``sha256-<hex>``: the same bytes are stored once.
"""

from __future__ import annotations

import hashlib

from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from messages import BlobRef

from .bus import Bus
from .errors import BlobError
from .media import MediaInfo, sniff_mime

__all__ = ("BlobStore",)


class BlobStore:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.bucket = bus.names.blob_bucket
        self.max_bytes = bus.config.retention.max_blob_bytes
        self._store: ObjectStore | None = None

    async def _obj(self) -> ObjectStore:
        if self._store is None:
            self._store = await self.bus.js.object_store(self.bucket)
        return self._store

    async def put(self, data: bytes, info: MediaInfo | None = None) -> BlobRef:
        """Store ``data`` (once per content) and return its reference."""
        if len(data) > self.max_bytes:
            raise BlobError(f"blob of {len(data)} bytes exceeds retention.max_blob_bytes={self.max_bytes}")
        digest = hashlib.sha256(data).hexdigest()
        name = f"sha256-{digest}"
        mime = info.mime if info else (sniff_mime(data) or "application/octet-stream")
        ref = BlobRef(
            name=name,
            size=len(data),
            sha256=digest,
            mime=mime,
            width=info.width if info else 0,
            height=info.height if info else 0,
            bucket=self.bucket,
        )
        store = await self._obj()
        try:
            existing = await store.get_info(name)
            if existing.size == len(data):
                return ref
        except (NotFoundError, ObjectNotFoundError):
            pass
        await store.put(name, data)
        return ref

    async def get(self, ref: BlobRef) -> bytes:
        """The bytes of ``ref``, checked against its size and sha256."""
        store = await self._obj()
        try:
            result = await store.get(ref.name)
        except (NotFoundError, ObjectNotFoundError):
            raise BlobError(f"blob {ref.name} not found (expired or never stored)") from None
        data = result.data or b""
        if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise BlobError(f"blob {ref.name} is corrupt (size or checksum mismatch)")
        return data
