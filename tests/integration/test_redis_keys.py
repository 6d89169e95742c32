"""Client keys shared through Redis: two replicas (``create_app`` against one Redis), the CLI, an outage."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from costproxy.budgets.redis import redis_client
from costproxy.errors import InternalError, StoreUnavailable
from costproxy.http.app import create_app
from costproxy.http.state import KEY_STORE
from costproxy.identity.key_store import KeyStore
from costproxy.identity.key_store_redis import RedisKeyStore
from costproxy.identity.principal import KeyRecord
from costproxy.settings import Settings
from costproxy.store.backend import local_path as ledger_path
from tests.conftest import ADMIN_TOKEN, load_test_settings
from tests.conftest_redis import RedisServer, RedisSpace, own_redis, redis_endpoint, redis_space  # noqa: F401
from tests.polling import eventually

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = {"model": "small", "max_tokens": 20, "messages": [{"role": "user", "content": "hi [[sim:tokens=3]]"}]}


@dataclass
class Replica:
    client: TestClient[Any, Any]
    app: web.Application
    settings: Settings

    async def status(self, key: str) -> int:
        async with self.client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}) as resp:
            return resp.status


ReplicaFactory = Callable[..., Awaitable[Replica]]


def spy_on_failed_refreshes(keys: KeyStore) -> list[StoreUnavailable]:
    """The errors the key refresher met from now on (it polls ``version()`` every 2 s)."""
    failed: list[StoreUnavailable] = []
    version = keys.version

    async def watched() -> int:
        try:
            return await version()
        except StoreUnavailable as exc:
            failed.append(exc)
            raise

    keys.version = watched  # type: ignore[method-assign]
    return failed


@pytest.fixture
def config_path(simulator: Any, write_config: Any, redis_space: RedisSpace) -> Path:  # noqa: F811
    """One config dir for every replica, as when several are started from the same deployment."""
    path: Path = write_config(simulator[0], extra={"budgets": {"key_prefix": redis_space.prefix}})
    return path


@pytest.fixture
def make_replica(aiohttp_client: Any, config_path: Path, redis_space: RedisSpace) -> ReplicaFactory:  # noqa: F811
    async def make(port: int, *, url: str | None = None) -> Replica:
        settings = load_test_settings(config_path, COSTPROXY_STORE_URL=url or redis_space.url)
        settings = replace(settings, server=replace(settings.server, port=port))  # {port} of store.local_path
        app = create_app(settings)
        return Replica(await aiohttp_client(app), app, settings)

    return make


async def create_key(replica: Replica, **fields: str) -> dict[str, Any]:
    async with replica.client.post("/api/v1/keys", headers=ADMIN, json=fields) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 201, body
        return body


def exists(path: str) -> bool:
    return Path(path).exists()


def raw_records(space: RedisSpace) -> dict[bytes, bytes]:
    client = space.client()
    try:
        return dict(client.hgetall(f"{space.prefix}:{{keys}}:records"))  # type: ignore[arg-type]
    finally:
        client.close()


async def test_a_key_created_on_one_replica_works_on_the_other_and_a_revoke_spreads(
        make_replica: ReplicaFactory, redis_space: RedisSpace) -> None:  # noqa: F811
    a, b = await make_replica(18101), await make_replica(18102)
    assert ledger_path(a.settings) != ledger_path(b.settings)  # one config dir, a local file each
    assert all(exists(ledger_path(r.settings)) for r in (a, b))
    created = await create_key(a, user="bob", team="core", org="acme")
    secret = created["key"]
    assert await a.status(secret) == 200 and await b.status(secret) == 401
    await eventually(lambda: _is(b, secret, 200))
    records = raw_records(redis_space)
    assert list(records) == [created["id"].encode()]
    body = records[created["id"].encode()]
    assert secret.encode() not in body and hashlib.sha256(secret.encode()).hexdigest().encode() in body
    async with b.client.delete(f"/api/v1/keys/{created['id']}", headers=ADMIN) as resp:
        assert resp.status == 200 and (await resp.json())["active"] is False
    assert await b.status(secret) == 401
    await eventually(lambda: _is(a, secret, 401))
    async with a.client.get("/api/v1/keys", headers=ADMIN) as resp:
        assert [k["active"] for k in (await resp.json())["data"]] == [False]


async def test_revoking_a_key_this_replica_has_not_loaded_yet(make_replica: ReplicaFactory) -> None:
    a, b = await make_replica(18111), await make_replica(18112)
    created = await create_key(a, user="bob")
    async with b.client.delete(f"/api/v1/keys/{created['id']}", headers=ADMIN) as resp:
        assert resp.status == 200 and (await resp.json())["active"] is False
    async with b.client.delete("/api/v1/keys/key_missing", headers=ADMIN) as resp:
        assert resp.status == 404
    await eventually(lambda: _is(a, created["key"], 401))


async def _is(replica: Replica, key: str, status: int) -> bool:
    return await replica.status(key) == status


async def cli(config: Path, url: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "costproxy", "--config", str(config), "keys", *args,
        env={**os.environ, "COSTPROXY_STORE_URL": url}, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_keys_in_redis_mode_reach_running_replicas(
        make_replica: ReplicaFactory, config_path: Path, redis_space: RedisSpace) -> None:  # noqa: F811
    a = await make_replica(18121)
    code, out, err = await cli(config_path, redis_space.url, "create", "--user", "carol", "--team", "core")
    assert code == 0, err
    secret = out.split("store it now): ")[1].strip()
    key_id = out.split()[1]
    await eventually(lambda: _is(a, secret, 200))
    code, out, _ = await cli(config_path, redis_space.url, "list")
    assert code == 0 and key_id in out and "active" in out and "user=carol" in out
    code, out, _ = await cli(config_path, redis_space.url, "revoke", key_id)
    assert code == 0 and f"revoked {key_id}" in out
    await eventually(lambda: _is(a, secret, 401))
    code, _, err = await cli(config_path, redis_space.url, "revoke", key_id)
    assert code == 1 and "no active key" in err


async def test_cli_says_when_redis_is_unreachable(config_path: Path, own_redis: RedisServer) -> None:  # noqa: F811
    url = f"{own_redis.endpoint}/13"
    own_redis.stop()
    code, out, err = await cli(config_path, url, "create", "--user", "dave")
    assert code == 1 and "unreachable" in err and "cp-" not in out


async def test_redis_outage_keeps_known_keys_working_and_refuses_key_changes(
        make_replica: ReplicaFactory, own_redis: RedisServer) -> None:  # noqa: F811
    replica = await make_replica(18131, url=f"{own_redis.endpoint}/13")
    known = await create_key(replica, user="erin", team="core", org="acme")
    failed = spy_on_failed_refreshes(replica.app[KEY_STORE])
    own_redis.stop()
    await eventually(lambda: failed, what="a key refresh against the stopped Redis")
    assert await replica.status(known["key"]) == 200
    async with replica.client.post("/v1/chat/completions", json=CHAT,
                                   headers={"Authorization": f"Bearer {known['key']}"}) as resp:
        assert resp.status == 200, await resp.text()
    for method, path, body in (("POST", "/api/v1/keys", {"user": "frank"}),
                               ("DELETE", f"/api/v1/keys/{known['id']}", None)):
        async with replica.client.request(method, path, headers=ADMIN, json=body) as resp:
            error = (await resp.json())["error"]
            assert resp.status == 503 and error["code"] == "store_unavailable", error
    own_redis.start()
    fresh = await create_key(replica, user="frank")
    assert await replica.status(fresh["key"]) == 200 and await replica.status(known["key"]) == 200


async def test_a_replica_started_while_redis_is_down_says_so_instead_of_rejecting_keys(
        make_replica: ReplicaFactory, own_redis: RedisServer) -> None:  # noqa: F811
    """It has never read the keys: a valid key is not 'invalid', the store is away (503), and the
    replica is not ready until it has read them."""
    url = f"{own_redis.endpoint}/13"
    first = await make_replica(18132, url=url)
    known = await create_key(first, user="gina", team="core", org="acme")
    own_redis.stop()
    late = await make_replica(18133, url=url)
    async with late.client.get("/v1/models", headers={"Authorization": f"Bearer {known['key']}"}) as resp:
        error = (await resp.json())["error"]
        assert resp.status == 503 and error["code"] == "store_unavailable", error
    async with late.client.get("/readyz") as resp:
        assert resp.status == 503 and (await resp.json())["status"] == "keys_unavailable"
    own_redis.start()  # a Redis without persistence: it comes back empty

    async def ready() -> bool:
        async with late.client.get("/readyz") as resp:
            return resp.status == 200

    await eventually(ready, what="the replica ready once it has read the keys")
    fresh = await create_key(first, user="hugo")

    async def served() -> bool:
        return await late.status(fresh["key"]) == 200

    await eventually(served, what="a key created meanwhile accepted")
    assert await late.status("cp-" + "x" * 43) == 401  # and an unknown key is invalid again


async def test_key_store_records_are_unique_and_revokes_are_compare_and_set(
        redis_space: RedisSpace) -> None:  # noqa: F811
    store = RedisKeyStore(redis_client(redis_space.url), prefix=redis_space.prefix)
    try:
        record = KeyRecord(id="key_1", key_hash="ab" * 32, prefix="cp-abcd", user="u", created_at=1764100169.123456)
        assert await store.version() == 0
        await store.insert(record)
        assert await store.load_all() == [record] and await store.version() == 1  # floats survive exactly
        with pytest.raises(InternalError):
            await store.insert(replace(record, id="key_2"))  # same hash
        results = await asyncio.gather(*(store.revoke("key_1", 1764100200.5) for _ in range(5)))
        assert sorted(results) == [False] * 4 + [True]
        assert await store.load_all() == [replace(record, revoked_at=1764100200.5)]
        assert await store.version() == 2
        assert await store.revoke("key_404", 1.0) is False
    finally:
        await store.redis.aclose()
