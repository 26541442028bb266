"""What a failure means for an attempt: the one place errors become typed reasons.

* :func:`failure_for` — an error from below the providers. The layers under them say what
  happened — ``MediaError`` (``no_image``, ``invalid``, ``too_large``), ``ResponseTooLarge``,
  ``BadEncoding``, ``AddressRefused``, ``HostUnresolved``, httpx's transport errors — and this
  says what that means for an attempt, once: the provider actor calls it for whatever a
  provider, a result check or an input check raised, ``_common.download`` for its downloads.
* :func:`classify` — what an upstream said: an HTTP status, an error code, a message, a retry
  hint (a :class:`Said`) as a reason, a message and a ``retry_after``. Every provider's HTTP
  errors, errors inside 200 answers and failed tasks go through it; an upstream's own codes
  and words are data (a code table of :class:`Meaning` s, :class:`Words`), not copies of it.
* :data:`POLICY_WORDS` / :func:`moderated` — the one moderation / content-policy matcher,
  English and Chinese, used by :func:`classify` and by providers reading a refusal in prose.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal, overload

import httpx

from ...messages import Reason
from ..domain.errors import (
    AddressRefused,
    AiimgError,
    BlobError,
    HostUnresolved,
    MediaError,
    ProviderFailure,
    UpstreamResponseError,
)
from ..infra.logging import redact
from ..infra.redaction import mask_forms
from ._json import json_body

__all__ = (
    "AUTH_WORDS",
    "MAX_RETRY_AFTER",
    "POLICY_WORDS",
    "QUOTA_WORDS",
    "WORDS",
    "Codes",
    "Mapped",
    "Meaning",
    "Said",
    "Words",
    "classify",
    "error_body",
    "error_text",
    "failure_for",
    "http_failure",
    "moderated",
    "retry_after_seconds",
    "scrub",
    "short",
)

# ---- errors from below ------------------------------------------------------------------------

Mapped = ProviderFailure | MediaError | UpstreamResponseError | AddressRefused | HostUnresolved
"""The errors that always mean a failed attempt (:func:`failure_for` never returns ``None`` for them)."""


@overload
def failure_for(exc: Mapped | BlobError, *, label: str = "", request: Literal[True]) -> ProviderFailure: ...
@overload
def failure_for(exc: Mapped, *, label: str = "", request: bool = False) -> ProviderFailure: ...
@overload
def failure_for(exc: BaseException, *, label: str = "", request: bool = False) -> ProviderFailure | None: ...
def failure_for(exc: BaseException, *, label: str = "", request: bool = False) -> ProviderFailure | None:
    """``exc`` as the failure of an attempt, or ``None`` when it is not one (a bug, the bus).

    ``label`` names what failed (``"grok image download"``, ``"input #2"``) at the head of the
    message. ``request`` says the bytes came with the request (an input image): what is wrong
    with them — missing, unreadable, not an image, over the pixel limit — is the request's
    fault, ``bad_request``, whatever it would mean for a result.
    """
    if isinstance(exc, ProviderFailure):
        return exc
    if request and isinstance(exc, (MediaError, BlobError)):
        return ProviderFailure("bad_request", _labelled(label, _text(exc)))
    reason: Reason
    match exc:
        case MediaError(kind="no_image"):
            reason = "no_image"
        case MediaError() | UpstreamResponseError() | AddressRefused():
            reason = "invalid_response"
        case HostUnresolved():
            reason = "network"
        case httpx.TimeoutException():
            return ProviderFailure("timeout", _labelled(label, "upstream timed out"))
        case httpx.TransportError():
            return ProviderFailure("network", _labelled(label, type(exc).__name__))
        case _:
            return None
    return ProviderFailure(reason, _labelled(label, _text(exc)))


def _text(exc: BaseException) -> str:
    return exc.message if isinstance(exc, AiimgError) and exc.message else str(exc)


def _labelled(label: str, message: str) -> str:
    return f"{label}: {message}" if label and not message.startswith(f"{label}:") else message


# ---- what an upstream's words mean ------------------------------------------------------------

POLICY_WORDS = re.compile(
    r"moderat|content[ _-]?policy|safety|sensitive|nsfw|unsafe|prohibited|inappropriate|violat|blocked"
    r"|违规|敏感|审核|不合规|色情",
    re.IGNORECASE,
)
"""A moderation or content-policy block, in any upstream's words: the one matcher."""

EXHAUSTED_WORDS = re.compile(
    r"insufficient[ _-]?(?:quota|balance|credit|funds)|exceeded your current quota|credit balance is too low"
    r"|billing (?:hard )?limit|account (?:is )?(?:overdue|in arrears)|余额不足|欠费|额度(?:已)?(?:用完|用尽|耗尽|不足)",
    re.IGNORECASE,
)
"""A balance, credits or a plan quota that ran out: waiting a minute does not help (``quota_exhausted``)."""

