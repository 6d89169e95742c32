"""The configuration experience through the real CLI: bad configs, option placement, discovery, init, serve."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from costproxy.defaults import PACKAGED_CONFIG, write_defaults
from tests.conftest import TEST_MODELS
from tests.e2e.harness import Serving, get_json

# Nothing from the developer's shell may leak in: no config path, no keys, no admin token.
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if not k.startswith("COSTPROXY_") and not k.endswith(("_API_KEY", "_SECRET"))}


def costproxy(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "costproxy", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**CLEAN_ENV, **(env or {})})


def in_parallel(*calls: tuple[Any, ...]) -> list[subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda call: costproxy(*call[0], cwd=call[1]), calls))


def shipped_copy(directory: Path, change: dict[str, Any] | None = None) -> Path:
    """The packaged config/ and rules/ written into ``directory``, with ``change`` merged into the YAML."""
    write_defaults(directory)
    path = directory / "config" / "costproxy.yaml"
    document = yaml.safe_load(path.read_text())
    for key, value in (change or {}).items():
        document[key] = {**document[key], **value} if isinstance(document.get(key), dict) else value
    path.write_text(yaml.safe_dump(document))
    return path


# The configs issue 8 found accepted by check-config and rejected by serve: (change, dotted path, value).
BAD_CONFIGS = [
    ({"budgets": {"bogus_key": 1}}, "budgets.bogus_key", "1"),
    ({"selection": {"economy_gap": 7}}, "selection.economy_gap", "7"),
    ({"alerts": {"nonsense": True}}, "alerts.nonsense", "True"),
    ({"fallback": {"chains": {"gpt-4o": ["no-such-model"]}}}, "fallback.chains.gpt-4o[0]", "'no-such-model'"),
    ({"selection": {"default_mode": "cheap"}}, "selection.default_mode", "'cheap'"),
]


def test_bad_configs_are_rejected_by_check_config_and_serve_alike(tmp_path: Path) -> None:
    configs = [shipped_copy(tmp_path / f"c{i}", change) for i, (change, _path, _value) in enumerate(BAD_CONFIGS)]
    calls = [(("check-config", "--config", str(c)), tmp_path) for c in configs]
    calls += [(("--config", str(c), "serve", "--port", "0"), tmp_path) for c in configs]
    results = in_parallel(*calls)
    for index, (_change, dotted, value) in enumerate(BAD_CONFIGS):
        for result in (results[index], results[index + len(configs)]):
            assert result.returncode == 2, result.args
            assert f"config error: {configs[index]}: {dotted}: " in result.stderr, result.stderr
            assert f"(got {value})" in result.stderr, result.stderr
            assert "listening" not in result.stdout + result.stderr


def test_global_options_work_before_and_after_every_kind_of_sub_command(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(TEST_MODELS))
    config = tmp_path / "costproxy.yaml"
    config.write_text(yaml.safe_dump({
        "providers": {"sim": {"base_url": "http://127.0.0.1:9/v1", "enabled": True},
                      "sim2": {"base_url": "http://127.0.0.1:9/v1", "enabled": True}},
        "store": {"url": f"sqlite:///{tmp_path / 'own.sqlite3'}"}, "models_file": "models.yaml",
        "rules_dir": "rules"}))
    elsewhere = tmp_path / "elsewhere"  # a working directory with no config of its own
    elsewhere.mkdir()
    created = costproxy("keys", "create", "--user", "ann", "--config", str(config), cwd=elsewhere)
    assert created.returncode == 0, created.stderr
    results = in_parallel(
        (("--config", str(config), "keys", "list"), elsewhere),
        (("keys", "--config", str(config), "list"), elsewhere),
        (("keys", "list", f"--config={config}", "--log-level", "debug"), elsewhere),
        (("rules", "check", "--config", str(config)), elsewhere),
        (("rules", "--config", str(config), "check"), elsewhere),
        (("explain", "--message", "Translate 'hello' to French", "--json", "--config", str(config)), elsewhere),
        (("calibrate", "--data", "missing.csv", "--out", "q.yaml", "--config", str(config)), elsewhere),
        (("eval", "--config", str(config), "--data", "missing.csv", "--out", "o"), elsewhere),
        (("usage", "--config", str(config)), elsewhere),
    )
    for listing in results[:3]:
        assert listing.returncode == 0 and "user=ann" in listing.stdout, listing.stderr
    for rules in results[3:5]:
        assert rules.returncode == 0 and "ok: 0 rules" in rules.stdout, rules.stderr
    assert results[5].returncode == 0 and '"chain"' in results[5].stdout, results[5].stderr
    for evaluation in results[6:8]:  # --config accepted (they read no config): the data file is the problem
        assert evaluation.returncode == 2 and "missing.csv" in evaluation.stderr, evaluation.stderr
        assert "unrecognized arguments" not in evaluation.stderr
    assert results[8].returncode == 0, results[8].stderr
    assert not (elsewhere / "data").exists()  # every command used the config's store, not a default


def test_bad_command_lines_exit_2_with_a_message(tmp_path: Path) -> None:
    results = in_parallel((("check-config", "--config"), tmp_path), (("--log-level", "loud", "keys", "list"), tmp_path),
                          (("--version",), tmp_path))
    assert results[0].returncode == 2 and "--config needs a value" in results[0].stderr
    assert results[1].returncode == 2 and "--log-level must be one of" in results[1].stderr
    assert results[2].returncode == 0 and results[2].stdout.startswith("costproxy ")


def test_config_discovery_order(tmp_path: Path) -> None:
    local = tmp_path / "project"
    shipped_copy(local)
    other = shipped_copy(tmp_path / "other")
    explicit = shipped_copy(tmp_path / "explicit")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"COSTPROXY_CONFIG": str(other)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        found = list(pool.map(lambda call: costproxy("check-config", *call[0], cwd=call[1], env=call[2]), [
            ((), local, None), ((), local, env), (("--config", str(explicit)), local, env), ((), empty, None)]))
    expected = [(f"{Path('config/costproxy.yaml')} (from ./config/costproxy.yaml)"),
                f"{other} (from $COSTPROXY_CONFIG)", f"{explicit} (from --config)",
                f"{PACKAGED_CONFIG} (from packaged defaults)"]
    for result, where in zip(found, expected, strict=True):
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == f"config:   {where}", result.stdout
    assert not (empty / "config").exists()
    missing = costproxy("check-config", cwd=local, env={"COSTPROXY_CONFIG": str(tmp_path / "nope.yaml")})
    assert missing.returncode == 2 and f"{tmp_path / 'nope.yaml'}: file not found" in missing.stderr


def test_init_writes_an_editable_copy_and_never_overwrites_without_force(tmp_path: Path) -> None:
    first = costproxy("init", "site", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    config = tmp_path / "site" / "config" / "costproxy.yaml"
    assert config.read_bytes() == PACKAGED_CONFIG.read_bytes()
    assert (tmp_path / "site" / "rules" / "default.yaml").is_file() and "cd site" in first.stdout
    config.write_text(config.read_text() + "\n# my edit\n")
    again = costproxy("init", "site", cwd=tmp_path)
    assert again.returncode == 1 and "--force" in again.stderr and "site/config/costproxy.yaml" in again.stderr
    assert config.read_text().endswith("# my edit\n")
    forced = costproxy("init", "--force", "site", cwd=tmp_path)
    assert forced.returncode == 0 and config.read_bytes() == PACKAGED_CONFIG.read_bytes()


@pytest.mark.timeout(180)
def test_serve_reports_providers_warns_and_listens_only_when_valid(tmp_path: Path) -> None:
    config = shipped_copy(tmp_path / "site")
    server = Serving([sys.executable, "-m", "costproxy", "serve", "--port", "0", "--config", str(config)],
                     cwd=tmp_path, env={**CLEAN_ENV, "OPENAI_API_KEY": "sk-test"})
    try:
        port = server.wait_listening()
        assert get_json(f"http://127.0.0.1:{port}/healthz") == {"status": "ok"}
    finally:
        assert server.stop() == 0
    before = "".join(server.output).split("costproxy listening")[0]
    assert "openai         usable" in before and "key from $OPENAI_API_KEY" in before
    assert "anthropic      NO KEY" in before and "set $ANTHROPIC_API_KEY" in before
    assert "ollama         disabled" in before and "providers.ollama.enabled: true" in before
    assert "warning: $COSTPROXY_ADMIN_TOKEN is not set" in before
    assert "no provider is usable" not in before
    assert (tmp_path / "site" / "data").is_dir() is False  # the SQLite URL is relative to the working directory
    assert (tmp_path / "data" / "costproxy.sqlite3").is_file()


def test_serve_refuses_a_port_it_cannot_bind_before_starting(tmp_path: Path) -> None:
    import socket

    config = shipped_copy(tmp_path / "site")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = costproxy("serve", "--config", str(config), "--port", str(taken.getsockname()[1]), cwd=tmp_path)
    assert result.returncode == 1 and "cannot listen on 127.0.0.1:" in result.stderr
    assert "listening on" not in result.stderr
