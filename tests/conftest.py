"""Shared fixtures: factories for a simulated upstream, settings pointing at it, and the proxy app."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from costproxy.http.app import create_app
from costproxy.http.keys_api import issue_key
from costproxy.http.state import KEYRING, STORE
from costproxy.settings import Settings, load_settings
from costproxy.tools.simulator import Simulator, start_simulator

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token"

# A small registry with round prices so expected costs are easy to check by hand.
TEST_MODELS: dict[str, Any] = {
    "baseline_model": "big",
    "models": {
        "big": {"provider": "sim", "tier": "premium", "context_window": 128000, "max_output_tokens": 4096,
                "capabilities": ["tools", "vision", "json_schema", "json_mode", "streaming"],
                "price": {"input": "2.50", "cached_input": "1.25", "output": "10.00",
                          "source": "test", "as_of": "2026-11-25"}},
        "small": {"provider": "sim", "tier": "economy", "context_window": 128000, "max_output_tokens": 4096,
                  "capabilities": ["tools", "json_schema", "json_mode", "streaming"],
                  "price": {"input": "0.15", "cached_input": "0.075", "output": "0.60",
                            "source": "test", "as_of": "2026-11-25"}},
        "backup": {"provider": "sim2", "tier": "economy", "context_window": 128000, "max_output_tokens": 4096,
                   "capabilities": ["tools", "json_schema", "json_mode", "streaming"],
                   "price": {"input": "0.10", "output": "0.40", "source": "test", "as_of": "2026-11-25"}},
        "legacy": {"provider": "sim", "kind": "completion", "tier": "economy", "context_window": 4096,
                   "max_output_tokens": 4096, "capabilities": ["completions"],
                   "price": {"input": "1.50", "output": "2.00", "source": "test", "as_of": "2026-11-25"}},
        "embed": {"provider": "sim", "kind": "embedding", "tier": "economy", "context_window": 8191,
                  "encoding": "cl100k_base",
                  "price": {"input": "0.02", "output": "0", "source": "test", "as_of": "2026-11-25"}},
    },
}


# Quality profiles for the test registry: economy models are as good as the premium one on easy
# classification, much worse on math.
TEST_QUALITY: dict[str, Any] = {
    "version": 1,
    "source": "tests",
    "tier_priors": {"economy": 0.6, "standard": 0.7, "premium": 0.85},
    "models": {
        "big": {"overall": 0.9, "tasks": {"classification": {"overall": 0.95}, "math": {"overall": 0.9}}},
        "small": {"overall": 0.7, "tasks": {"classification": {"overall": 0.94}, "math": {"overall": 0.4},
                                            "translation": {"overall": 0.9}}},
        "backup": {"overall": 0.65, "tasks": {"classification": {"overall": 0.93}, "math": {"overall": 0.3}}},
    },
}


@pytest.fixture
async def simulator() -> AsyncIterator[tuple[str, Simulator]]:
    runner, url, sim = await start_simulator()
    yield url, sim
    await runner.cleanup()


ConfigFactory = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path) -> ConfigFactory:
    """Write a config dir (costproxy.yaml + models.yaml + rules/) and return the config path."""

    def write(upstream_url: str, *, extra: dict[str, Any] | None = None, models: dict[str, Any] | None = None,
              rules: dict[str, Any] | None = None, provider_overrides: dict[str, Any] | None = None) -> Path:
        config_dir = tmp_path / "config"
        rules_dir = tmp_path / "rules"
        config_dir.mkdir(exist_ok=True)
        rules_dir.mkdir(exist_ok=True)
        (config_dir / "models.yaml").write_text(yaml.safe_dump(models or TEST_MODELS))
        (config_dir / "quality.yaml").write_text(yaml.safe_dump(TEST_QUALITY))
        for name, document in (rules or {}).items():
            (rules_dir / name).write_text(yaml.safe_dump(document))
        provider = {"base_url": upstream_url, "api_key_env": "SIM_API_KEY",
                    "timeouts": {"connect": 2, "first_byte": 5, "read": 5, "stream_idle": 5}}
        provider.update(provider_overrides or {})
        document: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": 0, "max_body_bytes": 65536},
            "store": {"url": f"sqlite:///{tmp_path / 'data' / 'ledger.sqlite3'}"},
            "models_file": "models.yaml",
            "rules_dir": "../rules",
            "providers": {"sim": provider, "sim2": dict(provider)},
        }
        document.update(extra or {})
        path = config_dir / "costproxy.yaml"
        path.write_text(yaml.safe_dump(document))
        return path

    return write


def load_test_settings(path: Path, **env: str) -> Settings:
    environ = {"SIM_API_KEY": "sk-provider-secret", "ANTHROPIC_TEST_KEY": "sk-ant-test",
               "COSTPROXY_ADMIN_TOKEN": ADMIN_TOKEN, **env}
    return load_settings(path, environ)


class Proxy:
    """A running proxy app in a test client, with a client key already issued."""

    def __init__(self, client: TestClient[Any, Any], app: web.Application, key: str, sim: Simulator) -> None:
        self.client = client
        self.app = app
        self.key = key
        self.sim = sim
        self.closers: list[Callable[[], Awaitable[None]]] = []  # SDK clients a test opened, closed after it

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    async def new_key(self, **fields: str) -> str:
        secret, record = await issue_key(self.app[STORE], fields, time.time())
        self.app[KEYRING].add(record)
        return secret

    async def ledger(self) -> list[Any]:
        return list(reversed(await self.app[STORE].recent_entries(1000)))


ProxyFactory = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def make_proxy(aiohttp_client: Any, simulator: tuple[str, Simulator],
                     write_config: ConfigFactory) -> AsyncIterator[ProxyFactory]:
    url, sim = simulator

    async def make(*, settings_changes: dict[str, Any] | None = None, **config: Any) -> Proxy:
        settings = load_test_settings(write_config(url, **config))
        if settings_changes:
            settings = replace(settings, **settings_changes)
        app = create_app(settings)
        client = await aiohttp_client(app)
        key = await Proxy(client, app, "", sim).new_key(user="alice", team="core", org="acme", project="p1")
        proxy = Proxy(client, app, key, sim)
        made.append(proxy)
        return proxy

    made: list[Proxy] = []
    yield make
    for proxy in made:
        for close in proxy.closers:
            await close()
