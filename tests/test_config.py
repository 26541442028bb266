from __future__ import annotations

from pathlib import Path

import pytest

from services.config import Config, config_from_dict, load_config, secret_values
from services.errors import ConfigError


def test_defaults_use_the_offline_local_provider() -> None:
    cfg = Config()
    assert cfg.draw.provider == "local" and cfg.enabled_providers() == ["local"]
    assert cfg.draw.grok.size == "4096x4096" and cfg.draw.gemini_native.resolution == "4K"


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown key draw\.grok\.api_key$"):
        config_from_dict({"draw": {"grok": {"api_key": "x"}}})


def test_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match=r"edit\.fallback\.max_retries: Expected `int`"):
        config_from_dict({"edit": {"fallback": {"max_retries": "many"}}})
    with pytest.raises(ConfigError, match=r"draw\.grok\.api_keys\[1\]"):
        config_from_dict({"draw": {"grok": {"api_keys": ["a", 3]}}})


def test_secrets_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_XAI_KEY", "xai-secret-value")
    cfg = config_from_dict({"draw": {"grok": {"api_keys": ["env:TEST_XAI_KEY"]}}})
    assert cfg.draw.grok.api_keys == ["xai-secret-value"]
    assert "xai-secret-value" in secret_values(cfg)
    with pytest.raises(ConfigError, match=r"draw\.grok\.api_keys\[0\]: environment variable MISSING_KEY_X is not set"):
        config_from_dict({"draw": {"grok": {"api_keys": ["env:MISSING_KEY_X"]}}})


def test_cookie_secrets_include_the_cookie_part() -> None:
    cfg = config_from_dict({"draw": {"jimeng": {"cookie_list": ["123:sessionid=abcdef"]}}})
    assert {"123:sessionid=abcdef", "sessionid=abcdef"} <= secret_values(cfg)


def test_toml_loading_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "a.toml"
    good.write_text('[draw]\nprovider = "grok"\nfallback_1 = "local"\n[draw.grok]\napi_keys = ["k1"]\n')
    cfg = load_config(good)
    assert cfg.draw.provider == "grok" and cfg.can_serve("draw", "grok")
    bad = tmp_path / "b.toml"
    bad.write_text("[draw\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)
    typo = tmp_path / "c.toml"
    typo.write_text("[draw]\nprovder = 'grok'\n")
    with pytest.raises(ConfigError, match=r"c\.toml: unknown key draw\.provder"):
        load_config(typo)
    monkeypatch.setenv("AIIMG_CONFIG", str(good))
    assert load_config().draw.provider == "grok"
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_presets_parse_name_colon_prompt() -> None:
    cfg = config_from_dict({"edit": {"presets": ["手办化:Figure style", "bad line", "x：full width colon"]}})
    assert cfg.presets() == {"手办化": "Figure style", "x": "full width colon"}


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_numbers_are_refused_with_the_key(tmp_path: Path, value: str) -> None:
    """TOML allows ``inf`` and ``nan``: a deadline of ``inf`` used to reach the router's events."""
    path = tmp_path / "a.toml"
    path.write_text(f"[policy]\nmax_retry_after = {value}\n[draw.local]\ntimeout = 5.0\n")
    with pytest.raises(ConfigError, match=r"policy\.max_retry_after: must be a finite number"):
        load_config(path)
    path.write_text(f"[draw.grok]\ntimeout = {value}\n")
    with pytest.raises(ConfigError, match=r"draw\.grok\.timeout: must be a finite number"):
        load_config(path)
