"""The ``rate_limits:`` and ``cache:`` sections as ``load_settings`` and ``check-config`` read them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from costproxy.cli import main
from costproxy.errors import ConfigError
from costproxy.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = yaml.safe_load((ROOT / "config" / "costproxy.yaml").read_text())


def write(tmp_path: Path, change: dict[str, Any]) -> Path:
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "config" / "models.yaml").write_text((ROOT / "config" / "models.yaml").read_text())
    path = tmp_path / "config" / "costproxy.yaml"
    path.write_text(yaml.safe_dump({**SHIPPED, **change}))
    return path


def test_the_sections_are_typed(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, {
        "rate_limits": {"on_store_error": "refuse", "limits": [
            {"id": "k", "scope_type": "key", "scope_id": "*", "requests_per_minute": 60, "tokens_per_minute": 10**5}]},
        "cache": {"default_ttl_s": 60, "share": "team", "header": "all"}}), {})
    assert settings.rate_limits.settings.on_store_error == "refuse"
    assert settings.rate_limits.static[0].tokens_per_minute == 10**5
    assert (settings.cache.default_ttl_s, settings.cache.share, settings.cache.header) == (60, "team", "all")
    shipped = load_settings(ROOT / "config" / "costproxy.yaml", {})
    assert shipped.rate_limits.static == () and shipped.cache.enabled  # nothing limited or cached by default


@pytest.mark.parametrize(("change", "expected"), [
    ({"rate_limits": {"limits": [{"id": "k", "scope_type": "key", "scope_id": "*"}]}},
     "rate_limits.limits[0]: give requests_per_minute, tokens_per_minute or both"),
    ({"rate_limits": {"limits": [{"id": "k", "scope_type": "tenant", "scope_id": "*", "requests_per_minute": 1}]}},
     "rate_limits.limits[0].scope_type: must be one of org, team, project, user, key (got 'tenant')"),
    ({"rate_limits": {"enabled": "yes"}}, "rate_limits.enabled: must be true or false (got 'yes')"),
    ({"rate_limits": "60/min"}, "rate_limits: must be a mapping"),
    ({"cache": {"share": "world"}}, "cache.share: must be one of principal, user, project, team, org, global"),
    ({"cache": {"max_bytes": -1}}, "cache.max_bytes: must be >= 1024"),
    ({"cache": {"enabled": 1}}, "cache.enabled: must be true or false (got 1)"),
])
def test_bad_values_name_the_path(tmp_path: Path, change: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, change), {})
    assert expected in str(info.value)


def test_check_config_reports_a_bad_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, {"rate_limits": [{"id": "k", "scope_type": "key", "scope_id": "*",
                                             "requests_per_minute": 0}]})
    assert main(["check-config", "--config", str(path)]) == 2  # a configuration error
    assert "rate_limits[0].requests_per_minute: must be >= 1 (got 0)" in capsys.readouterr().err
