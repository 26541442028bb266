#!/usr/bin/env python3
"""Regenerate the plugin's files that are derived from the core, so they cannot drift from it.

Usage::

    python deploy/plugin_sources.py            # rewrite them
    python deploy/plugin_sources.py --check    # exit 1 if any is out of date

* ``_conf_schema.json`` — AstrBot's settings page, from ``services`` ``Config``;
* ``requirements.txt`` — what AstrBot pip-installs for the plugin: pyproject's dependencies;
* the settings table in ``docs/astrbot.md``, and the README's AstrBot section (a copy of that page).

Needs the project installed (``pip install -e .``): it imports ``aiimg``.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"
README_START, README_END = "<!-- astrbot-section:start -->", "<!-- astrbot-section:end -->"


def requirements() -> str:
    """The core's runtime dependencies, one per line."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    return "".join(f"{d}\n" for d in deps)


def docs_with_table(text: str, table: str) -> str:
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table}{END}{tail}"


def readme_with_section(readme: str, section: str) -> str:
    head, _, rest = readme.partition(README_START)
    _, _, tail = rest.partition(README_END)
    return f"{head}{README_START}\n{section.rstrip()}\n{README_END}{tail}"


def wanted() -> dict[Path, str]:
    """Every generated file and the text it must have."""
    from aiimg.astrbot_bridge.schema import render_json, settings_table

    docs = docs_with_table((ROOT / "docs" / "astrbot.md").read_text(encoding="utf-8"), settings_table())
    readme = readme_with_section((ROOT / "README.md").read_text(encoding="utf-8"), docs)
    return {
        ROOT / "_conf_schema.json": render_json(),
        ROOT / "requirements.txt": requirements(),
        ROOT / "docs" / "astrbot.md": docs,
        ROOT / "README.md": readme,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--check", action="store_true", help="fail if a generated file is out of date")
    args = p.parse_args(argv)
    files = wanted()
    stale = [path for path, text in files.items() if path.read_text(encoding="utf-8") != text]
    if args.check:
        if stale:
            names = ", ".join(str(path.relative_to(ROOT)) for path in stale)
            print(f"out of date (run python deploy/plugin_sources.py): {names}", file=sys.stderr)
            return 1
        return 0
    for path in stale:
        path.write_text(files[path], encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
