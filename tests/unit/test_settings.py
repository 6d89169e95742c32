from __future__ import annotations

from pathlib import Path

import pytest

from costproxy.errors import ConfigError
from costproxy.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_loads_with_every_environment_override() -> None:
    settings = load_settings(ROOT / "config" / "costproxy.yaml", {
        "COSTPROXY_HOST": "0.0.0.0", "COSTPROXY_PORT": "9090",
        "COSTPROXY_STORE_URL": "redis://127.0.0.1:6379/0", "COSTPROXY_ADMIN_TOKEN": "t",
        "OPENAI_API_KEY": "sk-x"})
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 9090)
    assert settings.store_url == "redis://127.0.0.1:6379/0" and settings.admin_token == "t"
    assert settings.providers["openai"].api_key == "sk-x"
    assert len(settings.registry.models) >= 25


def test_unknown_keys_name_file_and_path(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text((ROOT / "config" / "models.yaml").read_text())
    config = tmp_path / "costproxy.yaml"
    text = (ROOT / "config" / "costproxy.yaml").read_text().replace("  port: 8080", "  prot: 8080")
    config.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(config, {})
    assert "costproxy.yaml: server.prot: unknown key" in str(err.value)


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    config = tmp_path / "costproxy.yaml"
    config.write_text("server: {host: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config, {})
    assert "invalid YAML" in str(err.value) and "line" in str(err.value)


def test_anthropic_kind_and_kind_only_options(tmp_path) -> None:
    import pytest
    import yaml

    from costproxy.errors import ConfigError
    from costproxy.settings import load_settings
    from tests.conftest import TEST_MODELS

    (tmp_path / "models.yaml").write_text(yaml.safe_dump(TEST_MODELS))
    config = tmp_path / "costproxy.yaml"

    def write(sim: dict[str, object]) -> None:
        config.write_text(yaml.safe_dump({"providers": {"sim": sim, "sim2": {"base_url": "http://x"}},
                                          "models_file": "models.yaml"}))

    write({"kind": "anthropic", "base_url": "http://a/v1", "api_key_env": "K", "count_tokens": True})
    provider = load_settings(config, {"K": "secret"}).providers["sim"]
    assert (provider.auth, provider.anthropic_version, provider.count_tokens) == ("x-api-key", "2023-06-01", True)
    write({"base_url": "http://a/v1", "responses_api": True})
    assert load_settings(config, {}).providers["sim"].responses_api
    for wrong in ({"kind": "anthropic", "base_url": "http://a", "responses_api": True},
                  {"base_url": "http://a", "count_tokens": True}, {"kind": "azure", "base_url": "http://a",
                                                                   "api_version": "1", "anthropic_version": "x"}):
        write(wrong)
        with pytest.raises(ConfigError, match="applies to kind"):
            load_settings(config, {})
