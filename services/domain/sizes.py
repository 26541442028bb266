"""Size intents: ``4K`` / ``2K`` / ``1K``, ``WxH``, or a ratio such as ``16:9``.

Providers map an intent to what their upstream takes (a ``size`` string, a Gemini
``imageSize`` + ``aspectRatio``, an Ark preset). The empty intent means "use the
provider's configured default" (never a hard-coded small size, unlike the old ``/aiimg``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ("RATIOS", "SizeIntent", "parse_output", "split_output_suffix")

RATIOS = ("1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "21:9", "9:21", "5:4", "4:5")
_RES = {"1K": 1024, "2K": 2048, "4K": 4096}
_WXH = re.compile(r"^(\d{2,5})\s*[xX×*]\s*(\d{2,5})$")
_RATIO = re.compile(r"^(\d{1,2})\s*[:：]\s*(\d{1,2})$")


@dataclass(frozen=True, slots=True)
class SizeIntent:
    """A parsed output intent. Any field may be empty/None."""

    resolution: str | None = None
    """``1K`` / ``2K`` / ``4K``."""
    width: int | None = None
    height: int | None = None
    ratio: str | None = None
    """``W:H`` as typed, e.g. ``16:9``."""

    @property
    def empty(self) -> bool:
        return self.resolution is None and self.width is None and self.ratio is None

    def pixels(self, default_long_edge: int = 4096) -> tuple[int, int]:
        """A concrete ``(width, height)``: explicit size, else ratio at the resolution's long edge."""
        if self.width and self.height:
            return self.width, self.height
        edge = _RES.get(self.resolution or "", default_long_edge)
        if self.ratio:
            a, b = (int(x) for x in self.ratio.split(":"))
            if a >= b:
                return edge, max(64, round(edge * b / a / 16) * 16)
            return max(64, round(edge * a / b / 16) * 16), edge
        return edge, edge


def parse_output(text: str) -> SizeIntent:
    """Parse ``text`` (space-separated tokens such as ``16:9 4K``). Raises ``ValueError`` on junk."""
    resolution: str | None = None
    width = height = None
    ratio: str | None = None
    for token in text.split():
        up = token.strip().upper()
        if up in ("4096", "2048", "1024"):
            up = {"4096": "4K", "2048": "2K", "1024": "1K"}[up]
        if up in _RES:
            resolution = up
            continue
        m = _WXH.match(token.strip())
        if m:
            width, height = int(m.group(1)), int(m.group(2))
            if not (64 <= width <= 16384 and 64 <= height <= 16384):
                raise ValueError(f"size out of range: {token}")
            continue
        r = _RATIO.match(token.strip())
        if r and int(r.group(1)) > 0 and int(r.group(2)) > 0:
            ratio = f"{int(r.group(1))}:{int(r.group(2))}"
            continue
        raise ValueError(f"not a size, resolution or ratio: {token!r} (try 4K, 2K, 1K, 1024x1536 or 16:9)")
    return SizeIntent(resolution=resolution, width=width, height=height, ratio=ratio)


def split_output_suffix(prompt: str, max_tokens: int = 2) -> tuple[str, str]:
    """Split trailing size tokens off a prompt: ``"猫 16:9"`` → ``("猫", "16:9")``."""
    tokens = prompt.split()
    tail: list[str] = []
    while tokens and len(tail) < max_tokens:
        try:
            parse_output(tokens[-1])
        except ValueError:
            break
        tail.insert(0, tokens.pop())
    if not tokens:  # a prompt that is only a size is a prompt
        return prompt.strip(), ""
    return " ".join(tokens), " ".join(tail)
