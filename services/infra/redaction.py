"""What a secret looks like once an upstream has echoed it, and where credentials hide in text.

Pure functions, no process state: :class:`services.logging.Redactor` holds the registered
secrets and uses these to mask log lines and failure messages, to screen ``source_url``
and to refuse result bytes that embed a credential.

* :func:`secret_forms` — the raw secret and every encoding an upstream has been seen to echo
  it in: URL-encoded (``quote`` / ``quote_plus``, upper- and lower-case hex), base64 (standard
  and URL-safe, padded and not), the stable core of its base64 at any byte offset inside a
  longer base64 text (``Authorization: Basic base64(user:key)``), JSON- and repr-escaped.
* :func:`mask_credentials` — userinfo in URLs, credential-named query parameters, bearer tokens.
* :func:`metadata_segments` — the parts of a PNG / JPEG / WebP / GIF / ISO-BMFF (MP4, MOV,
  AVIF, HEIC) / WebM file where text can live, so scanning a 10 MB result costs microseconds
  instead of a full pass per form (``bench/secret_scan.py`` has the figures).
"""

from __future__ import annotations

import base64
import functools
import json
import re
import struct
import zlib
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, urlsplit

__all__ = (
    "MIN_CORE",
    "MIN_FORM",
    "MIN_SECRET",
    "base64_cores",
    "blob_contains",
    "byte_forms",
    "has_userinfo",
    "mask_credentials",
    "mask_forms",
    "metadata_segments",
    "secret_forms",
)

MIN_SECRET = 4
"""Shorter values are not secrets worth masking (every ``abc`` in every line would go)."""
MIN_FORM = 8
"""Secrets shorter than this are masked raw only, and no encoded form shorter than this is
masked: the encodings of short values are short and would match unrelated text."""
MIN_CORE = 12
"""The base64 core of a secret at an unknown offset is masked only from 12 characters (72 bits):
shorter cores would match ordinary base64 text by chance. Secrets of 10+ bytes have one."""

_HEX_ESCAPE = re.compile(r"%[0-9A-F]{2}")


def _lower_hex(text: str) -> str:
    return _HEX_ESCAPE.sub(lambda m: m.group().lower(), text)


