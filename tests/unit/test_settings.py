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