QUOTA_WORDS = re.compile(
    r"quota|credit|rate[ _-]?limit|too many requests|resource[ _]exhausted|额度|余额|欠费|限流|频繁", re.IGNORECASE
)
"""A quota, a rate limit or an exhausted balance."""

AUTH_WORDS = re.compile(
    r"invalid[ _-]?(?:api[ _-]?)?(?:key|token)|incorrect api[ _-]?key|api[ _-]?key not valid|unauthori[sz]ed"
    r"|令牌|鉴权|认证失败",
    re.IGNORECASE,
)
"""A rejected credential, said in words rather than with a 401/403 (xAI answers a wrong key with 400)."""


def moderated(text: str) -> bool:
    """Whether ``text`` says a moderation or content-policy filter blocked the request or result."""
    return POLICY_WORDS.search(text) is not None


@dataclass(frozen=True, slots=True)
class Words:
    """The words an error text is read for, in this order: a policy block, a quota or rate
    limit, a rejected credential. ``quota`` and ``auth`` add an upstream's own words to the
    shared ones (the Jimeng aggregator's cookies and credits); policy words are the same for all."""

    quota: re.Pattern[str] | None = None
    auth: re.Pattern[str] | None = None

    def reason(self, text: str) -> Reason | None:
        if moderated(text):
            return "content_policy"
        if EXHAUSTED_WORDS.search(text):
            return "quota_exhausted"
        if QUOTA_WORDS.search(text) or (self.quota is not None and self.quota.search(text)):
            return "rate_limited"
        if AUTH_WORDS.search(text) or (self.auth is not None and self.auth.search(text)):
            return "auth"
        return None


WORDS = Words()


@dataclass(frozen=True, slots=True)
class Meaning:
    """What an upstream's code means: a reason, and a few words for the message (``account overdue``)."""

    reason: Reason
    what: str = ""


Codes = Mapping[str | int, Meaning]
"""An upstream's own codes, first match wins: an ``int`` key matches the HTTP status, a ``str``
key one that appears in the reply's code or message (``"SensitiveContentDetected"`` matches
``InputTextSensitiveContentDetected``)."""


@dataclass(frozen=True, slots=True)
class Said:
    """One error from an upstream, read out of its reply (or a failed task)."""

    label: str
    """Who answered, at the head of the message (``"grok"``, ``"gitee_async task"``)."""
    status: int = 0
    """The HTTP status, or the status the error carries; 0 (or 2xx) for an error inside a success."""
    text: str = ""
    """Its message, with our secrets already scrubbed."""
    code: str = ""
    """Its machine code(s), if any (``RateLimitExceeded.EndpointRPMExceeded``, ``RESOURCE_EXHAUSTED``)."""
    retry_after: float = 0.0
    """Its retry hint in seconds (``Retry-After``, ``RetryInfo``)."""
    credential: str = ""
    """How the credential used is named in messages: ``"key #2"``, ``"cookie #1 or apikey"``."""


def classify(
    said: Said, *, codes: Codes | None = None, words: Words = WORDS, default: Reason = "upstream_error"
) -> ProviderFailure:
    """The typed failure for what an upstream said: the one classifier.

    In order: the upstream's ``codes``; 401/403 → ``auth``; 429 → ``rate_limited`` (``quota_exhausted``
    if its words say a balance ran out); the
    ``words`` of its message (policy, quota, credential); 404 → ``unsupported``; 408/504/524 →
    ``timeout``; other 4xx → ``bad_request``; 5xx → ``upstream_error``; and ``default`` for an
    error without an HTTP error status (inside a 200, a failed task).
    """
    meaning = _coded(said, codes) or _meaning(said, words, default)
    return ProviderFailure(meaning.reason, _message(said, meaning), status=said.status, retry_after=said.retry_after)


def _coded(said: Said, codes: Codes | None) -> Meaning | None:
    for key, meaning in (codes or {}).items():
        if key == said.status if isinstance(key, int) else (key in said.code or key in said.text):
            return meaning
    return None


def _meaning(said: Said, words: Words, default: Reason) -> Meaning:
    status = said.status
    if status in (401, 403):
        return Meaning("auth")
    said_reason = words.reason(said.text)
    if status == 429:
        # OpenAI says an empty balance with a 429 too ("insufficient_quota"): not a rate limit.
        return Meaning("quota_exhausted" if said_reason == "quota_exhausted" else "rate_limited")
    if said_reason is not None:
        return Meaning(said_reason)
    if status == 404:
        return Meaning("unsupported")
    if status in (408, 504, 524):
        return Meaning("timeout")
    if 400 <= status < 500:
        return Meaning("bad_request")
    return Meaning("upstream_error" if status >= 500 else default)


