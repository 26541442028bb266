"""What the Gitee AI (Moark) providers share: headers and the reading of error bodies.

Gitee has no published error schema. Observed shapes are ``{"error":{"message":…}}``,
``{"error":"<code>","message":…}`` (task API) and ``{"message":…}``; messages are often
Chinese, which the shared words (``_errors``) cover.
"""

from __future__ import annotations

from typing import Any

import httpx

from ...messages import Reason
from ..domain.errors import ProviderFailure
from ._errors import Codes, Meaning, Said, classify, error_text, http_failure, scrub

__all__ = ("GITEE_CODES", "gitee_failure", "gitee_headers", "gitee_message", "gitee_said")

NO_PACKAGE = "尚未绑定到任何资源包"
"""The key exists but has no quota package: it cannot be used until one is bought."""

GITEE_CODES: Codes = {NO_PACKAGE: Meaning("auth", "not bound to any resource package")}


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
    return error_text(body)


def gitee_said(
    label: str,
    text: str,
    *,
    position: int,
    status: int = 0,
    default: Reason = "upstream_error",
    codes: Codes | None = None,
) -> ProviderFailure:
    """A typed failure from a message alone (task failures and 200-with-error bodies); ``text`` scrubbed."""
    said = Said(label, status, text, credential=f"key #{position}")
    return classify(said, codes={**GITEE_CODES, **(codes or {})}, default=default)


def gitee_failure(
    label: str, resp: httpx.Response, *, position: int, key: str, codes: Codes | None = None
) -> ProviderFailure:
    """Map an HTTP error from Gitee; the key is scrubbed from anything the body echoes."""
    return http_failure(
        label,
        resp,
        credential=f"key #{position}",
        clean=lambda text: scrub(text, key),
        text=gitee_message,
        codes={**GITEE_CODES, **(codes or {})},
    )
