"""References to bytes kept in the JetStream object store.

Image and video bytes never travel inside events (NATS ``max_payload`` is 1 MB by
default); an event carries a :class:`BlobRef` and the bytes live in the blob bucket.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ("BlobRef",)


class BlobRef(msgspec.Struct, frozen=True, kw_only=True):
    """Where a blob lives and what it is.

    ``name`` is the object name in the bucket (content addressed: ``sha256-<hex>``).
    ``width`` / ``height`` are 0 for blobs that are not images (video, unknown).
    """

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    """The object's name in ``bucket``."""
    size: Annotated[int, msgspec.Meta(ge=0)]
    """Bytes; a reader checks it against the stored object."""
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    """Lowercase hex SHA-256 of the bytes; a reader checks it against the stored object."""
    mime: str
    width: int = 0
    height: int = 0
    bucket: str = "aiimg_blobs"
    """The object store bucket. The default is the results bucket under the default prefix
    only: under another prefix, always name the bucket."""
