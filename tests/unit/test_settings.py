from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from costproxy.defaults import PACKAGED_CONFIG
from costproxy.errors import ConfigError
from costproxy.settings import (
    ProviderStatus,
    Settings,
    find_config,
    load_settings,
    provider_readiness,
    usable_providers,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = yaml.safe_load((ROOT / "config" / "costproxy.yaml").read_text())


def write(tmp_path: Path, change: dict[str, Any] | None = None, *, models: dict[str, Any] | None = None) -> Path:
    """The shipped config in ``tmp_path/config`` (with rules/ beside it), sections replaced by ``change``."""
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "rules").mkdir(exist_ok=True)
    models_text = yaml.safe_dump(models) if models else (ROOT / "config" / "models.yaml").read_text()
    (tmp_path / "config" / "models.yaml").write_text(models_text)
    path = tmp_path / "config" / "costproxy.yaml"
    path.write_text(yaml.safe_dump({**SHIPPED, **(change or {})}))
    return path


def load(tmp_path: Path, change: dict[str, Any] | None = None, **env: str) -> Settings:
    return load_settings(write(tmp_path, change), env)


def error_of(tmp_path: Path, change: dict[str, Any], **env: str) -> str:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, change, **env)
    return str(err.value)


def test_shipped_config_loads_with_every_environment_override() -> None:
    settings = load_settings(ROOT / "config" / "costproxy.yaml", {
        "COSTPROXY_HOST": "0.0.0.0", "COSTPROXY_PORT": "9090",
        "COSTPROXY_STORE_URL": "redis://127.0.0.1:6379/0", "COSTPROXY_ADMIN_TOKEN": "t",
        "OPENAI_API_KEY": "sk-x"})
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 9090)
    assert settings.store.url == "redis://127.0.0.1:6379/0" and settings.admin.token == "t"
    assert settings.providers["openai"].api_key == "sk-x"
    assert len(settings.registry.models) >= 25


def test_every_section_is_typed_and_nothing_keeps_raw_yaml(tmp_path: Path) -> None:
    settings = load(tmp_path, {
        "budgets": {"reservation_ttl_s": 60, "definitions": [
            {"id": "acme", "scope_type": "org", "scope_id": "acme", "limit_usd": "10",
             "thresholds": [{"percent": 80, "actions": [{"type": "restrict-models", "models": ["gpt-4o-mini"],
                                                         "tiers": ["economy"]}]}]}]},
        "alerts": {"max_attempts": 3},
        "selection": {"default_mode": "economy", "economy_gap": 0.2},
        "fallback": {"circuit_breaker": {"failure_threshold": 5}, "chains": {"gpt-4o": ["azure/gpt-4o"]}},
        "tracing": {"exporter": "console"},
        "trusted_proxies": [{"name": "relaycore", "secret_env": "RC_SECRET", "sources": ["10.0.0.0/8"]}],
    }, RC_SECRET="s")
    assert settings.budgets.settings.reservation_ttl_s == 60 and settings.budgets.static[0].id == "acme"
    assert settings.alerts.max_attempts == 3
    assert (settings.selection.default_mode, settings.selection.economy_gap) == ("economy", 0.2)
    assert settings.fallback.breaker.failure_threshold == 5
    assert settings.fallback.chains == {"gpt-4o": ("azure/gpt-4o",)}
    assert settings.tracing.exporter == "console" and settings.trusted_proxies[0].secret == "s"
    assert settings.quality is None and settings.quality_path is None  # no quality.yaml beside the config
    (tmp_path / "config" / "quality.yaml").write_text((ROOT / "config" / "quality.yaml").read_text())
    with_quality = load_settings(settings.config_path, {})
    assert with_quality.quality_path == tmp_path / "config" / "quality.yaml"
    assert with_quality.quality is not None and "gpt-4o" in with_quality.quality.models
    names = {f.name for f in dataclasses.fields(Settings)}
    assert "raw" not in names and {"budgets", "alerts", "selection", "fallback", "store", "admin"} <= names


