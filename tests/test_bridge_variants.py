"""The old plugin's forced-backend variants (/gedit /qedit /g改图 /q改图 /g自拍 /q自拍 /g<预设> /q<预设>).

Pure parsing (no AstrBot import), and the chain the router then plans for them.
"""

from __future__ import annotations

import pytest

from aiimg.astrbot_bridge.commands import find_command, parse
from aiimg.messages import JobRequested
from aiimg.services.config import config_from_dict
from aiimg.services.domain.routing import plan_chain

PRESETS = {"手办化": "Figure style"}


@pytest.mark.parametrize(
    ("text", "kind", "backend", "prompt"),
    [
        ("gedit 换成红色", "edit", "gemini", "换成红色"),
        ("g改图 换成红色", "edit", "gemini", "换成红色"),
        ("qedit 加帽子", "edit", "gitee", "加帽子"),
        ("q改图 加帽子", "edit", "gitee", "加帽子"),
        ("g自拍 海边", "selfie", "gemini", "海边"),
        ("q自拍", "selfie", "gitee", ""),
        ("g手办化 加底座", "edit", "gemini", "Figure style, 加底座"),
        ("q手办化", "edit", "gitee", "Figure style"),
        ("改图 y", "edit", "", "y"),
        ("手办化", "edit", "", "Figure style"),
    ],
)
def test_variants_parse_with_their_backend(text: str, kind: str, backend: str, prompt: str) -> None:
    req = parse(text, PRESETS)
    assert req is not None
    assert (req.kind, req.backend, req.prompt) == (kind, backend, prompt)


def test_variant_after_an_image_is_found_and_selfie_ref_is_not_a_selfie() -> None:
    req = find_command("[图片] /q自拍 海边", PRESETS)
    assert req is not None and (req.kind, req.backend) == ("selfie", "gitee")
    ref = parse("自拍参考 设置", PRESETS)
    assert ref is not None and ref.kind == "selfie_ref"


def test_variant_backend_goes_first_and_fallbacks_follow() -> None:
    cfg = config_from_dict(
        {"edit": {"provider": "local", "fallback_1": "gitee_async", "gemini_native": {"api_keys": ["k"]},
                  "gitee_async": {"api_keys": ["k"]}}}
    )  # fmt: skip
    for backend, first in (("gemini", "gemini_native"), ("gitee", "gitee_async")):
        req = JobRequested(job_id="j", op="edit", backend=backend)
        assert plan_chain(cfg, req).chain[0] == first
    assert plan_chain(cfg, JobRequested(job_id="j", op="edit", backend="gemini")).chain == [
        "gemini_native",
        "gitee_async",
    ]
