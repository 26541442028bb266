"""Adding a provider is adding one module: proven on a copy of the code with one file dropped in.

The copy is the repository's code byte for byte (checked) plus ``services/providers/sketch.py``.
Run from the copy, in its own processes, the new provider is in the capabilities, the config
(its ``draw.sketch`` block loads from TOML with its own defaults, its key is a secret, an unknown
key is refused by name), the registry, the short names, the AstrBot settings page, the bus
layout and the NATS permissions — and ``aiimg draw --backend sk`` runs a job through it end to
end on an embedded nats-server. Nothing but the new module names it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CODE = ("aiimg", "messages", "services", "astrbot_bridge", "deploy/permissions.py")
"""What the copy holds: the package, and the generator of the NATS permissions."""

MODULE = '''\
"""``sketch``: a provider that exists only to show that one module is all a provider needs."""

from __future__ import annotations

import io

from PIL import Image

from ..domain.settings import ProviderSettings
from ..infra.media import MediaInfo
from .base import AttemptContext, Output, Provider


class SketchSettings(ProviderSettings, kw_only=True):
    api_key: str = ""
    colour: str = "#2a7fff"
    edge: int = 48

    def configured(self) -> bool:
        return bool(self.api_key)


class SketchProvider(Provider):
    alias = "sketch"
    operations = frozenset({"draw"})
    settings_type = SketchSettings
    short_names = ("sk",)

    async def run(self, ctx: AttemptContext) -> Output:
        s = ctx.settings
        assert isinstance(s, SketchSettings)
        buf = io.BytesIO()
        Image.new("RGB", (s.edge, s.edge), s.colour).save(buf, format="PNG")
        return Output(data=buf.getvalue(), info=MediaInfo("image/png", s.edge, s.edge))
'''

PROBE = """\
import json, os, sys
import aiimg.services
assert aiimg.services.__file__.startswith(os.getcwd()), aiimg.services.__file__
from aiimg.astrbot_bridge.schema import build_schema
from aiimg.messages import Names
from aiimg.services.config import CAPABILITIES, Config, load_config, secret_values
from aiimg.services.domain.errors import ConfigError
from aiimg.services.infra.bus import consumer_configs
from aiimg.services.providers.catalog import load_provider

def refusal(path):
    try:
        load_config(path)
    except ConfigError as exc:
        return str(exc)
    return None