def base64_cores(raw: bytes) -> set[str]:
    """The base64 characters that depend only on ``raw``, wherever it sits in a longer text.

    Base64 maps 3 bytes to 4 characters, so the encoding of ``raw`` inside a longer byte
    string depends on its offset modulo 3. For each of the three alignments the characters
    shared with neighbouring bytes (up to 3 at the start, up to 2 at the end) are dropped;
    what is left appears verbatim in the base64 of *any* text containing ``raw`` at that
    alignment. Both alphabets (standard and URL-safe).
    """
    cores: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode("ascii")
        total = offset + len(raw)
        start = (0, 2, 3)[offset]
        end = 4 * (total // 3) + total % 3
        core = encoded[start:end]
        cores.add(core)
        cores.add(core.replace("+", "-").replace("/", "_"))
    return cores


@functools.lru_cache(maxsize=1024)
def secret_forms(secret: str) -> frozenset[str]:
    """``secret`` and its encodings that are long enough to mask safely (see the thresholds)."""
    if len(secret) < MIN_SECRET:
        return frozenset()
    if len(secret) < MIN_FORM:
        return frozenset({secret})
    raw = secret.encode("utf-8")
    derived: set[str] = set()
    for q in (quote(secret, safe=""), quote(secret), quote_plus(secret, safe=""), quote_plus(secret)):
        derived |= {q, _lower_hex(q)}
    derived.add(json.dumps(secret)[1:-1])
    derived.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    derived.add(repr(secret)[1:-1])
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = encoded.decode("ascii")
        derived |= {text, text.rstrip("=")}
    forms = {secret} | {f for f in derived if len(f) >= MIN_FORM}
    forms |= {c for c in base64_cores(raw) if len(c) >= MIN_CORE}
    return frozenset(forms)


def mask_forms(text: str, secrets: Iterable[str], mask: str = "***") -> str:
    """``text`` with every form of each of ``secrets`` replaced by ``mask``, longest first."""
    forms: set[str] = set()
    for secret in secrets:
        forms |= secret_forms(secret)
    for form in sorted(forms, key=lambda f: (-len(f), f)):
        if form in text:
            text = text.replace(form, mask)
    return text


def byte_forms(forms: Iterable[str]) -> tuple[set[bytes], set[bytes]]:
    """``forms`` as bytes for scanning binary data: (UTF-8, UTF-16 LE and BE — EXIF
    ``XPComment`` and ``UserComment`` in ``UNICODE`` hold UTF-16)."""
    narrow = {form.encode("utf-8") for form in forms}
    wide = {form.encode(codec) for form in forms for codec in ("utf-16-le", "utf-16-be")}
    return narrow, wide


# ---- credentials in text ---------------------------------------------------------------------

_CREDENTIAL_PARAMS = (
    "key|api[_-]?key|x[_-]api[_-]key|x-goog-api-key|apikey|"
    "token|access[_-]?token|refresh[_-]?token|id[_-]?token|auth[_-]?token|auth|authorization|"
    "password|passwd|pwd|pass|secret|client[_-]?secret|"
    "sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|"
    "x-tos-signature|x-tos-credential|x-tos-security-token|x-goog-signature|x-goog-credential|"
    "cookie|session|sessionid|session[_-]?token"
)
_QUERY_CREDENTIAL = re.compile(
    # A parameter (after ``?``, ``&`` or ``;``, or their %-escapes inside an encoded URL) whose
    # whole name means a credential; its value, up to the next separator, is masked.
    rf"(?P<head>(?:[?&;]|%3[Ff]|%26)(?:{_CREDENTIAL_PARAMS})(?:=|%3[Dd]))(?P<value>[^&#\s\"'<>\\]+?)(?=%26|[&#\s\"'<>\\]|$)",
    re.IGNORECASE,
)
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<value>[^\s/?#@\"'<>\\]+)@")
_BEARER = re.compile(
    # ``Bearer <token>``: 8+ token characters, at least one of them a digit or a symbol (prose
    # such as "bearer instrument" stays).
    r"(?P<head>\bbearer\s+)(?P<value>(?=[A-Za-z]*[0-9._~+/=-])[A-Za-z0-9._~+/=-]{8,})",
    re.IGNORECASE,
)
_AUTH_HEADER = re.compile(
    r"(?P<head>\b(?:proxy-)?authorization\b[\"']?\s*[:=]\s*[\"']?\s*(?:basic|bearer|digest|token)?\s*)"
    r"(?P<value>(?!(?:basic|bearer|digest|token)\b)[^\s\"',;&]{4,})",
    re.IGNORECASE,
)


def mask_credentials(text: str) -> str:
    """``text`` with URL userinfo, credential query parameters and auth headers masked (``***``)."""
    if "://" in text and "@" in text:
        text = _USERINFO.sub(r"\g<head>***@", text)
    if "=" in text or "%3" in text:
        text = _QUERY_CREDENTIAL.sub(r"\g<head>***", text)
    lower = text.lower()
    if "bearer" in lower:
        text = _BEARER.sub(lambda m: m.group("head") + "***" if m.group("value") != "***" else m.group(0), text)
    if "authorization" in lower:
        text = _AUTH_HEADER.sub(lambda m: m.group("head") + "***" if m.group("value") != "***" else m.group(0), text)
    return text


def has_userinfo(url: str) -> bool:
    """True when ``url`` carries ``user[:password]@`` (credentials for its host)."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "@" in url
    return "@" in parts.netloc


# ---- where text lives in media files -------------------------------------------------------------

_MAX_INFLATE = 1 << 20
"""Compressed text chunks are inflated up to 1 MiB for scanning (a zlib bomb stops there)."""


def _inflate(data: bytes) -> bytes:
    try:
        return zlib.decompressobj().decompress(data, _MAX_INFLATE)
    except zlib.error:
        return b""


def _png(data: bytes) -> list[bytes] | None:
    out: list[bytes] = []
    pos = 8
    size = len(data)
    while pos + 8 <= size:
        length, kind = struct.unpack_from(">I4s", data, pos)
        body = pos + 8
        end = body + length + 4
        if end > size:
            return None
        if kind not in (b"IDAT", b"fdAT"):
            chunk = data[body : body + length]
            out.append(chunk)
            if kind == b"zTXt":
                _, _, rest = chunk.partition(b"\0")
                out.append(_inflate(rest[1:]))
            elif kind == b"iTXt":
                _, _, rest = chunk.partition(b"\0")
                if rest[:1] == b"\1":  # compressed: keyword\0 flag method lang\0 tkey\0 text
                    _, _, tail = rest[2:].partition(b"\0")
                    _, _, text = tail.partition(b"\0")
                    out.append(_inflate(text))
            elif kind == b"iCCP":
                _, _, rest = chunk.partition(b"\0")
                out.append(_inflate(rest[1:]))
        pos = end
        if kind == b"IEND":
            break
    out.append(data[pos:])  # anything after IEND
    return out


def _jpeg(data: bytes) -> list[bytes] | None:
    out: list[bytes] = []
    pos = 2
    size = len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2 or pos + 2 + length > size:
            return None
        out.append(data[pos + 4 : pos + 2 + length])
        pos += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data follows up to EOI
            break
    # After the (last) end-of-image marker: appended text. Segments between the scans of a
    # progressive JPEG are not read (writers put metadata before the first scan).
    eoi = data.rfind(b"\xff\xd9")
    if eoi >= pos:
        out.append(data[eoi + 2 :])
    return out


def _riff(data: bytes) -> list[bytes] | None:
    out: list[bytes] = []
    (riff_size,) = struct.unpack_from("<I", data, 4)
    end_of_riff = min(len(data), 8 + riff_size)
    pos = 12
    while pos + 8 <= end_of_riff:
        kind, length = struct.unpack_from("<4sI", data, pos)
        body = pos + 8
        if body + length > len(data):
            return None
        if kind not in (b"VP8 ", b"VP8L", b"ALPH", b"ANMF"):
            out.append(data[body : body + length])
        pos = body + length + (length & 1)
    out.append(data[max(pos, end_of_riff) :])
    return out


def _gif(data: bytes) -> list[bytes] | None:
    size = len(data)
    if size < 13:
        return None
    pos = 13
    flags = data[10]
    if flags & 0x80:
        pos += 3 << ((flags & 7) + 1)
    out: list[bytes] = []

    def sub_blocks(at: int, keep: bool) -> int:
        parts: list[bytes] = []
        while at < size:
            n = data[at]
            at += 1
            if n == 0:
                break
            if keep:
                parts.append(data[at : at + n])
            at += n
        if keep:
            out.append(b"".join(parts))
        return at

    while pos < size:
        block = data[pos]
        if block == 0x3B:  # trailer
            pos += 1
            break
        if block == 0x21 and pos + 1 < size:  # extension: comment, application, plain text, control
            pos = sub_blocks(pos + 2, keep=True)
        elif block == 0x2C and pos + 10 <= size:  # image: descriptor, local table, LZW data
            flags = data[pos + 9]
            pos += 10
            if flags & 0x80:
                pos += 3 << ((flags & 7) + 1)
            pos = sub_blocks(pos + 1, keep=False)
        else:
            return None
    out.append(data[pos:])
    return out


def _bmff(data: bytes) -> list[bytes] | None:
    """ISO base media (MP4, MOV, AVIF, HEIC): every top-level box but the media data."""
    out: list[bytes] = []
    pos = 0
    size = len(data)
    while pos + 8 <= size:
        length, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if length == 1:
            if pos + 16 > size:
                return None
            (length,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif length == 0:
            length = size - pos
        if length < header or pos + length > size:
            return None
        if kind != b"mdat":
            out.append(data[pos + header : pos + length])
        pos += length
    out.append(data[pos:])
    return out


def _bmp(data: bytes) -> list[bytes] | None:
    """BMP: the headers and palette before the pixel array, and anything after the file size."""
    file_size, _, pixels = struct.unpack_from("<I4sI", data, 2)
    if not 14 <= pixels <= len(data):
        return None
    return [data[:pixels], data[max(pixels, file_size) :]]


def _ebml_vint(data: bytes, pos: int, *, keep_marker: bool) -> tuple[int, int]:
    first = data[pos]
    width = 1
    while width <= 8 and not first & (0x80 >> (width - 1)):
        width += 1
    if width > 8 or pos + width > len(data):
        raise ValueError("bad EBML varint")
    value = first if keep_marker else first & (0xFF >> width)
    for b in data[pos + 1 : pos + width]:
        value = (value << 8) | b
    return value, pos + width


_CLUSTER = 0x1F43B675
_SEGMENT = 0x18538067


def _webm(data: bytes) -> list[bytes] | None:
    """Matroska / WebM: every element but the clusters (the media data)."""
    out: list[bytes] = []
    pos = 0
    size = len(data)
    try:
        while pos < size:
            element, at = _ebml_vint(data, pos, keep_marker=True)
            length, body = _ebml_vint(data, at, keep_marker=False)
            unknown = length == (1 << (7 * (body - at))) - 1
            if element == _SEGMENT:  # descend: its children are the interesting level
                out.append(data[pos:body])
                pos = body
                continue
            if unknown or body + length > size:  # unknown size (live-written) or truncated
                return None
            if element != _CLUSTER:
                out.append(data[pos : body + length])
            pos = body + length
    except (ValueError, IndexError):
        return None
    return out


def metadata_segments(data: bytes) -> list[bytes] | None:
    """Where text can live in ``data``: every container part except compressed image or media
    payloads, inflated text chunks, and anything after the container's end. ``None`` for a
    format this does not parse, or a malformed file: the caller then scans everything."""
    head = data[:16]
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            return _png(data)
        if head.startswith(b"\xff\xd8"):
            return _jpeg(data)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _riff(data)
        if head.startswith((b"GIF87a", b"GIF89a")):
            return _gif(data)
        if head[4:8] == b"ftyp":
            return _bmff(data)
        if head.startswith(b"\x1a\x45\xdf\xa3"):
            return _webm(data)
        if head.startswith(b"BM"):
            return _bmp(data)
    except (struct.error, IndexError, ValueError):
        return None
    return None


def blob_contains(data: bytes, narrow: Iterable[bytes], wide: Iterable[bytes] = ()) -> bool:
    """True when a form of a secret occurs where ``data`` can hold text.

    ``narrow``: the UTF-8 forms; ``wide``: the UTF-16 ones (EXIF ``XPComment``). A format
    :func:`metadata_segments` knows is scanned in its metadata only, for both; anything else
    is scanned whole, for the UTF-8 forms (every form costs one pass over the bytes).
    """
    narrow = tuple(narrow)
    if not narrow:
        return False
    parts = metadata_segments(data)
    if parts is None:
        return any(needle in data for needle in narrow)
    needles = narrow + tuple(wide)
    return any(needle in part for part in parts if part for needle in needles)
