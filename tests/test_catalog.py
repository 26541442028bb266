"""The provider catalog: what it finds in ``services/providers/``, what it builds, what it refuses."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest

from aiimg.astrbot_bridge.schema import build_schema
from aiimg.messages import Names
from aiimg.services.config import CAPABILITIES, Config, config_from_dict, secret_values
from aiimg.services.domain.config import ConfigBase
from aiimg.services.domain.errors import ConfigError
from aiimg.services.domain.settings import ProviderSettings, VideoSection
from aiimg.services.infra.bus import consumer_configs
from aiimg.services.providers.base import AttemptContext, Output, Provider
from aiimg.services.providers.catalog import CATALOG, Catalog, load_provider

# ---- the shipped providers ------------------------------------------------------------------

SHIPPED = {
    "local": ({"draw", "edit", "selfie"}, "local.LocalProvider", "LocalSettings"),
    "grok": ({"draw", "edit", "selfie"}, "grok.GrokProvider", "GrokSettings"),
    "gemini_native": ({"draw", "edit", "selfie"}, "gemini_native.GeminiNativeProvider", "GeminiNativeSettings"),
    "gemini_openai": ({"draw", "edit", "selfie"}, "openai_compat.GeminiOpenAIProvider", "GeminiOpenAISettings"),
    "openai_compat": ({"draw", "edit", "selfie"}, "openai_compat.OpenAICompatProvider", "OpenAICompatSettings"),
    "ark": ({"draw", "edit", "selfie"}, "ark.ArkProvider", "ArkSettings"),
    "jimeng": ({"draw"}, "jimeng.JimengProvider", "JimengSettings"),
    "gitee": ({"draw"}, "gitee.GiteeProvider", "GiteeSettings"),
    "gitee_async": ({"edit", "selfie"}, "gitee_async.GiteeAsyncProvider", "GiteeAsyncSettings"),
    "grok_video": ({"video"}, "grok_video.GrokVideoProvider", "VideoSettings"),
}
"""Every provider module in the package, in menu order: what the old hand-written tables said."""


def test_discovery_finds_every_provider_module_with_its_declarations() -> None:
    assert list(CAPABILITIES) == list(SHIPPED)  # the settings page's menu order
    assert CAPABILITIES == {alias: frozenset(ops) for alias, (ops, _, _) in SHIPPED.items()}
    assert Config.capabilities is CAPABILITIES and CATALOG.aliases == tuple(SHIPPED)
    for alias, (_, where, settings) in SHIPPED.items():
        cls = CATALOG.provider_class(alias)
        assert f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__qualname__}" == where
        assert cls.settings_type.__name__ == settings and cls.settings_type.__module__ == cls.__module__
        assert load_provider(alias, Config()).alias == alias


def test_short_names_are_per_table_as_before() -> None:
    assert Config.short_names == {
        "draw": {"gemini": "gemini_native", "openai": "openai_compat"},
        "edit": {"gemini": "gemini_native", "openai": "openai_compat", "gitee": "gitee_async"},
    }
    cfg = Config()
    assert cfg.canonical("draw", " Gemini ") == "gemini_native" and cfg.canonical("draw", "gitee") == "gitee"
    assert cfg.canonical("edit", "gitee") == "gitee_async" and cfg.canonical("selfie", "openai") == "openai_compat"


def test_config_blocks_are_the_providers_settings_in_the_old_order() -> None:
    cfg = Config()
    draw = [f for f in type(cfg.draw).__struct_fields__ if f in CAPABILITIES]
    edit = [f for f in type(cfg.edit).__struct_fields__ if f in CAPABILITIES]
    assert draw == ["grok", "gemini_native", "gemini_openai", "openai_compat", "jimeng", "gitee", "ark", "local"]
    assert edit == ["grok", "gemini_native", "gemini_openai", "openai_compat", "gitee_async", "ark", "local"]
    for alias in draw:
        assert type(cfg.block("draw", alias)) is CATALOG.provider_class(alias).settings_type
    for alias in edit:
        assert type(cfg.block("selfie", alias)) is CATALOG.provider_class(alias).settings_type
    assert type(cfg.video) is CATALOG.provider_class("grok_video").settings_type
    assert cfg.block("video", "grok_video") is cfg.video and cfg.block("draw", "grok_video") is cfg.video
    assert list(type(Config()).__struct_fields__[:4]) == ["draw", "edit", "selfie", "video"]


@pytest.mark.parametrize(
    ("section", "alias"),
    [(s, a) for s in ("draw", "edit") for a in CAPABILITIES] + [("video", "")],
)
def test_every_block_loads_its_defaults_and_rejects_an_unknown_key(section: str, alias: str) -> None:
    ops = CAPABILITIES.get(alias, frozenset())
    has_block = section == "video" or ("draw" in ops if section == "draw" else bool({"edit", "selfie"} & ops))
    data: dict[str, Any] = {section: {alias: {}}} if alias else {section: {}}
    if not has_block:
        with pytest.raises(ConfigError, match=rf"unknown key {section}\.{alias}$"):
            config_from_dict(data)
        return
    path = f"{section}.{alias}" if alias else section
    block = config_from_dict(data)
    value = getattr(block, section)
    value = getattr(value, alias) if alias else value
    assert msgspec.to_builtins(value) == msgspec.to_builtins(type(value)())
    bad = {section: {alias: {"no_such_key": 1}}} if alias else {section: {"no_such_key": 1}}
    with pytest.raises(ConfigError, match=rf"unknown key {re.escape(path)}\.no_such_key$"):
        config_from_dict(bad)


def test_every_provider_gets_a_work_consumer() -> None:
    names = Names("aiimg")
    consumers = {c.durable_name for c in consumer_configs(names, Config())}
    assert consumers == {names.router_consumer} | {names.provider_consumer(a) for a in CAPABILITIES}


def test_the_domain_works_without_any_provider() -> None:
    bare = ConfigBase()
    assert bare.capabilities == {} and bare.enabled_providers() == []
    assert not bare.can_serve("draw", "local") and bare.block("draw", "local") is None


# ---- a catalog of other classes ---------------------------------------------------------------


class _Run:
    async def run(self, ctx: AttemptContext) -> Output:
        raise AssertionError("not called")


def _provider(alias: Any, ops: Any, settings: Any, **extra: Any) -> type[Provider]:
    body = {"alias": alias, "operations": ops, "settings_type": settings, "run": _Run.run, **extra}
    return type(f"P_{alias}", (Provider,), body)


class _Sketch(ProviderSettings, kw_only=True):
    pen: str = "pencil"
    api_keys: list[str] = msgspec.field(default_factory=list)


class _Film(VideoSection, kw_only=True):
    provider: str = "film"
    reel: int = 3


def test_an_explicit_catalog_builds_its_own_config_registry_and_menus() -> None:
    sketch = _provider("sketch", frozenset({"draw", "edit"}), _Sketch, short_names=("sk",), menu_order=5)
    film = _provider("film", frozenset({"video"}), _Film)
    catalog = Catalog([film, sketch])
    assert dict(catalog.capabilities) == {"sketch": {"draw", "edit"}, "film": {"video"}}
    assert catalog.short_names == {"draw": {"sk": "sketch"}, "edit": {"sk": "sketch"}}
    cls = catalog.config_type
    assert issubclass(cls, ConfigBase) and cls.capabilities is catalog.capabilities
    cfg = msgspec.convert({"draw": {"sketch": {"pen": "ink", "api_keys": ["k-1234"]}}, "video": {"reel": 5}}, cls)
    assert cfg.block("draw", "sketch") == _Sketch(pen="ink", api_keys=["k-1234"])
    assert cfg.block("edit", "sketch") == _Sketch() and cfg.block("video", "film") == _Film(reel=5)
    assert cfg.enabled_providers() == ["film", "sketch"] and "k-1234" in secret_values(cfg)
    assert not hasattr(cfg.draw, "grok") and type(catalog.load_provider("sketch", cfg)) is sketch
    with pytest.raises(ConfigError, match=r"no provider implementation for 'grok' \(known: film, sketch\)"):
        catalog.load_provider("grok", cfg)
    items = build_schema(cls)
    assert items["draw"]["items"]["provider"]["options"] == ["sketch"]
    assert items["video"]["items"]["provider"]["options"] == ["film"]
    assert items["edit"]["items"]["sketch"]["condition"] == {"provider": "sketch"}
    assert items["video"]["items"]["reel"]["default"] == 3


_MENUS = {
    "draw": ("draw.provider", "draw.fallback_1", "draw.fallback_2", "draw.fallback_3"),
    "edit": ("edit.provider", "edit.fallback_1", "edit.fallback_2", "edit.fallback_3", "selfie.prefer_provider"),
    "video": ("video.provider",),
}


def _menu(items: dict[str, Any], path: str) -> list[str]:
    section, key = path.split(".")
    return [o for o in items[section]["items"][key]["options"] if o not in ("", "auto")]


def test_menus_offer_a_provider_only_for_the_operations_its_class_declares() -> None:
    """The settings page's provider menus come from each class's ``operations``, nothing else:
    a draw-only provider can never be offered for edits again (jimeng was, issue 11)."""
    sketch = _provider("sketch", frozenset({"draw", "edit", "selfie"}), _Sketch, menu_order=1)
    doodle = _provider("doodle", frozenset({"draw"}), _Sketch, menu_order=2)
    retouch = _provider("retouch", frozenset({"edit", "selfie"}), _Sketch, menu_order=3)
    items = build_schema(Catalog([retouch, doodle, sketch]).config_type)
    assert all(_menu(items, p) == ["sketch", "doodle"] for p in _MENUS["draw"])
    assert all(_menu(items, p) == ["sketch", "retouch"] for p in _MENUS["edit"])
    assert "doodle" not in items["edit"]["items"] and "retouch" not in items["draw"]["items"]
    # The shipped page: every alias in a menu declares that menu's operation, and every one that does is there.
    shipped = build_schema(Config)
    for op, paths in _MENUS.items():
        serving = [e.alias for e in CATALOG.entries if op in CATALOG.provider_class(e.alias).operations]
        for path in paths:
            assert _menu(shipped, path) == serving, path
    assert "jimeng" in _menu(shipped, "draw.provider") and "jimeng" not in _menu(shipped, "edit.provider")


_BROKEN: list[tuple[Any, str]] = [
    (lambda: [_provider("Bad-Name", frozenset({"draw"}), _Sketch)], "alias must be a lower-case name"),
    (
        lambda: [_provider("a", frozenset({"draw"}), _Sketch), _provider("a", frozenset({"edit"}), _Sketch)],
        "declared by",
    ),
    (lambda: [_provider("a", frozenset({"paint"}), _Sketch)], "operations must be a non-empty frozenset"),
    (lambda: [_provider("a", {"draw"}, _Sketch)], "operations must be a non-empty frozenset"),
    (lambda: [_provider("a", frozenset({"draw"}), dict)], "settings_type must be a ProviderSettings"),
    (lambda: [_provider("a", frozenset({"draw", "video"}), _Film)], "serves only 'video'"),
    (lambda: [_provider("a", frozenset({"video"}), _Sketch)], "settings_type must be a VideoSection subclass"),
    (
        lambda: [_provider("a", frozenset({"draw"}), _Film)],
        "is a VideoSection, the video block, but 'a' makes no video",
    ),
    (lambda: [_provider("presets", frozenset({"edit"}), _Sketch)], "is a key of draw/edit itself"),
    (lambda: [_provider("a", frozenset({"draw"}), _Sketch, short_names=("B!",))], "short name 'B!'"),
    (
        lambda: [
            _provider("a", frozenset({"draw"}), _Sketch),
            _provider("b", frozenset({"draw"}), _Sketch, short_names=("a",)),
        ],
        "would hide the provider 'a'",
    ),
    (
        lambda: [
            _provider("a", frozenset({"edit"}), _Sketch, short_names=("x",)),
            _provider("b", frozenset({"edit"}), _Sketch, short_names=("x",)),
        ],
        "short name 'x' is already 'a''s for edit",
    ),
    (
        lambda: [
            _provider("a", frozenset({"video"}), _Film),
            _provider("b", frozenset({"video"}), type("_Other", (VideoSection,), {}, kw_only=True)),
        ],
        "share the one video block",
    ),
]
"""Classes that break the provider contract, and what the refusal says."""


@pytest.mark.parametrize(("classes", "message"), _BROKEN, ids=[m for _, m in _BROKEN])
def test_a_provider_that_breaks_the_contract_is_refused_by_name(classes: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Catalog(classes())


def test_an_abstract_provider_is_refused() -> None:
    abstract = type("Half", (Provider,), {"alias": "half", "operations": frozenset({"draw"}), "settings_type": _Sketch})
    with pytest.raises(ConfigError, match=r"Half: provider 'half' does not implement run\(\)"):
        Catalog([abstract])