cfg = load_config("aiimg.toml")
provider = load_provider("sketch", cfg)
items = build_schema()
print(json.dumps({
    "capabilities": {a: sorted(ops) for a, ops in CAPABILITIES.items()},
    "short_names": {t: dict(m) for t, m in Config.short_names.items()},
    "default_block": {k: getattr(Config().draw.sketch, k) for k in type(Config().draw.sketch).__struct_fields__},
    "loaded_block": {k: getattr(cfg.draw.sketch, k) for k in type(cfg.draw.sketch).__struct_fields__},
    "edit_has_block": hasattr(Config().edit, "sketch"),
    "enabled": cfg.enabled_providers(),
    "canonical": cfg.canonical("draw", "SK"),
    "secret": os.environ["SKETCH_KEY"] in secret_values(cfg),
    "provider": [type(provider).__module__, type(provider).__name__],
    "unknown_key": refusal("typo.toml"),
    "unknown_block": refusal("edit.toml"),
    "draw_menu": items["draw"]["items"]["provider"]["options"],
    "edit_menu": items["edit"]["items"]["provider"]["options"],
    "block_item": items["draw"]["items"]["sketch"],
    "consumers": [c.durable_name for c in consumer_configs(Names("aiimg"), cfg)],
}))
"""


def _copy(dest: Path) -> None:
    for name in CODE:
        src, out = ROOT / name, dest / name
        if src.is_dir():
            shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out)


def _files(base: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name in CODE:
        top = base / name
        for path in [top] if top.is_file() else sorted(top.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                out[str(path.relative_to(base))] = path.read_bytes()
    return out


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture
def repo_with_sketch(tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    _copy(copy)
    (copy / "services" / "providers" / "sketch.py").write_text(MODULE, encoding="utf-8")
    return copy


def test_one_new_module_is_a_whole_provider(repo_with_sketch: Path, tmp_path: Path) -> None:
    copy = repo_with_sketch
    before, after = _files(ROOT), _files(copy)
    assert set(after) - set(before) == {"services/providers/sketch.py"}
    assert set(before) == set(after) - {"services/providers/sketch.py"}
    assert all(after[name] == data for name, data in before.items())  # nothing else edited

    (copy / "aiimg.toml").write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        '[draw]\nprovider = "local"\n'
        '[draw.sketch]\napi_key = "env:SKETCH_KEY"\ncolour = "#10c020"\n'
    )
    (copy / "typo.toml").write_text('[draw.sketch]\napi_key = "k"\ncolor = "#10c020"\n')
    (copy / "edit.toml").write_text('[edit.sketch]\napi_key = "k"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("AIIMG_CONFIG", "PYTHONPATH")}
    env["SKETCH_KEY"] = "sk-sketch-0123456789"

    probe = _run([sys.executable, "-c", PROBE], copy, env)
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout)
    assert list(seen["capabilities"])[-1] == "sketch" and seen["capabilities"]["sketch"] == ["draw"]
    assert seen["short_names"]["draw"]["sk"] == "sketch" and "sk" not in seen["short_names"]["edit"]
    assert seen["default_block"] == {
        "timeout": 120.0,
        "max_retries": 2,
        "supports_edit": True,
        "api_key": "",
        "colour": "#2a7fff",
        "edge": 48,
    }
    assert seen["loaded_block"] == {**seen["default_block"], "api_key": env["SKETCH_KEY"], "colour": "#10c020"}
    assert seen["edit_has_block"] is False
    assert seen["enabled"] == ["local", "sketch"] and seen["canonical"] == "sketch" and seen["secret"] is True
    assert seen["provider"] == ["aiimg.services.providers.sketch", "SketchProvider"]
    assert seen["unknown_key"] == "typo.toml: unknown key draw.sketch.color"
    assert seen["unknown_block"] == "edit.toml: unknown key edit.sketch"
    assert seen["draw_menu"][-1] == "sketch" and "sketch" not in seen["edit_menu"]
    assert seen["block_item"]["condition"] == {"provider": "sketch"}
    assert seen["block_item"]["items"]["colour"] == {"description": "colour", "type": "string", "default": "#2a7fff"}
    assert "provider-sketch" in seen["consumers"]

    auth = _run([sys.executable, "deploy/permissions.py", "--print"], copy, env)
    assert auth.returncode == 0, auth.stderr[-3000:]
    assert "aiimg-sketch" in auth.stdout and "aiimg.job.*.attempt.sketch" in auth.stdout

    cli = [sys.executable, "-m", "aiimg.services.app.cli", "--config", "aiimg.toml"]
    job = _run([*cli, "draw", "a green square", "--backend", "sk", "-o", "out.png"], copy, env)
    assert job.returncode == 0, job.stderr[-3000:]
    assert "attempt 1 → sketch" in job.stderr
    with Image.open(copy / "out.png") as img:
        assert img.size == (48, 48) and img.convert("RGB").getpixel((0, 0)) == (0x10, 0xC0, 0x20)


def test_the_copy_without_the_module_knows_no_such_provider(tmp_path: Path) -> None:
    """The control: the same probe fails on a plain copy, so the test above sees the module, not a leftover."""
    copy = tmp_path / "plain"
    _copy(copy)
    (copy / "aiimg.toml").write_text('[draw.sketch]\napi_key = "k"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("AIIMG_CONFIG", "PYTHONPATH")}
    script = textwrap.dedent(
        """
        import os
        import aiimg.services
        assert aiimg.services.__file__.startswith(os.getcwd()), aiimg.services.__file__
        from aiimg.services.config import CAPABILITIES, load_config
        from aiimg.services.domain.errors import ConfigError
        assert "sketch" not in CAPABILITIES
        try:
            load_config("aiimg.toml")
        except ConfigError as exc:
            print(exc)
        """
    )
    run = _run([sys.executable, "-c", script], copy, env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "aiimg.toml: unknown key draw.sketch"
