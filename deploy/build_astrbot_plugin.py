#!/usr/bin/env python3
"""Build the AstrBot plugin zip from the repository: the same files AstrBot's "install from URL" takes.

Usage::

    python deploy/build_astrbot_plugin.py [--out dist]   # → dist/astrbot_plugin_aiimg.zip

The repository root *is* the plugin (``main.py``, ``metadata.yaml``, ``_conf_schema.json``,
``requirements.txt`` beside ``messages/``, ``services/`` and ``astrbot_bridge/``; every import
inside them is relative). The zip holds exactly those under one top folder,
``astrbot_plugin_aiimg/`` (the ``name`` in ``metadata.yaml``), for AstrBot's "install from
file". Standard library only: it copies files, it does not import the project.

The generated plugin files are refreshed by ``python deploy/plugin_sources.py``.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = "astrbot_plugin_aiimg"
PACKAGES = ("messages", "services", "astrbot_bridge")
PLUGIN_FILES = ("main.py", "metadata.yaml", "_conf_schema.json", "requirements.txt")
SKIP_DIRS = frozenset({"__pycache__"})

__all__ = ("PACKAGES", "PLUGIN", "PLUGIN_FILES", "build", "main")


def _python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(folder).parts))


def build(out_dir: Path) -> Path:
    """Write ``<out_dir>/astrbot_plugin_aiimg.zip`` and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PLUGIN}.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in PLUGIN_FILES:
            z.write(ROOT / name, f"{PLUGIN}/{name}")
        z.write(ROOT / "docs" / "astrbot.md", f"{PLUGIN}/README.md")
        for package in PACKAGES:
            for path in _python_files(ROOT / package):
                z.write(path, f"{PLUGIN}/{path.relative_to(ROOT).as_posix()}")
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--out", default=str(ROOT / "dist"), help="output folder (default: dist/)")
    args = p.parse_args(argv)
    print(build(Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
