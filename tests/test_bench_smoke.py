"""The benchmark entry point runs end to end at tiny sizes and writes every figure.

No timing is asserted (the machine is shared and noisy): only that ``python -m bench
--quick`` exits 0, prints its table, and writes JSON in which every figure of issue 5
is present, error-free and carries measured numbers beside a baseline.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench._figures import FIGURES

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = ("overhead", "throughput", "concurrency", "failover", "breaker", "blobs", "memory", "recovery")


@pytest.mark.timeout(240)
def test_quick_bench_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "figure / metric" in done.stdout
    doc = json.loads(out.read_text())
    assert doc["quick"] is True
    assert doc["machine"]["nproc"] >= 1 and doc["machine"]["cpu_model"]
    assert tuple(FIGURES) == EXPECTED
    assert set(doc["figures"]) == set(EXPECTED)
    for key in EXPECTED:
        figure = doc["figures"][key]
        assert "error" not in figure, (key, figure.get("error"))
        assert figure["rows"], key
        for row in figure["rows"]:
            assert row["target"], (key, row["metric"])
            assert row["baseline_label"], (key, row["metric"])
            for field in ("value", "baseline"):
                value = row[field]
                assert isinstance(value, (int, float)) and math.isfinite(value), (key, row["metric"], field, value)
            assert isinstance(row["met"], bool), (key, row["metric"])


def test_unknown_figure_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "nope", "--json", str(tmp_path / "r.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown figure" in done.stderr
    assert not (tmp_path / "r.json").exists()
