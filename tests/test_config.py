from __future__ import annotations

from pathlib import Path

import pytest

from aiimg.services.config import Config, config_from_dict, load_config, secret_values
from aiimg.services.domain.errors import ConfigError


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


def test_secrets_include_cookie_values_url_credentials_and_extra_body_keys() -> None:
    cfg = config_from_dict(
        {
            "nats": {"url": "nats://aiimg:natsPassw0rd@10.0.0.1:4222,nats://b:4222"},
            "network": {"proxy": "http://proxyuser:proxyPass99@127.0.0.1:7890"},
            "draw": {
                "jimeng": {"cookie_list": ["123:sessionid=abcdef0123456789; theme=dark"]},
                "openai_compat": {
                    "base_url": "https://gw-user:gwSecret77@gw.example/v1",
                    "extra_body": {"api_key": "extra-body-key-1234", "quality": "high"},
                },
            },
        }
    )
    secrets = secret_values(cfg)
    assert {"natsPassw0rd", "proxyPass99", "gwSecret77", "gw-user:gwSecret77"} <= secrets
    assert "abcdef0123456789" in secrets  # the cookie's value on its own: upstreams echo just that
    assert "dark" not in secrets and "high" not in secrets  # short or not secret
    assert "extra-body-key-1234" in secrets


def test_a_plain_user_name_in_a_url_is_not_a_secret() -> None:
    cfg = config_from_dict({"nats": {"url": "nats://aiimg@10.0.0.1:4222"}})
    assert "aiimg" not in secret_values(cfg)
