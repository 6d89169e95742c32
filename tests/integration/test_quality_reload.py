"""A quality file written over the running proxy's (e.g. by ``costproxy calibrate --out``) is hot
reloaded like the rules, and its status is shown beside the rules' status."""

from __future__ import annotations

import asyncio
from typing import Any

import yaml

from costproxy.http.state import ROUTER
from tests.conftest import ADMIN_TOKEN, TEST_QUALITY, ProxyFactory

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def _status(proxy: Any) -> dict[str, Any]:
    resp = await proxy.client.get("/api/v1/rules", headers=ADMIN)
    assert resp.status == 200
    body: dict[str, Any] = (await resp.json())["quality"]
    return body


async def _until(proxy: Any, done: Any) -> dict[str, Any]:
    state = await _status(proxy)
    for _ in range(100):  # the reloader polls every 2 s
        if done(state):
            break
        await asyncio.sleep(0.1)
        state = await _status(proxy)
    return state


async def test_quality_file_hot_reload(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    router = proxy.app[ROUTER]
    first = await _status(proxy)
    assert first["valid"] is True and first["file"].endswith("quality.yaml") and first["lastReload"] is None
    assert router.quality_file is not None
    path = router.quality_file.path

    path.write_text(yaml.safe_dump({**TEST_QUALITY, "source": "fitted by costproxy calibrate (test)"}))
    state = await _until(proxy, lambda s: s["digest"] != first["digest"])
    assert state["valid"] is True and state["source"] == "fitted by costproxy calibrate (test)"
    assert state["lastReload"]["ok"] is True and router.quality.source == state["source"]

    path.write_text(yaml.safe_dump({**TEST_QUALITY, "tier_priors": {"economy": 2.0}}))
    broken = await _until(proxy, lambda s: not s["valid"])
    assert broken["valid"] is False and "tier_priors.economy" in broken["lastReload"]["error"]
    assert broken["digest"] == state["digest"] and router.quality.source == state["source"]
