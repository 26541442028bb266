"""What every provider's settings type derives from, with the old plugin's v3 keys and defaults.

A provider declares its own settings class next to it, in its module in
``services/providers/`` (a :class:`ProviderSettings`; for the video operation a
:class:`VideoSection`). The provider catalog puts that class under ``draw.<alias>`` and/or
``edit.<alias>`` (or as the ``video`` block) of the loadable ``Config``. Unknown keys fail at
start (``forbid_unknown_fields``).
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ("CREDENTIAL_KEYS", "Block", "ProviderSettings", "VideoSection")

CREDENTIAL_KEYS = frozenset({"api_keys", "api_key", "apikey", "cookie_list", "token"})
"""Keys of a provider block that hold what the upstream authenticates with."""


class Block(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of every config block: strict, keyword-only."""


class ProviderSettings(Block, kw_only=True):
    """Keys every provider block has."""

    timeout: float = 120.0
    """Seconds one upstream call may take; the router adds a grace before it counts a timeout."""
    max_retries: int = 2
    """Retries on the same provider for retryable reasons (see ``policy``)."""
    supports_edit: bool = True

    def configured(self) -> bool:
        """True when the block has what it needs to make a call (keys, URLs)."""
        return True

    def missing_credentials(self) -> list[str]:
        """This block's credential keys (:data:`CREDENTIAL_KEYS`) that are empty; ``[]`` when it has
        none (``local``) or every one is set."""
        missing = []
        for key in self.__struct_fields__:
            if key not in CREDENTIAL_KEYS:
                continue
            value = getattr(self, key)
            items = value if isinstance(value, list) else [value]
            if not any(isinstance(v, str) and v.strip() for v in items):
                missing.append(key)
        return missing


class VideoSection(ProviderSettings, kw_only=True):
    """``video.*``: the one video block, read by the provider it names (``provider``) and the bridge.

    The block is flat, as in the old plugin, and its keys keep that plugin's order (the settings
    page lists them in declaration order): the keys a video API block has in common are declared
    here, in that order, and a video provider's settings class — a subclass, in the provider's
    module — narrows their types and defaults and appends its own keys after them. The bridge
    reads ``enabled``, ``send_*``, ``max_cached_videos`` and ``presets``; the router ``provider``.
    """

    enabled: bool = True
    provider: str = ""
    """The alias of the provider that makes videos (its class sets the default)."""
    server_url: str = ""
    api_key: str = ""
    api_mode: str = ""
    model: str = ""
    timeout_seconds: float = 180.0
    """Seconds one HTTP call may take (``timeout`` bounds the whole attempt)."""
    empty_response_retry: int = 2
    retry_delay: float = 2.0
    send_mode: Literal["auto", "url", "file"] = "auto"
    send_timeout_seconds: float = 90.0
    download_timeout_seconds: float = 300.0
    max_cached_videos: int = 20
    presets: list[str] = msgspec.field(default_factory=list)

    def configured(self) -> bool:
        return self.enabled
