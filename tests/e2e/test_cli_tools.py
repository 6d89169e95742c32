"""CLI tools that need no server: explain, rules check, check-config with rules."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.conftest import TEST_MODELS, TEST_QUALITY
from tests.e2e.harness import cli


def write_config(tmp_path: Path, rules: dict[str, object] | None = None) -> Path:
    (tmp_path / "rules").mkdir(exist_ok=True)
    if rules is not None:
        (tmp_path / "rules" / "r.yaml").write_text(yaml.safe_dump(rules))
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(TEST_MODELS))
    (tmp_path / "quality.yaml").write_text(yaml.safe_dump(TEST_QUALITY))
    config = tmp_path / "costproxy.yaml"
    provider = {"base_url": "http://127.0.0.1:9/v1", "enabled": True}  # a keyless local server, switched on
    config.write_text(yaml.safe_dump({"providers": {"sim": provider, "sim2": provider},
                                      "models_file": "models.yaml", "rules_dir": "rules"}))
    return config


def test_explain_shows_rules_and_choice(tmp_path: Path) -> None:
    rules = {"rules": [{"id": "cap", "name": "cap", "priority": 1, "conditions": [],
                        "actions": [{"type": "cap-output-tokens", "params": {"max_tokens": 50}}]}]}
    config = write_config(tmp_path, rules)
    result = cli(config, "explain", "--message", "Classify this review as positive or negative: superb", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["taskType"] == "classification"
    assert data["chain"][0] in {"small", "backup"}
    assert [r["rule_id"] for r in data["rulesFired"]] == ["cap"]
    text = cli(config, "explain", "--message", "Solve 17 * 23 step by step and prove it", "--model", "auto:quality")
    assert text.returncode == 0 and "model: big" in text.stdout


def test_rules_check_reports_file_rule_and_field(tmp_path: Path) -> None:
    bad = {"rules": [{"id": "oops", "name": "x", "priority": 1,
                      "conditions": [{"field": "request.nope", "operator": "equals", "value": 1}],
                      "actions": [{"type": "log", "params": {"message": "m"}}]}]}
    config = write_config(tmp_path, bad)
    result = cli(config, "rules", "check")
    assert result.returncode == 1
    assert "r.yaml" in result.stderr + result.stdout and "oops" in result.stderr + result.stdout
    assert "request.nope" in result.stderr + result.stdout
    checked = cli(config, "check-config")
    assert checked.returncode != 0


def test_explain_without_provider_keys_says_what_to_set(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    keyed = {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "CP_TEST_UNSET_KEY"}
    raw = yaml.safe_load(config.read_text())
    raw["providers"] = {"sim": keyed, "sim2": dict(keyed)}
    config.write_text(yaml.safe_dump(raw))
    env = {"CP_TEST_UNSET_KEY": ""}
    auto = cli(config, "explain", "--message", "hello", env=env)
    assert auto.returncode == 1
    assert "503 provider_not_configured" in auto.stderr and "$CP_TEST_UNSET_KEY" in auto.stderr
    assert "Traceback" not in auto.stderr
    named = cli(config, "explain", "--model", "big", "--message", "hello", "--json", env=env)
    assert named.returncode == 1
    assert json.loads(named.stdout)["error"]["code"] == "provider_not_configured"


def test_check_config_never_prints_the_store_password(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    raw = yaml.safe_load(config.read_text())
    raw["store"] = {"url": "redis://ops:s3cret-pw@127.0.0.1:6399/9"}
    config.write_text(yaml.safe_dump(raw))
    checked = cli(config, "check-config")
    output = checked.stdout + checked.stderr
    assert "redis://ops:***@127.0.0.1:6399/9" in output, output
    assert "s3cret-pw" not in output
