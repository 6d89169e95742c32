"""Money accounting at the edges of what upstreams do: every output-cap field forwarded stays
within the reservation on every API the proxy speaks natively."""

from __future__ import annotations

from typing import Any

from tests.integration.conftest import ProtocolProxy


async def test_native_bodies_carry_no_foreign_cap_above_the_reserved_one(protocol_proxy: ProtocolProxy,
                                                                         simulator: Any, anthropic_sim: Any) -> None:
    """A Responses body forwarded as it is may carry ``max_tokens`` too, a Messages body
    ``max_completion_tokens``: a lenient upstream could honour them, so they are lowered to the
    cap the reservation covers."""
    _, sim = simulator
    _, claude = anthropic_sim
    proxy = await protocol_proxy()
    resp = await proxy.client.post("/v1/responses", json={"model": "big", "input": "Hi", "max_output_tokens": 5,
                                                          "max_tokens": 100_000, "max_completion_tokens": 7},
                                   headers=proxy.auth())
    assert resp.status == 200, await resp.text()
    forwarded = sim.calls[-1].body
    assert (forwarded["max_output_tokens"], forwarded["max_tokens"], forwarded["max_completion_tokens"]) == (5, 5, 5)
    resp = await proxy.client.post("/v1/messages", json={"model": "claude", "max_tokens": 5, "max_completion_tokens":
                                                         100_000, "messages": [{"role": "user", "content": "Hi"}]},
                                   headers=proxy.auth())
    assert resp.status == 200, await resp.text()
    forwarded = claude.calls[-1].body
    assert (forwarded["max_tokens"], forwarded["max_completion_tokens"]) == (5, 5)
