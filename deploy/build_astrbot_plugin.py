#!/usr/bin/env python3
"""Build the AstrBot plugin zip: ``astrbot_bridge/`` plus vendored copies of ``messages/`` and ``services/``.

Usage::

    python deploy/build_astrbot_plugin.py [--out dist]   # → dist/astrbot_plugin_aiimg.zip
    python deploy/build_astrbot_plugin.py --sources       # refresh _conf_schema.json, requirements.txt, docs table

The zip has one top folder, ``astrbot_plugin_aiimg/`` (the ``name`` in metadata.yaml), so
AstrBot's "install from file" puts it at ``data/plugins/astrbot_plugin_aiimg``. The core
packages sit beside ``main.py``; ``_vendor.py`` adds that folder to ``sys.path`` only when
``messages``/``services`` are not importable already. ``_conf_schema.json`` is generated
from ``services.config.Config`` and ``requirements.txt`` from pyproject's dependencies, so
neither can drift from the core.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BRIDGE = ROOT / "astrbot_bridge"
PLUGIN = "astrbot_plugin_aiimg"
CORE = ("messages", "services")
PLUGIN_FILES = ("metadata.yaml", "_conf_schema.json", "requirements.txt")
SKIP_DIRS = {"__pycache__"}


def requirements() -> str:
    """The core's runtime dependencies, one per line (what AstrBot pip-installs for the plugin)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    return "".join(f"{d}\n" for d in deps)


def schema_json() -> str:
    sys.path.insert(0, str(ROOT))
    from astrbot_bridge.schema import render_json

    return render_json()


START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def docs_with_table(text: str) -> str:
    """``docs/astrbot.md`` with the settings table between its markers regenerated."""
    sys.path.insert(0, str(ROOT))
    from astrbot_bridge.schema import settings_table

    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{settings_table()}{END}{tail}"


README_START, README_END = "<!-- astrbot-section:start -->", "<!-- astrbot-section:end -->"


def readme_with_section(readme: str, section: str) -> str:
    """``README.md`` with its "Use with AstrBot" section replaced by ``docs/astrbot.md``."""
    head, _, rest = readme.partition(README_START)
    _, _, tail = rest.partition(README_END)
    return f"{head}{README_START}\n{section.rstrip()}\n{README_END}{tail}"


def write_sources() -> None:
    (BRIDGE / "_conf_schema.json").write_text(schema_json(), encoding="utf-8")
    (BRIDGE / "requirements.txt").write_text(requirements(), encoding="utf-8")
    docs = ROOT / "docs" / "astrbot.md"
    section = docs_with_table(docs.read_text(encoding="utf-8"))
    docs.write_text(section, encoding="utf-8")
    readme = ROOT / "README.md"
    readme.write_text(readme_with_section(readme.read_text(encoding="utf-8"), section), encoding="utf-8")


def _python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if not SKIP_DIRS.intersection(p.relative_to(folder).parts))


def build(out_dir: Path) -> Path:
    """Write ``<out_dir>/astrbot_plugin_aiimg.zip`` and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PLUGIN}.zip"
    generated = {"_conf_schema.json": schema_json(), "requirements.txt": requirements()}
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for path in _python_files(BRIDGE):
            z.write(path, f"{PLUGIN}/{path.relative_to(BRIDGE).as_posix()}")
        for name in PLUGIN_FILES:
            if name in generated:
                z.writestr(f"{PLUGIN}/{name}", generated[name])
            else:
                z.write(BRIDGE / name, f"{PLUGIN}/{name}")
        readme = ROOT / "docs" / "astrbot.md"
        if readme.is_file():
            z.write(readme, f"{PLUGIN}/README.md")
        for package in CORE:
            for path in _python_files(ROOT / package):
                z.write(path, f"{PLUGIN}/{path.relative_to(ROOT).as_posix()}")
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--out", default=str(ROOT / "dist"), help="output folder (default: dist/)")
    p.add_argument(
        "--sources", action="store_true", help="rewrite astrbot_bridge/_conf_schema.json and requirements.txt"
    )
    args = p.parse_args(argv)
    if args.sources:
        write_sources()
        print(BRIDGE / "_conf_schema.json")
        return 0
    print(build(Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
