"""Nothing blocks the event loop: big prompts are tokenized on a worker thread."""

from __future__ import annotations

import random
import threading
from typing import Any

from costproxy.http.state import SERVICES
from costproxy.pipeline.plan import OFFLOOP_TOKENIZE_CHARS

WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma")


class WatchedCounter:
    """The app's token counter, noting for each ``billable`` call whether it ran on the loop's thread."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.on_loop: list[bool] = []

    def billable(self, *args: Any, **kwargs: Any) -> Any:
        self.on_loop.append(threading.current_thread() is threading.main_thread())
        return self.inner.billable(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_large_prompt_is_tokenized_off_the_loop(make_proxy) -> None:
    """Which thread counts the tokens, not how long the loop's callbacks took: a wall-clock bar
    (asyncio's slow-callback report) cannot tell a blocking tokenizer from a machine busy with other
    work, and failed here under load while nothing blocked."""
    proxy = await make_proxy(extra={"server": {"host": "127.0.0.1", "port": 0, "max_body_bytes": 8_000_000}})
    services = proxy.app[SERVICES]
    watched = WatchedCounter(services.counter)
    services.counter = watched  # type: ignore[assignment]
    counted_on = watched.on_loop
    rng = random.Random(7)  # varied words: ~3.5 MB, hundreds of ms of tiktoken
    text = " ".join(f"{rng.choice(WORDS)}{rng.randint(0, 9999)}" for _ in range(400_000))
    assert len(text) > 100 * OFFLOOP_TOKENIZE_CHARS
    resp = await proxy.client.post("/v1/chat/completions", headers=proxy.auth(), json={
        "model": "big", "messages": [{"role": "user", "content": text}]})
    # counted exactly (off the loop), then refused: it cannot fit the 128k context window
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "context_length_exceeded"
    assert counted_on == [False]

    counted_on.clear()  # a small prompt is counted in place: a thread hop would cost more than it saves
    resp = await proxy.client.post("/v1/chat/completions", headers=proxy.auth(), json={
        "model": "big", "messages": [{"role": "user", "content": "hello"}]})
    assert resp.status == 200 and counted_on == [True]
