"""``jimeng``: a third-party Jimeng / Doubao drawing aggregator, one ``GET {api_url}?…``.

Query: ``description`` (prompt), ``type`` (style), ``ratio``, ``model``,
``conversation_id`` and ``Cookie`` (from one ``cookie_list`` entry
``conversation_id:cookie``, split at the first ``:``, entries used round-robin) and
``apikey``. Success is ``{"code": 200, "image_url": [url, …] | url}``; the first image is
downloaded. Anything else with a 200 is a business error, typed by its message.

It only draws (``operations = {"draw"}``), so it has no ``edit.jimeng`` block and is in no
edit, selfie or fallback menu. The aggregator takes an input image only as a public ``url``
parameter; the old plugin published the image through AstrBot's file service, which this
system does not have (and a data URL in a query string is far past URL limits). An edit
that reaches this provider anyway (an old router) fails as ``unsupported``.
"""

from __future__ import annotations

import math
import re
from typing import Any

import httpx
import msgspec

from ..domain.config import ConfigBase
from ..domain.errors import ProviderFailure
from ..domain.settings import ProviderSettings
from ..domain.sizes import parse_output
from ._common import KeyRing, download, each_key
from ._errors import Codes, Meaning, Said, Words, classify, http_failure, scrub
from ._json import parse_json
from .base import AttemptContext, Output, Provider

__all__ = ("RATIOS", "JimengProvider", "JimengSettings", "parse_cookie", "pick_ratio")

LABEL = "jimeng"

RATIOS = ("1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9")
"""Ratios the aggregator offers; a job's ratio or ``WxH`` is sent as the closest one."""

HEADERS = {"User-Agent": "Mozilla/5.0", "Accept": "application/json"}

JIMENG_WORDS = Words(
    quota=re.compile(r"积分|次数|上限|too many", re.IGNORECASE),
    auth=re.compile(r"cookie|登录|登陆|失效|过期|未授权|apikey|api key|sessionid|token", re.IGNORECASE),
)
"""The aggregator's own words beyond the shared ones: its credits and counts, its cookies and sessions."""

JIMENG_CODES: Codes = {"code 401": Meaning("auth"), "code 403": Meaning("auth")}
"""Business codes (in a 200 answer) that name a rejected cookie or apikey."""

CREDENTIAL = "cookie #{position} or apikey"


def parse_cookie(entry: str) -> tuple[str, str] | None:
    """``"123:sid=a"`` → ``("123", "sid=a")``; split at the first ``:`` only. None if malformed."""
    conversation, sep, cookie = entry.partition(":")
    if not sep or not conversation.strip() or not cookie.strip():
        return None
    return conversation.strip(), cookie.strip()


class JimengSettings(ProviderSettings, kw_only=True):
    api_url: str = ""
    apikey: str = ""
    cookie_list: list[str] = msgspec.field(default_factory=list)
    default_style: str = "真实"
    default_ratio: str = "1:1"
    default_model: str = "Seedream 4.0"

    def configured(self) -> bool:
        return bool(self.api_url.strip() and self.apikey and self.cookie_list)


class JimengProvider(Provider):
    alias = "jimeng"
    operations = frozenset({"draw"})
    settings_type = JimengSettings
    menu_order = 60
    block_order = 50

    def __init__(self, config: ConfigBase) -> None:
        super().__init__(config)
        self._rings: dict[tuple[str, ...], KeyRing] = {}

    async def run(self, ctx: AttemptContext) -> Output:
        settings = ctx.settings
        assert isinstance(settings, JimengSettings)
        if ctx.op != "draw":
            raise ProviderFailure(
                "unsupported", f"{LABEL}: edits need the input image at a public URL, which aiimg does not host"
            )
        if not settings.api_url.strip():
            raise ProviderFailure("bad_request", f"{LABEL}: api_url is not configured")
        if not settings.apikey.strip():
            raise ProviderFailure("auth", f"{LABEL}: apikey is not configured")
        entries = [e.strip() for e in settings.cookie_list if parse_cookie(e)]
        if not entries:
            raise ProviderFailure("auth", f"{LABEL}: cookie_list has no conversation_id:cookie entry")
        ring = self._rings.setdefault(tuple(entries), KeyRing(entries))
        ratio = pick_ratio(ctx.output, settings.default_ratio)
        apikey = settings.apikey.strip()

        async def call(position: int, entry: str) -> Output:
            parsed = parse_cookie(entry)
            assert parsed is not None
            conversation, cookie = parsed
            params = {
                "description": ctx.prompt,
                "type": settings.default_style,
                "ratio": ratio,
                "model": settings.default_model,
                "conversation_id": conversation,
                "Cookie": cookie,
                "apikey": apikey,
            }
            secrets = (entry, cookie, apikey)
            resp = await ctx.http.get(settings.api_url.strip(), params=params, headers=HEADERS)
            if resp.status_code >= 400:
                raise _http_failure(resp, position, secrets)
            body = parse_json(LABEL, resp)
            url = _image_url(body, position, secrets)
            data, final = await download(ctx.downloads, url, ctx.config.network, label=f"{LABEL} image")
            return Output(data=data, source_url=final)

        return await each_key(ring, call, noun="cookie")


def pick_ratio(output: str, default: str) -> str:
    """The job's ratio (or its ``WxH``'s) as the closest offered ratio, else ``default_ratio``."""
    try:
        intent = parse_output(output) if output.strip() else None
    except ValueError as exc:
        raise ProviderFailure("bad_request", f"{LABEL}: {exc}") from None
    if intent is None:
        return default
    if intent.width and intent.height:
        value = intent.width / intent.height
    elif intent.ratio:
        a, b = (int(x) for x in intent.ratio.split(":"))
        value = a / b
    else:
        return default
    want = math.log(value)
    return min(RATIOS, key=lambda r: abs(math.log(int(r.split(":")[0]) / int(r.split(":")[1])) - want))


def _image_url(body: Any, position: int, secrets: tuple[str, ...]) -> str:
    if not isinstance(body, dict):
        raise ProviderFailure("invalid_response", f"{LABEL}: reply is not a JSON object")
    code = body.get("code")
    urls = body.get("image_url")
    if str(code) == "200" and urls:
        first = urls[0] if isinstance(urls, list) else urls
        if isinstance(first, str) and first.startswith(("http://", "https://")):
            return first
        raise ProviderFailure("invalid_response", f"{LABEL}: image_url is not an http(s) URL")
    if str(code) == "200":
        raise ProviderFailure("no_image", f"{LABEL}: code 200 without image_url")
    raw = body.get("message") or body.get("msg") or body.get("text") or body.get("data") or f"code {code}"
    raise _business_failure(scrub(str(raw), *secrets), position, code)


def _business_failure(text: str, position: int, code: Any) -> ProviderFailure:
    """A typed failure for a ``code != 200`` reply, from its message (the codes are not standard)."""
    said = Said(LABEL, text=text, code=f"code {code}", credential=CREDENTIAL.format(position=position))
    return classify(said, codes=JIMENG_CODES, words=JIMENG_WORDS)


def _message(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("message") or body.get("msg") or body.get("error") or body)
    return str(body)


def _http_failure(resp: httpx.Response, position: int, secrets: tuple[str, ...]) -> ProviderFailure:
    return http_failure(
        LABEL,
        resp,
        credential=CREDENTIAL.format(position=position),
        clean=lambda text: scrub(text, *secrets),
        text=_message,
        words=JIMENG_WORDS,
    )