def _message(said: Said, meaning: Meaning) -> str:
    """``grok HTTP 429: <text>``; ``ark HTTP 400 Code: blocked by moderation: <text>``;
    ``gitee: key #1 rejected (401): <text>``."""
    text = short(said.text)
    status = str(said.status) if said.status >= 400 else ""
    if meaning.reason == "auth" and said.credential:
        tag = " ".join(x for x in (status, said.code) if x)
        head = f"{said.label}: {said.credential}" + (f": {meaning.what}" if meaning.what else " rejected")
        return head + (f" ({tag})" if tag else "") + (f": {text}" if text else "")
    head = said.label + (f" HTTP {status}" if status else "") + (f" {said.code}" if said.code else "")
    what = meaning.what or ("authentication failed" if meaning.reason == "auth" else "")
    parts = [p for p in (what, text) if p]
    return f"{head}: {': '.join(parts)}" if parts else head


# ---- reading an error reply -------------------------------------------------------------------


def error_body(label: str, response: httpx.Response, *, html: str | None = None) -> Any:
    """An error reply's body: its JSON, else its text. ``html`` stands for a web page's text
    when given (``"an HTML error page"``: a page says nothing a message should carry)."""
    head = response.content[:64].lstrip().lower()
    if html is not None and (
        "html" in response.headers.get("content-type", "") or head.startswith((b"<!doctype", b"<html"))
    ):
        return html
    try:
        return json_body(label, response)
    except ValueError:
        return response.text


def error_text(body: Any) -> str:
    """The human message inside an error body of the usual shapes (OpenAI, Gemini, Gitee, Ark)."""
    if isinstance(body, str):
        return body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            for key in ("message", "msg", "description", "detail", "code", "status"):
                if isinstance(err.get(key), str) and err[key]:
                    return str(err[key])
        if isinstance(err, str):
            return err
        for key in ("message", "msg", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])
    if body is None:
        return ""
    try:
        return json.dumps(body, ensure_ascii=False)[:300]
    except (RecursionError, TypeError, ValueError):
        # Only a value no upstream JSON decoder here produces (they bound the depth); still typed.
        raise ProviderFailure("invalid_response", "error body is not plain JSON (nested too deeply?)") from None


def http_failure(
    label: str,
    response: httpx.Response,
    *,
    credential: str = "",
    clean: Callable[[str], str] = redact,
    text: Callable[[Any], str] = error_text,
    codes: Codes | None = None,
    words: Words = WORDS,
    html: str | None = None,
) -> ProviderFailure:
    """:func:`classify` for an HTTP error reply of the usual shape.

    ``clean`` scrubs what the upstream echoed (the key of the call); ``text`` finds the
    message in the body (:func:`error_text`, or an upstream's own reader); ``html`` replaces
    an HTML page's text (:func:`error_body`).
    """
    said = clean(text(error_body(label, response, html=html))) or response.reason_phrase
    return classify(
        Said(
            label,
            response.status_code,
            said,
            retry_after=retry_after_seconds(response.headers),
            credential=credential,
        ),
        codes=codes,
        words=words,
    )


# ---- message text -----------------------------------------------------------------------------


def scrub(text: str, *secrets: str) -> str:
    """``text`` with the given secrets (and every registered one) replaced by ``***``, in every
    form an upstream echoes them in (raw, URL-encoded, base64 at any offset, JSON-escaped).

    For messages built from upstream bodies, which may echo a key or cookie back; the
    process-wide redactor only knows secrets registered at start, so callers pass the
    key of the call at hand explicitly.
    """
    return redact(mask_forms(text, secrets))


def short(text: str, limit: int = 200) -> str:
    """One line, redacted, at most ``limit`` characters."""
    one = " ".join(redact(text).split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


# ---- retry hints ------------------------------------------------------------------------------

MAX_RETRY_AFTER = 86_400.0
"""A retry hint longer than a day (``inf``, ``1e400``) is read as a day: finite, and far past any
``policy.max_retry_after``, so the router moves on at once."""


def _hint(seconds: float) -> float:
    if math.isnan(seconds):
        return 0.0
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


def retry_after_seconds(headers: Mapping[str, str]) -> float:
    """Seconds from ``Retry-After`` (delta or HTTP date) or ``retry-after-ms``; 0 when absent.

    Always a finite number in ``[0, MAX_RETRY_AFTER]``, whatever the header says.
    """
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return _hint(float(ms) / 1000)
        except ValueError:
            pass  # not a number: the Retry-After header may still say
    value = headers.get("retry-after")
    if not value:
        return 0.0
    try:
        return _hint(float(value))
    except ValueError:
        try:
            return _hint(parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError, OverflowError):
            return 0.0
