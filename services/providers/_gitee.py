"""What the Gitee AI (Moark) providers share: headers and the reading of error bodies.

Gitee has no published error schema. Observed shapes are ``{"error":{"message":…}}``,
``{"error":"<code>","message":…}`` (task API) and ``{"message":…}``; messages are often
Chinese, so the keyword checks here cover both languages.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from ...messages import Reason
from ..domain.errors import ProviderFailure
from ._common import error_text, failure_from_response, json_body, scrub, short

__all__ = ("classify", "gitee_failure", "gitee_headers", "gitee_message")

NO_PACKAGE = "尚未绑定到任何资源包"
"""The key exists but has no quota package: it cannot be used until one is bought."""

_QUOTA = re.compile(r"quota|credit|rate[ _-]?limit|too many requests|额度|余额|欠费|限流|频繁", re.IGNORECASE)
_POLICY = re.compile(r"nsfw|moderation|sensitive|safety|违规|敏感|审核|不合规|色情", re.IGNORECASE)
_AUTH = re.compile(r"invalid[ _-]?(api[ _-]?)?(key|token)|unauthori[sz]ed|令牌|鉴权|认证失败", re.IGNORECASE)


def gitee_headers(key: str) -> dict[str, str]:
    """Bearer auth plus the failover header the official samples send."""
    return {"Authorization": f"Bearer {key}", "X-Failover-Enabled": "true"}


def gitee_message(body: Any) -> str:
    """The human text of a Gitee error body, whichever shape it has."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return error_text(err) if err else ""
        if isinstance(err, str) and err:
            extra = body.get("message")
            return f"{err}: {extra}" if isinstance(extra, str) and extra and extra != err else err
        for key in ("message", "msg", "detail"):
            if isinstance(body.get(key), str) and body[key]:
                return str(body[key])
    if isinstance(body, str):
        return body
    return error_text(body)


def classify(
    label: str, text: str, *, position: int, status: int = 0, default: Reason = "upstream_error"
) -> ProviderFailure:
    """A typed failure from a message alone (task failures and 200-with-error bodies)."""
    said = short(text)
    if NO_PACKAGE in text:
        return ProviderFailure("auth", f"{label}: key #{position} is not bound to any resource package", status=status)
    if _AUTH.search(text):
        return ProviderFailure("auth", f"{label}: key #{position} rejected", status=status)
    if _POLICY.search(text):
        return ProviderFailure("content_policy", f"{label}: blocked by moderation: {said}", status=status)
    if _QUOTA.search(text):
        return ProviderFailure("rate_limited", f"{label}: quota or rate limit: {said}", status=status)
    return ProviderFailure(default, f"{label}: {said}", status=status)


def gitee_failure(label: str, resp: httpx.Response, *, position: int, key: str) -> ProviderFailure:
    """Map an HTTP error from Gitee; the key is scrubbed from anything the body echoes."""
    try:
        body: Any = json_body(label, resp)
    except ValueError:
        body = resp.text
    text = scrub(gitee_message(body), key)
    status = resp.status_code
    if NO_PACKAGE in text:
        return classify(label, text, position=position, status=status)
    if status in (401, 403):
        return ProviderFailure("auth", f"{label}: key #{position} rejected ({status})", status=status)
    if status != 429 and _POLICY.search(text):
        return classify(label, text, position=position, status=status)
    if status != 429 and re.search(r"quota|credit|额度|余额|欠费", text, re.IGNORECASE):
        return classify(label, text, position=position, status=status)
    return failure_from_response(label, resp, key_index=position, body=text)
