"""Honest routing, end to end (issue 8): the CLI as a subprocess, the openai SDK as the client.

- ``auto`` only ever picks models whose provider this deployment can call;
- a model whose provider has no key is a 503 ``provider_not_configured`` naming the env var, and
  the provider never sees the request;
- a named model is served as asked or refused: a budget that blocks answers 429 even while a $0
  model sits in the registry, and no model is switched unless a budget or rule says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.conftest import ADMIN_TOKEN, TEST_MODELS
from tests.e2e.harness import SimulatorThread, cli, serve

ENV = {"SIM_API_KEY": "sk-provider-secret", "COSTPROXY_ADMIN_TOKEN": ADMIN_TOKEN}
MODELS: dict[str, Any] = {
    "baseline_model": "big",
    "models": {
        **TEST_MODELS["models"],
        # the cheapest chat model by far, behind a provider whose key this deployment lacks
        "bargain": {"provider": "nokey", "tier": "economy", "context_window": 128000, "max_output_tokens": 4096,
                    "capabilities": ["tools", "json_schema", "json_mode", "streaming", "vision"],
                    "price": {"input": "0.01", "output": "0.02", "source": "test", "as_of": "2026-11-25"}},
        # a free local model (auth: none) that a blocking budget must never fall back to
        "local-free": {"provider": "local", "tier": "economy", "context_window": 128000, "max_output_tokens": 4096,
                       "capabilities": ["streaming"],
                       "price": {"input": "0", "output": "0", "source": "test", "as_of": "2026-11-25"}},
    },
}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("honest")
    with SimulatorThread() as sim:
        (tmp / "rules").mkdir()
        (tmp / "models.yaml").write_text(yaml.safe_dump(MODELS))
        config = tmp / "costproxy.yaml"
        provider = {"base_url": sim.url, "api_key_env": "SIM_API_KEY"}
        config.write_text(yaml.safe_dump({
            "server": {"host": "127.0.0.1", "port": 8080},
            "store": {"url": f"sqlite:///{tmp / 'ledger.sqlite3'}"},
            "models_file": "models.yaml", "rules_dir": "rules",
            "providers": {"sim": provider, "sim2": provider,
                          "nokey": {"base_url": sim.url, "api_key_env": "NOKEY_API_KEY"},
                          "local": {"base_url": sim.url, "auth": "none", "enabled": True}},  # keyless: opt in
            "budgets": [{"id": "tiny", "scope_type": "team", "scope_id": "broke", "limit_usd": "0.00002",
                         "period": "monthly", "on_exhausted": "block"}],
        }))
        keys = {}
        for team in ("ml", "broke"):
            created = cli(config, "keys", "create", "--user", "dana", "--team", team, "--org", "acme", env=ENV)
            assert created.returncode == 0, created.stderr
            keys[team] = created.stdout.strip().split()[-1]
        with serve(config, ENV) as base:
            yield {"base": base, "keys": keys, "sim": sim}


def client(d: dict[str, Any], team: str = "ml") -> openai.OpenAI:
    return openai.OpenAI(base_url=d["base"] + "/v1", api_key=d["keys"][team], max_retries=0)


def upstream_models(d: dict[str, Any]) -> list[str]:
    return [call.model for call in d["sim"].sim.calls]


def test_auto_never_routes_to_a_provider_without_credentials(deployment: dict[str, Any]) -> None:
    before = len(upstream_models(deployment))
    prompts = ["Is this review positive or negative? 'Great phone'", "Translate 'good morning' to French",
               "Summarise: the cat sat on the mat.", "What is 2 + 2?"]
    served = set()
    for prompt in prompts * 3:
        raw = client(deployment).chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": prompt}])
        served.add(raw.headers["x-costproxy-model"])
        assert raw.parse().model  # the SDK parses the answer
    assert "bargain" not in served and served <= {"big", "small", "backup"}
    assert "bargain" not in upstream_models(deployment)[before:]


def test_a_model_without_provider_key_is_503_naming_the_env_var(deployment: dict[str, Any]) -> None:
    before = len(upstream_models(deployment))
    with pytest.raises(openai.InternalServerError) as caught:
        client(deployment).chat.completions.create(model="bargain", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503
    assert caught.value.response.headers["x-should-retry"] == "false"  # a configuration: retrying only waits
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "provider_not_configured"
    assert "NOKEY_API_KEY" in body["message"]
    assert len(upstream_models(deployment)) == before  # the provider saw nothing


def test_models_lists_what_is_servable_and_explains_the_rest(deployment: dict[str, Any]) -> None:
    listed = {m.id for m in client(deployment).models.list()}
    assert "bargain" not in listed and {"big", "small", "auto", "local-free"} <= listed
    every = client(deployment).models.list(extra_query={"all": "true"})
    by_id = {m.id: m for m in every}
    bargain = by_id["bargain"].model_dump()["costproxy"]
    assert bargain["servable"] is False and "NOKEY_API_KEY" in bargain["unservable_reason"]
    assert client(deployment).models.retrieve("small").id == "small"
    with pytest.raises(openai.NotFoundError):
        client(deployment).models.retrieve("no-such-model")


def test_a_blocking_budget_refuses_while_a_free_model_exists(deployment: dict[str, Any]) -> None:
    broke = client(deployment, "broke")
    answers: list[str] = []
    for _ in range(8):
        try:
            raw = broke.chat.completions.with_raw_response.create(
                model="small", messages=[{"role": "user", "content": "Write a long story about a dragon."}])
            answers.append(raw.headers["x-costproxy-model"])
        except openai.RateLimitError as exc:
            body = exc.body
            assert isinstance(body, dict) and body["code"] == "budget_exceeded"
            assert exc.response.headers["x-should-retry"] == "false"
            answers.append("429")
    assert "429" in answers, answers
    assert set(answers) <= {"small", "429"}, answers  # served as asked, or refused: never switched
    assert "local-free" not in upstream_models(deployment)


def test_no_request_is_forwarded_without_the_provider_key(deployment: dict[str, Any], tmp_path: Path) -> None:
    calls = deployment["sim"].sim.calls
    keyed = [c for c in calls if c.model in ("big", "small", "backup")]
    assert keyed and all(c.auth == "sk-provider-secret" for c in keyed)