def test_unknown_keys_name_file_path_and_value(tmp_path: Path) -> None:
    message = error_of(tmp_path, {"server": {"host": "127.0.0.1", "prot": 8080}})
    assert message == f"{tmp_path / 'config' / 'costproxy.yaml'}: server.prot: unknown key (got 8080)"
    assert "costproxy.yaml: colour: unknown key (got 'red')" in error_of(tmp_path, {"colour": "red"})


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    config = tmp_path / "costproxy.yaml"
    config.write_text("server: {host: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_settings(config, {})
    assert "invalid YAML" in str(err.value) and "line" in str(err.value)


@pytest.mark.parametrize("document", ["just text", "[1, 2]", "42"])
def test_a_config_that_is_not_a_mapping_is_refused(tmp_path: Path, document: str) -> None:
    config = tmp_path / "costproxy.yaml"
    config.write_text(document)
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_settings(config, {})


# Wrong types and values in every section, each named by dotted path with the bad value.
BAD = [
    ({"server": {"port": "8080"}}, "server.port: must be an integer (got '8080')"),
    ({"server": {"port": 70000}}, "server.port: must be <= 65535"),
    ({"server": {"host": ""}}, "server.host: must not be empty"),
    ({"server": {"max_body_bytes": 10}}, "server.max_body_bytes: must be >= 1024"),
    ({"server": {"access_log": "yes"}}, "server.access_log: must be true or false (got 'yes')"),
    ({"store": {"url": "postgres://db"}}, "store.url: must be sqlite:///path"),
    ({"store": {"url": "sqlite:///"}}, "store.url: must be sqlite:///path"),
    ({"store": ["sqlite:///x"]}, "store: must be a mapping"),
    ({"admin": {"token_env": "sk-live-123456789"}}, "admin.token_env: must be the NAME of an environment variable"),
    ({"admin": {"token": "abc"}}, "admin.token: unknown key"),
    ({"logging": {"level": "verbose"}}, "logging.level: must be one of debug, info, warning, error"),
    ({"logging": {"log_prompts": False}}, "logging.log_prompts: was removed: costproxy never logs prompt text"),
    ({"tracing": {"exporter": "jaeger"}}, "tracing.exporter: must be one of none, console, otlp"),
    ({"tracing": {"endpoint": "collector:4318"}}, "tracing.endpoint: must start with http:// or https://"),
    ({"trusted_proxies": [{"name": "rc", "secret_env": "S", "sources": ["10.0.0.0/33"]}]},
     "trusted_proxies[0].sources[0]: must be an IP address or network"),
    ({"trusted_proxies": [{"name": "rc", "secret_env": "S"}, {"name": "rc", "secret_env": "T"}]},
     "trusted_proxies[1].name: is used by two trusted proxies"),
    ({"trusted_proxies": {"name": "rc"}}, "trusted_proxies: must be a list"),
    ({"default_model": "auto:cheap"}, "default_model: routing mode must be one of economy, balanced, quality"),
    ({"default_model": "gpt-5-turbo"}, "default_model: names no model in the registry (got 'gpt-5-turbo')"),
    ({"default_model": "ollama/llama3.2"}, "default_model: is served by provider ollama, which is not enabled"),
    ({"rules_dir": "../no-rules-here"}, "rules_dir: no such directory"),
    ({"encodings_dir": "nowhere"}, "encodings_dir: no such directory"),
    ({"quality_file": "missing.yaml"}, "missing.yaml: file not found"),
    ({"models_file": "missing.yaml"}, "missing.yaml: file not found"),
    ({"webhooks": [{"url": "https://x"}]}, "webhooks: webhook subscriptions are managed through /api/v1/webhooks"),
    ({"budgets": {"bogus_key": 1}}, "budgets.bogus_key: unknown key (got 1)"),
    ({"selection": {"economy_gap": 7}}, "selection.economy_gap: must be <= 1.0 (got 7)"),
    ({"selection": {"default_mode": "cheap"}}, "selection.default_mode: must be one of economy, balanced, quality"),
    ({"alerts": {"nonsense": True}}, "alerts.nonsense: unknown key (got True)"),
    ({"fallback": {"chains": {"gpt-4o": ["no-such-model"]}}},
     "fallback.chains.gpt-4o[0]: names no model in the registry (got 'no-such-model')"),
]


@pytest.mark.parametrize(("change", "expected"), BAD, ids=[e.split(":")[0] for _c, e in BAD])
def test_bad_values_name_path_and_value(tmp_path: Path, change: dict[str, Any], expected: str) -> None:
    assert expected in error_of(tmp_path, change)


@pytest.mark.parametrize(("env", "expected"), [
    ({"COSTPROXY_PORT": "80a"}, "$COSTPROXY_PORT: must be a port number from 0 to 65535 (got '80a')"),
    ({"COSTPROXY_PORT": "-1"}, "$COSTPROXY_PORT: must be a port number"),
    ({"COSTPROXY_PORT": "65536"}, "$COSTPROXY_PORT: must be a port number"),
    ({"COSTPROXY_STORE_URL": "mysql://x"}, "$COSTPROXY_STORE_URL: must be sqlite:///path"),
])
def test_bad_environment_overrides_name_the_variable(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    assert expected in error_of(tmp_path, {}, **env)


# --- providers ------------------------------------------------------------------------------------

PROVIDER_BAD = [
    ({"base_url": "http://x/v1", "api_key_env": "K", "auth": "none"}, "providers.p.auth: sends no key"),
    ({"base_url": "http://x/v1", "auth": "bearer"}, "providers.p.api_key_env: is required for auth: bearer"),
    ({"base_url": "http://x/v1", "api_key_env": "sk-proj-abcdefgh"}, "must be the NAME of an environment variable"),
    ({"base_url": "http://x/v1", "api_key_env": 12}, "providers.p.api_key_env: must be a string (got 12)"),
    ({"base_url": "api.groq.com"}, "providers.p.base_url: must start with http:// or https:// (got 'api.groq.com')"),
    ({"base_url": "http://[::1/v1"}, "providers.p.base_url: is not a valid URL"),
    ({"base_url": "http://a b/v1"}, "providers.p.base_url: must not contain spaces or control characters"),
    ({"base_url": "http://x:99999/v1"}, "providers.p.base_url: is not a valid URL"),
    ({"base_url": "http://x/v1", "enabled": "yes"}, "providers.p.enabled: must be true or false (got 'yes')"),
    ({"base_url": "http://x/v1", "kind": "azure", "api_key_env": "K"}, "providers.p.api_version: is required"),
    ({"base_url": "http://x/v1", "timeouts": {"read": 0}}, "providers.p.timeouts.read: must be >= 0.001"),
    ({"base_url": "http://x/v1", "headers": {"X": ["a"]}}, "providers.p.headers.X: must be a string"),
]


@pytest.mark.parametrize(("provider", "expected"), PROVIDER_BAD, ids=[e for _p, e in PROVIDER_BAD])
def test_bad_providers_are_refused(tmp_path: Path, provider: dict[str, Any], expected: str) -> None:
    assert expected in error_of(tmp_path, {"providers": {**SHIPPED["providers"], "p": provider}})


def test_the_secret_itself_is_never_echoed_in_full(tmp_path: Path) -> None:
    message = error_of(tmp_path, {"providers": {**SHIPPED["providers"],
                                                "p": {"base_url": "http://x", "api_key_env": "sk-proj-SECRET"}}})
    assert "SECRET" not in message and "'sk-p…'" in message


def test_a_disabled_provider_and_its_models_are_left_out(tmp_path: Path) -> None:
    settings = load(tmp_path)
    assert "ollama/llama3.2" not in settings.registry.models
    assert settings.disabled_models == {"ollama/llama3.2": "ollama"}
    assert all(m.provider != "ollama" for m in settings.registry.models.values())
    enabled = {**SHIPPED["providers"], "ollama": {**SHIPPED["providers"]["ollama"], "enabled": True}}
    settings = load(tmp_path, {"providers": enabled})
    assert "ollama/llama3.2" in settings.registry.models and settings.disabled_models == {}
    assert settings.providers["ollama"].auth == "none" and settings.providers["ollama"].api_key is None


def test_references_to_models_of_a_disabled_provider_say_so(tmp_path: Path) -> None:
    message = error_of(tmp_path, {"fallback": {"chains": {"gpt-4o-mini": ["ollama/llama3.2"]}}})
    assert "fallback.chains.gpt-4o-mini[0]: is served by provider ollama, which is not enabled " \
           "(providers.ollama.enabled) (got 'ollama/llama3.2')" in message
    budget = {"id": "b", "scope_type": "org", "scope_id": "o", "limit_usd": "1",
              "thresholds": [{"percent": 50, "actions": [{"type": "restrict-models", "models": ["ollama/llama3.2"]}]}]}
    message = error_of(tmp_path, {"budgets": [budget]})
    assert "budgets[0].thresholds[0].actions[0].models[0]: is served by provider ollama" in message


def test_a_baseline_of_a_disabled_provider_is_a_models_file_error(tmp_path: Path) -> None:
    models = yaml.safe_load((ROOT / "config" / "models.yaml").read_text())
    models["baseline_model"] = "ollama/llama3.2"
    with pytest.raises(ConfigError, match=r"models.yaml: baseline_model: is served by provider ollama"):
        load_settings(write(tmp_path, models=models), {})


def test_provider_readiness_says_what_is_usable_and_what_is_missing(tmp_path: Path) -> None:
    providers = {"openai": SHIPPED["providers"]["openai"], "anthropic": SHIPPED["providers"]["anthropic"],
                 "ollama": SHIPPED["providers"]["ollama"],
                 "vllm": {"base_url": "http://gpu:8000/v1", "enabled": True},
                 "google": {**SHIPPED["providers"]["google"], "enabled": False}}
    models = yaml.safe_load((ROOT / "config" / "models.yaml").read_text())
    models["models"] = {k: m for k, m in models["models"].items()
                        if m["provider"] in ("openai", "anthropic", "ollama", "google")}
    models["models"]["vllm/qwen"] = {**models["models"]["ollama/llama3.2"], "provider": "vllm"}
    settings = load_settings(write(tmp_path, {"providers": providers, "default_model": "auto"}, models=models),
                             {"OPENAI_API_KEY": "sk-1", "ANTHROPIC_API_KEY": ""})
    status = {s.name: s for s in provider_readiness(settings)}
    assert status["openai"] == ProviderStatus("openai", True, "ready", "key from $OPENAI_API_KEY",
                                              status["openai"].models)
    assert "gpt-4o" in status["openai"].models
    assert (status["anthropic"].usable, status["anthropic"].state, status["anthropic"].detail) == (
        False, "no-key", "set $ANTHROPIC_API_KEY")  # an empty variable is no key
    assert (status["ollama"].state, status["ollama"].models) == ("disabled", ("ollama/llama3.2",))
    assert "providers.ollama.enabled: true" in status["ollama"].detail
    assert (status["vllm"].usable, status["vllm"].detail) == (True, "no credentials needed (auth: none)")
    assert (status["google"].state, status["google"].detail) == ("disabled", "providers.google.enabled is false")
    assert usable_providers(settings) == {"openai", "vllm"}
    assert sorted(s.name for s in provider_readiness(settings)) == sorted(providers)


# --- where the configuration comes from -------------------------------------------------------------


def test_find_config_order(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    assert find_config(None, {}, tmp_path).source == "packaged defaults"
    assert find_config(None, {}, tmp_path).path == PACKAGED_CONFIG
    (tmp_path / "config" / "costproxy.yaml").write_text("{}")
    assert find_config(None, {}, tmp_path).source == "./config/costproxy.yaml"
    env = {"COSTPROXY_CONFIG": "/etc/costproxy.yaml"}
    assert find_config(None, env, tmp_path).path == Path("/etc/costproxy.yaml")
    assert find_config("mine.yaml", env, tmp_path).path == Path("mine.yaml")
    assert find_config("mine.yaml", env, tmp_path).source == "--config"
    assert find_config(None, {"COSTPROXY_CONFIG": ""}, tmp_path).source == "./config/costproxy.yaml"


def test_packaged_defaults_load_and_keep_data_out_of_the_package(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(PACKAGED_CONFIG, {})
    assert settings.rules_dir == PACKAGED_CONFIG.parent.parent / "rules"
    assert settings.store.url == "sqlite:///data/costproxy.sqlite3"  # relative to the working directory
    assert settings.store.local_path == os.path.join(tmp_path, "data", "costproxy-replica-{host}-{port}.sqlite3")
    redis = load_settings(PACKAGED_CONFIG, {"COSTPROXY_STORE_URL": "redis://r:6379/0"})
    assert not Path(redis.store.local_path).is_relative_to(PACKAGED_CONFIG.parent.parent)


def test_anthropic_kind_and_kind_only_options(tmp_path) -> None:
    import pytest
    import yaml

    from costproxy.errors import ConfigError
    from costproxy.settings import load_settings
    from tests.conftest import TEST_MODELS

    (tmp_path / "models.yaml").write_text(yaml.safe_dump(TEST_MODELS))
    (tmp_path / "rules").mkdir()
    config = tmp_path / "costproxy.yaml"

    def write(sim: dict[str, object]) -> None:
        config.write_text(yaml.safe_dump({"providers": {"sim": sim, "sim2": {"base_url": "http://x"}},
                                          "models_file": "models.yaml", "rules_dir": "rules"}))

    write({"kind": "anthropic", "base_url": "http://a/v1", "api_key_env": "K", "count_tokens": True})
    provider = load_settings(config, {"K": "secret"}).providers["sim"]
    assert (provider.auth, provider.anthropic_version, provider.count_tokens) == ("x-api-key", "2023-06-01", True)
    write({"base_url": "http://a/v1", "responses_api": True, "enabled": True})  # keyless: enabled explicitly
    assert load_settings(config, {}).providers["sim"].responses_api
    for wrong in ({"kind": "anthropic", "base_url": "http://a", "responses_api": True},
                  {"base_url": "http://a", "count_tokens": True}, {"kind": "azure", "base_url": "http://a",
                                                                   "api_version": "1", "anthropic_version": "x"}):
        write(wrong)
        with pytest.raises(ConfigError, match="applies to kind"):
            load_settings(config, {})


def test_numbers_in_config_files_mean_what_a_person_reads(tmp_path: Path) -> None:
    """YAML 1.1 reads ``010`` as octal 8 and ``1:30`` as base-60 90: a limit written so would have
    been $8 or $90.  costproxy's files read numbers as YAML 1.2 does, and refuse a key written twice."""
    path = write(tmp_path)
    shipped = path.read_text()

    def budget_limit(limit: str) -> Any:
        path.write_text(shipped + "budgets:\n  definitions:\n    - {id: b, scope_type: team, scope_id: t, "
                                  f"limit_usd: {limit}, period: monthly}}\n")
        return load_settings(path, {}).budgets.static[0]

    assert budget_limit("010").limit_nanos == 10 * 10**9
    assert budget_limit("12.5").limit_nanos == 12_500_000_000
    for unreadable in ("1:30", "1_000", "0x10"):
        with pytest.raises(ConfigError, match="limit_usd"):
            budget_limit(unreadable)
    path.write_text(shipped + "default_model: auto\ndefault_model: gpt-4o-mini\n")
    with pytest.raises(ConfigError, match="duplicate key 'default_model'"):
        load_settings(path, {})
