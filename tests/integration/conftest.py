"""Integration fixtures for the protocol tests: the OpenAI simulator (chat + Responses), the Anthropic
simulator, and a proxy configured with one provider of each kind."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest

from costproxy.tools.anthropic_simulator import AnthropicSimulator, start_anthropic_simulator
from tests.conftest import TEST_MODELS, Proxy
from tests.polling import eventually

CLAUDE_PRICE = {"input": "3", "output": "15", "cached_input": "0.30", "cache_write": "3.75",
                "cache_write_1h": "6", "source": "test", "as_of": "2026-11-25"}


def protocol_models() -> dict[str, Any]:
    models = copy.deepcopy(TEST_MODELS)
    models["models"]["claude"] = {"provider": "claude", "tier": "premium", "context_window": 200000,
                                  "max_output_tokens": 8192, "capabilities": ["tools", "vision", "streaming"],
                                  "price": CLAUDE_PRICE}
    return models


def priced(price: dict[str, str], prompt: int, completion: int, cached: int = 0, write: int = 0,
           write_1h: int = 0) -> int:
    """Nano-USD of a usage at per-1M prices (every test price is a whole number of nano-USD per token)."""
    rate = {k: int(Decimal(v) * 1000) for k, v in price.items() if k not in ("source", "as_of")}
    plain = prompt - cached - write
    return (plain * rate["input"] + completion * rate["output"] + cached * rate.get("cached_input", rate["input"])
            + (write - write_1h) * rate.get("cache_write", rate["input"])
            + write_1h * rate.get("cache_write_1h", rate.get("cache_write", rate["input"])))


BIG = {"input": "2.50", "cached_input": "1.25", "output": "10.00"}
BACKUP = {"input": "0.10", "output": "0.40"}


@pytest.fixture
async def anthropic_sim() -> AsyncIterator[tuple[str, AnthropicSimulator]]:
    runner, url, sim = await start_anthropic_simulator(api_key="sk-ant-test")
    yield url, sim
    await runner.cleanup()


ProtocolProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture
def protocol_proxy(make_proxy: Any, simulator: Any, anthropic_sim: Any) -> ProtocolProxy:
    """A proxy whose provider ``sim`` speaks Responses natively, ``sim2`` only chat completions,
    and ``claude`` is ``kind: anthropic`` (the Anthropic simulator)."""
    url, _ = simulator
    anthropic_url, _ = anthropic_sim

    async def make(count_tokens: bool = False, models: dict[str, Any] | None = None, **extra: Any) -> Proxy:
        timeouts = {"connect": 2, "first_byte": 5, "read": 5, "stream_idle": 5}
        providers = {
            "sim": {"base_url": url, "api_key_env": "SIM_API_KEY", "responses_api": True, "timeouts": timeouts},
            "sim2": {"base_url": url, "api_key_env": "SIM_API_KEY", "timeouts": timeouts},
            "claude": {"kind": "anthropic", "base_url": anthropic_url, "api_key_env": "ANTHROPIC_TEST_KEY",
                       "count_tokens": count_tokens, "timeouts": timeouts},
        }
        return await make_proxy(models=models or protocol_models(),  # type: ignore[no-any-return]
                                extra={"providers": providers, **extra})

    return make


async def ledger_entry(proxy: Proxy, request_id: str, seconds: float = 15.0) -> Any:
    """The ledger entry of ``request_id``, waiting (bounded) for a stream's settlement."""

    async def entries() -> list[Any]:
        return [e for e in await proxy.ledger() if e.request_id == request_id]

    return (await eventually(entries, seconds, what=f"a ledger entry for {request_id}"))[-1]


def base_url(proxy: Proxy) -> str:
    return str(proxy.client.make_url("/v1"))
