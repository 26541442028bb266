"""The table on stdout, the machine description, and the JSON file."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from ._figures import Figure

__all__ = ("machine", "table")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = ""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    try:
        server = subprocess.run(
            [_nats_server(), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except Exception:
        server = ""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory": mem,
        "loadavg_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nats_server": server,
    }


def _nats_server() -> str:
    from aiimg.services.infra.embedded import find_nats_server

    return find_nats_server()


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    text = f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.0f}"
    return f"{text} {unit}".strip()


def table(figures: list[Figure]) -> str:
    """A plain-text table: one line per measured row, target and baseline beside it."""
    header = ("figure / metric", "measured", "target", "met", "baseline", "baseline is")
    lines: list[tuple[str, ...]] = [header]
    notes: list[str] = []
    for fig in figures:
        lines.append((f"[{fig.key}] {fig.title}", "", "", "", "", ""))
        if fig.error:
            lines.append(("  ERROR", fig.error[:90], "", "", "", ""))
        for row in fig.rows:
            met = "yes" if row.met else ("NO" if row.met is not None else "")
            lines.append(
                (
                    f"  {row.metric}",
                    _num(row.value, row.unit),
                    row.target,
                    met,
                    _num(row.baseline, row.unit),
                    row.baseline_label,
                )
            )
            if row.note:
                notes.append(f"[{fig.key}] {row.metric}: {row.note}")
    widths = [max(len(line[i]) for line in lines if line[1] or i == 0) for i in range(len(header))]
    out = []
    for line in lines:
        if not line[1] and line[0].startswith("["):
            out.append(line[0])
            continue
        out.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
    return "\n".join(out) + "\n\nNotes:\n" + "\n".join(f"  {n}" for n in notes)


def markdown(doc: dict[str, Any]) -> str:
    """The results JSON as a Markdown table (``python -m bench._report results.json``)."""
    out = [
        "| figure | metric | measured | target | met | baseline (same run) | baseline is |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, fig in doc["figures"].items():
        if fig.get("error"):
            out.append(f"| {key} | ERROR | {fig['error']} | | | | |")
        for row in fig["rows"]:
            met = "yes" if row["met"] else "**no**"
            out.append(
                f"| {key} | {row['metric']} | {_num(row['value'], row['unit'])} | {row['target']} | {met} "
                f"| {_num(row['baseline'], row['unit'])} | {row['baseline_label']} |"
            )
    return "\n".join(out)


if __name__ == "__main__":
    import json
    import sys

    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
