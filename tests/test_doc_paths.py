"""Module paths named in the docs exist: a restructure that moves a module fails here, not in a reader's hands."""

from __future__ import annotations

import importlib
import re

import pytest

from .reliability.procs import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH = re.compile(r"\b((?:services|messages|astrbot_bridge)(?:[./][A-Za-z_][A-Za-z0-9_]*)+)")


def _named() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for ref in sorted(set(PATH.findall(doc.read_text(encoding="utf-8")))):
            out.append((doc.name, ref))
    return out


def _resolves(ref: str) -> bool:
    parts = re.sub(r"\.py$", "", ref).replace("/", ".").split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module("aiimg." + ".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


NAMED = _named()


def test_the_docs_name_modules() -> None:
    assert len(NAMED) > 20, "the pattern finds the docs' module paths"
    assert not _resolves("services.http.download_client")  # a path from before the restructure


@pytest.mark.parametrize(("doc", "ref"), NAMED, ids=[f"{d}:{r}" for d, r in NAMED])
def test_a_module_path_in_the_docs_exists(doc: str, ref: str) -> None:
    assert _resolves(ref), f"{doc} names {ref}, which does not exist"
