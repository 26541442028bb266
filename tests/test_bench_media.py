"""``python -m bench.media_check --quick`` runs and measures what ``services/media.py`` relies on.

No timing is asserted: only that it exits 0 and writes a figure for every sample and
check, and that the broken samples tell the checks apart the way the choice in
``services/media.py`` assumes (``verify()`` passes all of them; the checks it uses reject all).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_media_check_bench_runs_and_its_broken_samples_separate_the_checks(tmp_path: Path) -> None:
    out = tmp_path / "media.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.media_check", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    print("\n" + done.stdout)
    doc = json.loads(out.read_text())
    assert len(doc["samples"]) == 5
    for name, row in doc["samples"].items():
        assert row["inspect"]["ms"] > 0 and row["load"]["ms"] > 0, name
    for name, verdict in doc["broken"].items():
        assert verdict["verify"] is False, name  # why a decode is needed at all
        assert verdict["inspect"] is True, name
        assert all(verdict[c] for c in ("zlib", "draft") if c in verdict), name
    assert set(doc["loop_stall_ms"]) == {"inspect", "GIL-holding reference"}
