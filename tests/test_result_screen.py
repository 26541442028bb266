"""Results that embed a credential are found where files keep text, cheaply.

Issue 10: a gateway echoed the request (``Authorization: Bearer <key>``) into a PNG text
chunk of a successful image; the bytes went to the blob store and on to chat users. The
provider actor now refuses such a result (``Redactor.embedded_in``). Here: every container
aiimg accepts, every place in it where text lives, every form of the key — found; clean
files and keys in the compressed payload — not a false alarm; and what it costs.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable
from urllib.parse import quote

import pytest
from PIL import Image

from aiimg.services.infra.logging import Redactor
from aiimg.services.infra.redaction import metadata_segments
from bench.secret_scan import measure, table

from .fakes.media import (
    bmp,
    gif_with_comment,
    jpeg_with,
    mp4_with_udta,
    png_with_text,
    webm_with_tags,
    webp_with,
)

KEY = "sk-test-BlobKey-0123456789abcdef"
COOKIE = "sessionid=Blob/Cookie+Value~0042"
REDACTOR = Redactor.of([KEY, COOKIE, "shortpw"])


def forms_of(secret: str) -> dict[str, str]:
    raw = secret.encode()
    return {
        "raw": secret,
        "base64": base64.b64encode(raw).decode(),
        "basic": base64.b64encode(b"user:" + raw).decode(),  # inside a longer base64 text
        "bearer-b64": base64.b64encode(b"Authorization: Bearer " + raw + b"\r\n").decode(),
        "urlsafe": base64.urlsafe_b64encode(b"x" + raw).decode().rstrip("="),
        "url-encoded": quote(secret, safe=""),
    }


CONTAINERS: dict[str, Callable[[str], bytes]] = {
    "png-tEXt": lambda t: png_with_text(f"request echo: {t}"),
    "png-zTXt": lambda t: png_with_text(f"request echo: {t}", kind="zTXt"),
    "png-iTXt-compressed": lambda t: png_with_text(f"request echo: {t}", kind="iTXt"),
    "png-after-IEND": lambda t: png_with_text(trailing=f"echo {t}".encode()),
    "jpeg-COM": lambda t: jpeg_with(comment=f"echo {t}"),
    "jpeg-EXIF-description": lambda t: jpeg_with(description=f"echo {t}"),
    "jpeg-EXIF-XPComment-utf16": lambda t: jpeg_with(xp_comment=f"echo {t}"),
    "jpeg-after-EOI": lambda t: jpeg_with(trailing=f"echo {t}".encode()),
    "webp-EXIF": lambda t: webp_with(exif_text=f"echo {t}"),
    "webp-XMP": lambda t: webp_with(xmp=f"<x:xmpmeta>{t}</x:xmpmeta>"),
    "webp-after-RIFF": lambda t: webp_with(trailing=f"echo {t}".encode()),
    "gif-comment": lambda t: gif_with_comment(f"echo {t}"),
    "gif-after-trailer": lambda t: gif_with_comment(trailing=f"echo {t}".encode()),
    "bmp-after-pixels": lambda t: bmp(trailing=f"echo {t}".encode()),
    "mp4-udta": lambda t: mp4_with_udta(f"echo {t}"),
    "webm-tags": lambda t: webm_with_tags(f"echo {t}"),
}


@pytest.mark.parametrize("secret", [KEY, COOKIE], ids=["key", "cookie"])
@pytest.mark.parametrize("form", sorted(forms_of(KEY)))
@pytest.mark.parametrize("container", sorted(CONTAINERS))
def test_a_secret_where_a_file_keeps_text_is_found(container: str, form: str, secret: str) -> None:
    text = forms_of(secret)[form]
    data = CONTAINERS[container](text)
    clean = CONTAINERS[container]("nothing to see here")
    if not container.startswith(("mp4", "webm")):
        with Image.open(io.BytesIO(data)) as img:  # a real file a decoder accepts
            img.load()
    # Found by the container parser, not by the whole-file fallback.
    assert metadata_segments(data) is not None and metadata_segments(clean) is not None
    assert REDACTOR.embedded_in(data), (container, form)
    assert not REDACTOR.embedded_in(clean), container


@pytest.mark.parametrize("container", sorted(CONTAINERS))
def test_a_short_password_is_not_searched_for_in_its_encodings(container: str) -> None:
    """Secrets under 8 characters are matched raw only: their encodings are too short to mean anything."""
    data = CONTAINERS[container](base64.b64encode(b"user:shortpw").decode())
    assert not REDACTOR.embedded_in(data)
    assert REDACTOR.embedded_in(CONTAINERS[container]("shortpw"))


def test_unknown_or_malformed_files_are_scanned_whole() -> None:
    blob = os.urandom(50_000) + f"echo {KEY}".encode() + os.urandom(1000)
    assert metadata_segments(blob) is None and REDACTOR.embedded_in(blob)
    broken = png_with_text()[:-30] + KEY.encode()  # a chunk length past the end
    assert metadata_segments(broken) is None and REDACTOR.embedded_in(broken)
    assert not REDACTOR.embedded_in(os.urandom(50_000))


def test_nothing_registered_finds_nothing() -> None:
    assert not Redactor().embedded_in(png_with_text(f"echo {KEY}"))


def test_cost_of_the_check() -> None:
    """Prints what ``python -m bench.secret_scan`` prints (at 1 MB; run it for 10 MB too).
    No timing is asserted: the figures are for reading."""
    rows = measure((1.0,), (2, 4), 3)
    print("\n" + table(rows))
    assert {r.kind for r in rows} == {"png", "jpeg", "mp4"} and all(r.forms >= 8 for r in rows)
