"""Real Redis for the budget tests: 127.0.0.1:6379 if it answers, else a redis-server we start.

Import the fixtures into a test module (``from tests.conftest_redis import redis_space, ...``).
The tests use database 13 (``REDIS_DB``) only, and inside it a key prefix of their own
(``RedisSpace.prefix``, used as ``budgets.key_prefix``) whose keys are deleted after the test, so
two suites running at once on one machine (several engineers, CI) do not flush each other's data.
``own_redis`` starts a private server on a free port for tests that stop and restart Redis.
If no Redis answers and no ``redis-server`` binary is installed, the tests fail (not skip) with a
message naming what is missing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

REDIS_DB = 13
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 6379


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A redis-server process of our own (no persistence) on ``port``."""

    def __init__(self, port: int, workdir: Path, options: tuple[str, ...] = ("--appendonly", "no")) -> None:
        self.port = port
        self.workdir = workdir
        self.options = options  # persistence: no AOF by default; ("--appendonly", "yes", ...) to keep data
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("these tests need Redis: nothing answers on 127.0.0.1:6379 and no redis-server "
                        "binary is on PATH (install the Debian package redis-server)", pytrace=False)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", *self.options,
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not answers("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start on port {self.port}", pytrace=False)
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no shutdown save; only what the AOF already holds survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="session")
def redis_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://host:port`` of a Redis the suite may use (database 13 only)."""
    if answers(DEFAULT_HOST, DEFAULT_PORT):
        yield f"redis://{DEFAULT_HOST}:{DEFAULT_PORT}"
        return
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.endpoint
    finally:
        server.stop()


@dataclass(frozen=True)
class RedisSpace:
    url: str  # redis://host:port/13
    prefix: str  # every key of the test starts with it

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def delete_all(self) -> None:
        client = self.client()
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start:start + 500])
        finally:
            client.close()


def new_space(endpoint: str) -> RedisSpace:
    return RedisSpace(f"{endpoint}/{REDIS_DB}", "t" + uuid.uuid4().hex[:10])


@pytest.fixture
def redis_space(redis_endpoint: str) -> Iterator[RedisSpace]:
    """Database 13 and a fresh key prefix; the prefix's keys are deleted after the test."""
    space = new_space(redis_endpoint)
    yield space
    space.delete_all()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server the test may stop and start again on the same port."""
    server = RedisServer(free_port(), tmp_path / "own-redis").start()
    try:
        yield server
    finally:
        server.stop()
