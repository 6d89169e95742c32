"""Real Redis for the budget tests: 127.0.0.1:6379 if it answers, else a redis-server we start.

Import the fixtures into a test module (``from tests.conftest_redis import redis_space, ...``).
The tests use database 13 (``REDIS_DB``) only, and inside it a key prefix of their own
(``RedisSpace.prefix``, used as ``budgets.key_prefix``) whose keys are deleted after the test, so
two suites running at once on one machine (several engineers, CI) do not flush each other's data.
``own_redis`` starts a private server (port chosen as ``RedisServer`` says) for tests that stop and restart Redis.
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


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A redis-server process of our own (no persistence by default).

    redis-server cannot be asked for "any free port" (``--port 0`` turns TCP off), so the first
    start takes a port the kernel just handed out and checks that the server answering there is
    this process (``INFO server`` → ``process_id``); when another process took the port meanwhile,
    redis-server exits and the next candidate is tried. Restarts reuse the port: the tests that
    stop and start Redis need clients to find it at the same address.
    """

    ATTEMPTS = 5

    def __init__(self, workdir: Path, options: tuple[str, ...] = ("--appendonly", "no")) -> None:
        self.port = 0  # chosen on the first start
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
        for port in ([self.port] if self.port else [_kernel_port() for _ in range(self.ATTEMPTS)]):
            if self._start_on(binary, port):
                self.port = port
                return self
        pytest.fail(f"redis-server did not start (last port tried: {port})", pytrace=False)

    def _start_on(self, binary: str, port: int) -> bool:
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", *self.options,
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc = self.proc

        def up() -> bool | None:  # True: ours answers; None: not ours (the port was taken); False: not yet
            if proc.poll() is not None:
                return None
            if not answers("127.0.0.1", port):
                return False
            return True if _pid_on(port) == proc.pid else None

        deadline = time.monotonic() + 30
        while (state := up()) is False and time.monotonic() < deadline:
            time.sleep(0.05)
        if state:
            return True
        self.kill()
        return False

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


def _kernel_port() -> int:
    """A port the kernel considers free now (a candidate: see ``RedisServer``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pid_on(port: int) -> int | None:
    """The process id of the Redis answering on ``port``."""
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://host:port`` of a Redis the suite may use (database 13 only)."""
    if answers(DEFAULT_HOST, DEFAULT_PORT):
        yield f"redis://{DEFAULT_HOST}:{DEFAULT_PORT}"
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
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
    server = RedisServer(tmp_path / "own-redis").start()
    try:
        yield server
    finally:
        server.stop()
