"""The section parsers in their domains' homes: good values, and bad ones named by path and value."""

from __future__ import annotations

from typing import Any

import pytest

from costproxy.alerts.config import AlertSettings, parse_alert_settings
from costproxy.budgets.config import BudgetConfig, BudgetSettings, parse_budget_config
from costproxy.config_schema import Node
from costproxy.errors import ConfigError
from costproxy.registry import Registry, parse_registry
from costproxy.routing.breakers import BreakerConfig
from costproxy.routing.config import (
    FallbackSettings,
    parse_breaker_config,
    parse_fallback_config,
    parse_selection_config,
)
from costproxy.routing.selection import SelectionConfig


def model(provider: str, kind: str = "chat") -> dict[str, Any]:
    return {"provider": provider, "kind": kind, "tier": "economy", "context_window": 8000, "max_output_tokens": 100,
            "price": {"input": "1", "output": "2", "source": "test", "as_of": "2026-01-01"}}


REGISTRY: Registry = parse_registry({"models": {
    "a": model("p"), "b": model("q"), "c": model("q"), "emb": {**model("p", "embedding"), "max_output_tokens": 0},
}}, "models.yaml")


def refused(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as err:
        call(*args, **kwargs)
    return str(err.value)


# --- selection ------------------------------------------------------------------------------------


def test_selection_defaults_and_values() -> None:
    assert parse_selection_config(None, "c.yaml") == SelectionConfig()
    config = parse_selection_config({"default_mode": "quality", "quality_floor": 0.4, "max_fallbacks": 0,
                                     "quality_per_usd": 12, "burn_start": 1.5, "burn_full": 1.5}, "c.yaml")
    assert (config.default_mode, config.quality_floor, config.max_fallbacks, config.quality_per_usd) == (
        "quality", 0.4, 0, 12.0)


@pytest.mark.parametrize(("section", "expected"), [
    ({"default_mode": "cheap"}, "selection.default_mode: must be one of economy, balanced, quality (got 'cheap')"),
    ({"economy_gap": 7}, "selection.economy_gap: must be <= 1.0 (got 7)"),
    ({"balanced_gap": -0.1}, "selection.balanced_gap: must be >= 0.0 (got -0.1)"),
    ({"quality_gap": "0.1"}, "selection.quality_gap: must be a number (got '0.1')"),
    ({"max_fallbacks": 2.5}, "selection.max_fallbacks: must be an integer (got 2.5)"),
    ({"max_fallbacks": 21}, "selection.max_fallbacks: must be <= 20 (got 21)"),
    ({"quality_per_usd": True}, "selection.quality_per_usd: must be a number (got True)"),
    ({"burn_start": 2, "burn_full": 1}, "selection.burn_full: must be >= burn_start (got 1.0)"),
    ({"target_reference": "strongest"}, "selection.target_reference: must be one of baseline, best (got 'strongest')"),
    ({"economy": 0.1}, "selection.economy: unknown key (got 0.1)"),
    ("balanced", "selection: must be a mapping (got 'balanced')"),
])
def test_selection_refuses(section: Any, expected: str) -> None:
    assert refused(parse_selection_config, section, "c.yaml") == f"c.yaml: {expected}"


# --- fallback -------------------------------------------------------------------------------------


def test_fallback_defaults_and_chains() -> None:
    assert parse_fallback_config(None, "c.yaml", REGISTRY) == FallbackSettings()
    settings = parse_fallback_config({"circuit_breaker": {"cooldown_seconds": 5, "max_cooldown_seconds": 5},
                                      "chains": {"a": ["b", "c"]}}, "c.yaml", REGISTRY)
    assert settings.chains == {"a": ("b", "c")}
    assert settings.breaker == BreakerConfig(failure_threshold=3, provider_threshold=8, cooldown=5, max_cooldown=5)


@pytest.mark.parametrize(("section", "expected"), [
    ({"chains": {"zz": ["a"]}}, "fallback.chains.zz: names no model in the registry (got 'zz')"),
    ({"chains": {"a": ["b", "zz"]}}, "fallback.chains.a[1]: names no model in the registry (got 'zz')"),
    ({"chains": {"a": ["a"]}}, "fallback.chains.a[0]: a model cannot be its own fallback (got 'a')"),
    ({"chains": {"a": ["b", "b"]}}, "fallback.chains.a[1]: is listed twice (got 'b')"),
    ({"chains": {"a": ["emb"]}}, "fallback.chains.a[0]: is a embedding model; a is a chat model (got 'emb')"),
    ({"chains": {"a": "b"}}, "fallback.chains.a: must be a list (got 'b')"),
    ({"chains": {"a": [3]}}, "fallback.chains.a[0]: must be a string (got 3)"),
    ({"chains": ["a"]}, "fallback.chains: must be a mapping (got ['a'])"),
    ({"circuit_breaker": {"failure_threshold": 0}}, "fallback.circuit_breaker.failure_threshold: must be >= 1 (got 0)"),
    ({"circuit_breaker": {"cooldown_seconds": 60, "max_cooldown_seconds": 10}},
     "fallback.circuit_breaker.max_cooldown_seconds: must be >= cooldown_seconds (got 10.0)"),
    ({"circuit_breaker": {"cooldown": 1}}, "fallback.circuit_breaker.cooldown: unknown key (got 1)"),
    ({"retries": 3}, "fallback.retries: unknown key (got 3)"),
])
def test_fallback_refuses(section: Any, expected: str) -> None:
    assert refused(parse_fallback_config, section, "c.yaml", REGISTRY) == f"c.yaml: {expected}"


def test_fallback_uses_the_model_check_it_is_given() -> None:
    def check(name: str) -> str | None:
        return None if name in REGISTRY.models else f"{name} is withheld"

    message = refused(parse_fallback_config, {"chains": {"a": ["gone"]}}, "c.yaml", REGISTRY, check)
    assert message == "c.yaml: fallback.chains.a[0]: gone is withheld (got 'gone')"


def test_breaker_config_reads_a_node() -> None:
    assert parse_breaker_config(Node({}, "c.yaml", "b")) == BreakerConfig()


# --- alerts ---------------------------------------------------------------------------------------


def test_alert_defaults_and_values() -> None:
    assert parse_alert_settings(None, "c.yaml") == AlertSettings()
    settings = parse_alert_settings({"enabled": False, "max_attempts": 2, "backoff_base_s": 1, "backoff_max_s": 1,
                                     "request_event_interval_s": 0}, "c.yaml")
    assert (settings.enabled, settings.max_attempts, settings.request_event_interval_s) == (False, 2, 0.0)


@pytest.mark.parametrize(("section", "expected"), [
    ({"nonsense": True}, "alerts.nonsense: unknown key (got True)"),
    ({"enabled": "no"}, "alerts.enabled: must be true or false (got 'no')"),
    ({"max_attempts": 0}, "alerts.max_attempts: must be >= 1 (got 0)"),
    ({"max_attempts": 51}, "alerts.max_attempts: must be <= 50 (got 51)"),
    ({"timeout_s": "10s"}, "alerts.timeout_s: must be a number (got '10s')"),
    ({"concurrency": 1.5}, "alerts.concurrency: must be an integer (got 1.5)"),
    ({"source": ""}, "alerts.source: must not be empty"),
    ({"backoff_base_s": 10, "backoff_max_s": 1}, "alerts.backoff_max_s: must be >= backoff_base_s (got 1.0)"),
    ([1, 2], "alerts: must be a mapping (got [1, 2])"),
])
def test_alerts_refuse(section: Any, expected: str) -> None:
    assert expected in refused(parse_alert_settings, section, "c.yaml")


# --- budgets --------------------------------------------------------------------------------------

BUDGET = {"id": "b", "scope_type": "team", "scope_id": "t", "limit_usd": "5"}


def test_budget_defaults_and_values() -> None:
    assert parse_budget_config(None, "c.yaml") == BudgetConfig()
    config = parse_budget_config({"enabled": False, "key_prefix": "acme", "definitions": [BUDGET]}, "c.yaml")
    assert config.settings == BudgetSettings(enabled=False, key_prefix="acme")
    assert [spec.id for spec in config.static] == ["b"]
    assert parse_budget_config([BUDGET], "c.yaml").static == config.static


def restrict(**action: Any) -> dict[str, Any]:
    return {**BUDGET, "thresholds": [{"percent": 80, "actions": ["notify", {"type": "restrict-models", **action}]}]}


def check(name: str) -> str | None:
    return None if name in REGISTRY.models else "names no model in the registry"


@pytest.mark.parametrize(("section", "expected"), [
    ({"bogus_key": 1}, "budgets.bogus_key: unknown key (got 1)"),
    ({"key_prefix": "a{b}"}, "budgets.key_prefix: must not contain braces or whitespace"),
    ({"reservation_ttl_s": 0}, "budgets.reservation_ttl_s: must be >= 1 (got 0)"),
    ({"definitions": {"id": "b"}}, "budgets.definitions: must be a list"),
    ({"definitions": [{**BUDGET, "limit_usd": 5.123456789123}]}, "budgets.definitions[0].limit_usd:"),
    ([restrict(models=["zz"])], "budgets[0].thresholds[0].actions[1].models[0]: names no model in the registry"),
    ([restrict(tiers=["gold"])], "budgets[0].thresholds[0].actions[1].tiers[0]: must be one of economy, standard, "
                                 "premium (got 'gold')"),
    ([restrict(models=[7])], "budgets[0].thresholds[0].actions[1].models[0]: must be a string (got 7)"),
    ([{**BUDGET, "on_exhausted": "downgrade", "downgrade_to": {"models": ["a", "zz"]}}],
     "budgets[0].downgrade_to.models[1]: names no model in the registry (got 'zz')"),
    ([{**BUDGET, "on_exhausted": "downgrade", "downgrade_to": {"tiers": ["cheap"]}}],
     "budgets[0].downgrade_to.tiers[0]: must be one of economy, standard, premium (got 'cheap')"),
])
def test_budgets_refuse(section: Any, expected: str) -> None:
    assert expected in refused(parse_budget_config, section, "c.yaml", check_model=check)


def test_budget_restrictions_to_known_models_pass() -> None:
    config = parse_budget_config([restrict(models=["a"], tiers=["economy"])], "c.yaml", check_model=check)
    assert config.static[0].thresholds[0].actions[1].models == frozenset({"a"})
    downgrade = {**BUDGET, "on_exhausted": "downgrade", "downgrade_to": {"models": ["b"], "same_provider": True}}
    spec = parse_budget_config([downgrade], "c.yaml", check_model=check).static[0]
    assert spec.downgrade_to.models == frozenset({"b"}) and spec.downgrade_to.same_provider
