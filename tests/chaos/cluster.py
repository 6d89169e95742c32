"""Three ``costproxy serve`` subprocesses on one Redis (the chaos test's deployment).

Each replica has its own config directory, so a SIGKILLed replica restarts and finds its own SQLite
file (ledger mirror, durable outbox) again. Replicas bind port 0 and the port is read back from their
"listening on" line, so a restarted replica may answer on another port; traffic reads ``base`` at
each call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis as sync_redis
import yaml

from costproxy.budgets.redis import redis_client
from costproxy.http.keys_api import issue_key
from costproxy.identity.key_store_redis import RedisKeyStore
from costproxy.ledger.entry import LedgerEntry
from tests.conftest import ADMIN_TOKEN
from tests.conftest_redis import REDIS_DB, RedisServer, RedisSpace

ROOT = Path(__file__).resolve().parents[2]
ENV = {"FAKE_PROVIDER_KEY": "sk-fake", "COSTPROXY_ADMIN_TOKEN": ADMIN_TOKEN}
MARGIN = "0.30"  # the provider bills up to 30 % more prompt tokens than tiktoken counts
MAX_OUTPUT = 300
PRICE_IN, PRICE_OUT = 2500, 10000  # nano-USD per token ($2.50 / $10 per 1M)
USD = 1_000_000_000
# Alice and Bob (team core) exhaust these several times over; Carol (team lab, a soft budget only)
# keeps calls flowing through the whole run, and the org's hard budget stays clear.
HARD_LIMITS = {"acme": 10 * USD, "core": 50_000_000, "alice": 20_000_000, "bob": 20_000_000}
TTL_S = 2.0

MODELS = {"baseline_model": "chaosmodel", "models": {"chaosmodel": {
    "provider": "fake", "kind": "chat", "tier": "premium", "context_window": 128000, "max_output_tokens": MAX_OUTPUT,
    "encoding": "o200k_base", "capabilities": ["tools", "streaming"],
    "tokenizer": {"family": "chaos", "input_margin": MARGIN, "byte_level": True, "source": "the chaos test"},
    "price": {"input": "2.50", "output": "10.00", "source": "test", "as_of": "2026-11-25"}}}}


def budgets_section(prefix: str) -> dict[str, Any]:
    definitions: list[dict[str, Any]] = [
        {"id": "acme", "scope_type": "org", "scope_id": "acme", "limit_usd": "10", "period": "monthly"},
        {"id": "core", "scope_type": "team", "scope_id": "core", "org": "acme", "limit_usd": "0.05",
         "period": "daily"}]
    for user in ("alice", "bob"):
        definitions.append({"id": user, "scope_type": "user", "scope_id": user, "org": "acme",
                            "limit_usd": "0.02", "period": "total"})
    definitions.append({"id": "carol", "scope_type": "user", "scope_id": "carol", "org": "acme",
                        "limit_usd": "0.01", "period": "total", "on_exhausted": "notify"})
    return {"key_prefix": prefix, "reservation_ttl_s": TTL_S, "refresh_interval_s": 0.2, "definitions": definitions}


@dataclass
class Replica:
    directory: Path
    port: int
    proc: asyncio.subprocess.Process | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.directory / "config" / "costproxy.yaml"


class Cluster:
    def __init__(self, tmp_path: Path, redis: RedisServer, provider_url: str,
                 session: aiohttp.ClientSession) -> None:
        self.space = RedisSpace(f"{redis.endpoint}/{REDIS_DB}", "chaos" + uuid.uuid4().hex[:8])
        self.provider_url = provider_url
        self.session = session
        self.replicas = [Replica(tmp_path / f"r{i}", 0) for i in range(3)]
        self.keys: dict[str, str] = {}

    async def start(self) -> None:
        for replica in self.replicas:
            self._write(replica)
        for user in ("alice", "bob", "carol"):
            self.keys[user] = await self._key(user, "lab" if user == "carol" else "core")
        for index in range(len(self.replicas)):
            await self.restart(index)

    def _write(self, replica: Replica) -> None:
        config_dir = replica.config.parent
        config_dir.mkdir(parents=True)
        (replica.directory / "rules").mkdir()
        (config_dir / "models.yaml").write_text(yaml.safe_dump(MODELS))
        provider = {"base_url": self.provider_url, "api_key_env": "FAKE_PROVIDER_KEY",
                    "timeouts": {"connect": 1, "first_byte": 2.5, "read": 3, "stream_idle": 2.5}}
        replica.config.write_text(yaml.safe_dump({
            "server": {"host": "127.0.0.1"},
            "store": {"url": self.space.url, "local_path": str(replica.directory / "replica.sqlite3")},
            "models_file": "models.yaml", "rules_dir": "../rules",
            "providers": {"fake": provider},
            "budgets": budgets_section(self.space.prefix),
            "logging": {"level": "info", "json": True},
        }))

    async def _key(self, user: str, team: str) -> str:
        keys = RedisKeyStore(redis_client(self.space.url), prefix=self.space.prefix)
        try:
            secret, _ = await issue_key(keys, {"user": user, "team": team, "org": "acme"}, time.time())
            return secret
        finally:
            await keys.redis.aclose()

    async def restart(self, index: int) -> None:
        replica = self.replicas[index]
        log_path = replica.directory / "proxy.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        log = log_path.open("ab")
        replica.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "costproxy", "--config", str(replica.config), "serve", "--port", "0",
            env={**os.environ, **ENV}, stdout=log, stderr=log, cwd=ROOT)
        log.close()
        replica.port = 0
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if replica.proc.returncode is not None:
                raise AssertionError(f"replica {index} exited {replica.proc.returncode}, see {replica.directory}")
            if not replica.port:
                with log_path.open("rb") as handle:
                    handle.seek(offset)
                    found = re.search(rb"costproxy listening on http://[^ ]+:(\d+)", handle.read())
                replica.port = int(found.group(1)) if found else 0
            if replica.port:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with self.session.get(replica.base + "/readyz") as resp:
                        if resp.status == 200:
                            return
            await asyncio.sleep(0.1)
        raise AssertionError(f"replica {index} did not become ready, see {replica.directory}")

    async def kill(self, index: int) -> None:
        proc = self.replicas[index].proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    async def outboxes_empty(self) -> bool:
        for replica in self.replicas:
            try:
                async with self.session.get(replica.base + "/readyz") as resp:
                    body = await resp.json()
            except (aiohttp.ClientError, TimeoutError):
                return False
            if body.get("settlementsPending") or body.get("ledgerBacklog"):
                return False
        return True

    async def stop(self) -> None:
        for replica in self.replicas:
            if replica.proc is not None and replica.proc.returncode is None:
                replica.proc.send_signal(signal.SIGTERM)
        for replica in self.replicas:
            if replica.proc is None:
                continue
            try:
                await asyncio.wait_for(replica.proc.wait(), 20)
            except TimeoutError:
                replica.proc.kill()
                await replica.proc.wait()


def budget_counters(space: RedisSpace) -> dict[str, dict[str, int]]:
    client = space.client()
    try:
        return {key.decode(): {k.decode(): int(v) for k, v in client.hgetall(key).items()}
                for key in client.scan_iter(match=f"{space.prefix}:*:b:*")}
    except sync_redis.RedisError:
        return {"unreachable": {"reserved": -1}}
    finally:
        client.close()


def ledger_entries(space: RedisSpace) -> list[LedgerEntry]:
    client = space.client()
    try:
        return [LedgerEntry(**orjson.loads(f[b"e"])) for _, f in client.xrange(f"{space.prefix}:{{acme}}:ledger")]
    except sync_redis.RedisError:
        return []
    finally:
        client.close()
