"""The `aiimg` command line, run as a real subprocess on the embedded default."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

from .helpers import png


def aiimg(*args: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AIIMG_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "aiimg.services.app.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def write_config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "aiimg.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n{extra}')
    return cfg


def test_draw_on_the_embedded_default_writes_a_png_and_trace_shows_it(tmp_path: Path) -> None:
    write_config(tmp_path)
    res = aiimg("draw", "a red fox in snow", "--output", "800x600", "-o", "fox.png", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "fox.png"
    with Image.open(tmp_path / "fox.png") as img:
        assert img.size == (800, 600)
    assert "attempt 1 → local" in res.stderr and "done" in res.stderr
    job = re.search(r"job (\S+) queued", res.stderr)
    assert job, res.stderr
    trace = aiimg("trace", job.group(1), cwd=tmp_path)
    assert trace.returncode == 0, trace.stderr
    lines = trace.stdout.splitlines()
    assert [line.split()[2] for line in lines] == [
        "job.requested.v1",
        "attempt.dispatched.v1",
        "attempt.succeeded.v1",
        "job.completed.v1",
    ]
    assert "800x600" in lines[2]


def test_edit_with_input_file(tmp_path: Path) -> None:
    write_config(tmp_path)
    (tmp_path / "in.png").write_bytes(png(320, 240))
    res = aiimg("edit", "add a hat", "-i", "in.png", "-o", "out.png", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    with Image.open(tmp_path / "out.png") as img:
        assert img.size == (320, 240)


def test_failure_exits_nonzero_with_each_reason(tmp_path: Path) -> None:
    write_config(tmp_path, '[draw]\nprovider = "grok"\nfallback_1 = "gitee"\n')
    res = aiimg("draw", "x", cwd=tmp_path)
    assert res.returncode == 1
    assert "grok: not configured" in res.stderr and "gitee: not configured" in res.stderr


def test_bad_config_is_reported_with_the_key(tmp_path: Path) -> None:
    write_config(tmp_path, "[draw]\nfallback_4 = 'x'\n")
    res = aiimg("draw", "x", cwd=tmp_path)
    assert res.returncode == 2 and "unknown key draw.fallback_4" in res.stderr


def test_unreadable_input_image_is_a_clear_error(tmp_path: Path) -> None:
    write_config(tmp_path)
    (tmp_path / "notimage.png").write_bytes(b"hello")
    res = aiimg("edit", "x", "-i", "missing.png", cwd=tmp_path)
    assert res.returncode == 1 and "cannot read input image missing.png" in res.stderr
    res = aiimg("edit", "x", "-i", "notimage.png", cwd=tmp_path)
    assert res.returncode == 1 and "input image rejected" in res.stderr


def test_client_commands_use_a_running_embedded_serve(tmp_path: Path) -> None:
    """`aiimg serve` on the embedded default announces itself; `aiimg draw` then uses it."""
    write_config(tmp_path, "[draw.local]\nsize = '300x200'\n")
    env = {k: v for k, v in os.environ.items() if k != "AIIMG_CONFIG"}
    serve = subprocess.Popen(
        [sys.executable, "-m", "aiimg.services.app.cli", "serve"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert serve.stderr is not None
        for line in serve.stderr:
            if "aiimg serving on" in line:
                break
        else:
            raise AssertionError("serve did not start")
        announced = tmp_path / "data" / "nats" / "serve.json"
        assert announced.is_file()
        res = aiimg("draw", "through the running service", "-o", "a.png", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        with Image.open(tmp_path / "a.png") as img:
            assert img.size == (300, 200)
    finally:
        serve.terminate()
        code = serve.wait(timeout=30)
        assert serve.stderr is not None
        serve.stderr.close()
    assert code == 0
    assert not announced.exists()
