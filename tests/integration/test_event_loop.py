"""Nothing blocks the event loop: big prompts are tokenized on a worker thread."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from costproxy.pipeline.plan import OFFLOOP_TOKENIZE_CHARS

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma")


async def test_large_prompt_does_not_block_the_loop(make_proxy, caplog: pytest.LogCaptureFixture) -> None:
    proxy = await make_proxy(extra={"server": {"host": "127.0.0.1", "port": 0, "max_body_bytes": 8_000_000}})
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05  # any callback holding the loop for 50 ms is reported
    rng = random.Random(7)  # varied words: ~3.5 MB that take tiktoken well over 50 ms
    text = " ".join(f"{rng.choice(WORDS)}{rng.randint(0, 9999)}" for _ in range(400_000))
    assert len(text) > 100 * OFFLOOP_TOKENIZE_CHARS
    caplog.set_level(logging.WARNING, logger="asyncio")
    try:
        resp = await proxy.client.post("/v1/chat/completions", headers=proxy.auth(), json={
            "model": "big", "messages": [{"role": "user", "content": text}]})
        # counted exactly (off the loop), then refused: it cannot fit the 128k context window
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "context_length_exceeded"
    finally:
        loop.set_debug(False)
    slow = [r.getMessage() for r in caplog.records if "took" in r.getMessage()]
    assert not slow, slow
