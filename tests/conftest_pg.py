"""A real PostgreSQL for the ledger tests: 127.0.0.1:5432 (trust auth), a fresh database per test.

Import the fixtures into a test module (``from tests.conftest_pg import pg_server, pg_url``).
``pg_url`` creates a database of its own (``costproxy_t_<random>``) and drops it after the test,
so suites running at once on one machine never see each other's rows.  If PostgreSQL does not
answer, the tests fail (never skip) naming what is missing.  ``PG_ADMIN_URL`` overrides where.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin():  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL, once PostgreSQL answers on it."""
    try:
        import psycopg
    except ImportError:
        pytest.fail("these tests need psycopg: pip install -e '.[test]' (it brings costproxy[postgres])",
                    pytrace=False)
    try:
        with _admin() as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        pytest.fail(f"these tests need PostgreSQL at {ADMIN_URL} (trust auth, a role that may create "
                    f"databases; Debian package postgresql): {str(exc).strip()}", pytrace=False)
    return ADMIN_URL


def database_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """``postgresql://…/costproxy_t_<random>``: an empty database, dropped after the test."""
    name = "costproxy_t_" + uuid.uuid4().hex[:12]
    with _admin() as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield database_url(name)
    finally:
        with _admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class TcpRelay:
    """A TCP relay to PostgreSQL on a port of its own: ``cut()`` closes every connection and
    refuses new ones (PostgreSQL "goes away"), ``restore()`` accepts again on the same port;
    ``freeze()`` keeps every connection open but passes nothing on (a server that is reachable but
    does not answer, as if SIGSTOPped), ``thaw()`` lets it flow again."""

    def __init__(self, target_port: int = 5432) -> None:
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.StreamWriter] = set()
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def start(self) -> TcpRelay:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.pipes.update((writer, up_writer))
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            self.pipes.discard(writer)
            writer.close()

    async def cut(self) -> None:
        self.flowing.set()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for writer in list(self.pipes):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self.pipes.clear()

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    async def restore(self) -> None:
        await self.start()

    def url(self, database_url: str) -> str:
        return database_url.replace("127.0.0.1:5432", f"127.0.0.1:{self.port}")
