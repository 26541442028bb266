"""Summarise a py-spy ``--format raw`` profile (collapsed stacks) into hot spots.

``python -m bench._profile FILE [--top N]``: the busiest functions by own samples and by
inclusive samples. py-spy records only threads that are running (not idle ones), and
samples that end in the event loop's ``select`` are left out too, so the shares are
shares of the CPU the process actually used.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

__all__ = ("summarise",)

_IDLE = ("select (selectors.py", "epoll", "_run_once (asyncio/base_events.py")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^)]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m["file"]
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{m['func']} ({file})"


def summarise(path: Path, top: int = 25) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        leaf = frames[-1]
        if any(mark in leaf for mark in _IDLE[:2]):
            idle += count
            continue
        busy += count
        own[_short(leaf)] += count
        for name in {_short(f) for f in frames}:
            inclusive[name] += count
    out = [f"{path.name}: {busy} samples on CPU ({idle} more waiting in select, left out)"]
    out.append("  own time (leaf frames):")
    out += [f"    {100 * c / max(1, busy):5.1f}%  {name}" for name, c in own.most_common(top)]
    out.append("  inclusive time:")
    out += [f"    {100 * c / max(1, busy):5.1f}%  {name}" for name, c in inclusive.most_common(top)]
    return "\n".join(out)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("files", nargs="+")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    for f in args.files:
        print(summarise(Path(f), args.top))
