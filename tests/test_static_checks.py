"""The project's own code passes ruff and mypy (strict): CI runs them with the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_ruff_lint_and_format() -> None:
    lint = _run(str(BIN / "ruff"), "check", ".", cwd=ROOT)
    assert lint.returncode == 0, lint.stdout[-4000:]
    fmt = _run(str(BIN / "ruff"), "format", "--check", ".", cwd=ROOT)
    assert fmt.returncode == 0, fmt.stdout[-4000:]


def test_mypy_strict(tmp_path: Path) -> None:
    # The core imports itself relatively: mypy checks it as the package it is installed as,
    # aiimg, through a link of that name (the checkout's own folder name may be anything).
    (tmp_path / "aiimg").symlink_to(ROOT, target_is_directory=True)
    run = _run(
        str(BIN / "mypy"),
        "--config-file",
        "aiimg/pyproject.toml",
        "--cache-dir",
        str(ROOT / ".mypy_cache"),
        "aiimg/messages",
        "aiimg/services",
        "aiimg/astrbot_bridge",
        "aiimg/main.py",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-4000:]
    assert "Success" in run.stdout
