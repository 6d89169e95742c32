"""Schemathesis over the ``/openapi.json`` the proxy serves (issue 7): bounded examples per operation.

The proxy (SQLite store, the simulator upstream, one budget, an admin token and a client key) runs
on its own event loop in a thread, because schemathesis calls it synchronously.  For every
documented operation, schema-valid requests (positive mode) must get an answer that is not a 5xx,
carries a documented status and validates against the documented response schema; invalid
requests (negative mode) must not get a 5xx either.  Every failure is collected, then reported
together.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from costproxy.http.app import create_app
from costproxy.http.keys_api import issue_key
from costproxy.http.state import KEYRING, STORE
from costproxy.tools.simulator import start_simulator
from tests.conftest import ADMIN_TOKEN, ConfigFactory, load_test_settings

POSITIVE_EXAMPLES = 12
NEGATIVE_EXAMPLES = 6
STATUSES: dict[str, int] = {}
TEAM = {"id": "team-core", "scope_type": "team", "scope_id": "core", "org": "acme", "limit_usd": "1",
        "period": "monthly"}


class ServedProxy:
    """The proxy and its simulated upstream on a private event loop in a daemon thread."""

    def __init__(self, write_config: ConfigFactory) -> None:
        self.write_config = write_config
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.base = ""
        self.key = ""
        self.error: BaseException | None = None
        self._runners: list[web.AppRunner] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as exc:  # reported by __enter__
            self.error = exc
        self.ready.set()
        if self.error is None:
            self.loop.run_forever()
        for runner in reversed(self._runners):
            self.loop.run_until_complete(runner.cleanup())

    async def _start(self) -> None:
        sim_runner, sim_url, _ = await start_simulator()
        self._runners.append(sim_runner)
        settings_ = load_test_settings(self.write_config(sim_url, extra={"budgets": {"definitions": [TEAM]}}))
        app = create_app(settings_)
        runner = web.AppRunner(app)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        self.key, record = await issue_key(app[STORE], {"user": "alice", "team": "core", "org": "acme"}, time.time())
        app[KEYRING].add(record)

    def __enter__(self) -> ServedProxy:
        self.thread.start()
        assert self.ready.wait(60), "the proxy did not start"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@pytest.fixture
def served(write_config: ConfigFactory) -> Iterator[ServedProxy]:
    with ServedProxy(write_config) as proxy:
        yield proxy


def headers_for(path: str, proxy: ServedProxy) -> dict[str, str]:
    """Admin token for /api/v1, the client key for the OpenAI-compatible edge."""
    return {"Authorization": f"Bearer {ADMIN_TOKEN if path.startswith('/api/') else proxy.key}"}


def explore(operation: Any, mode: GenerationMode, examples: int, proxy: ServedProxy,
            session: requests.Session, failures: list[str]) -> None:
    checks = [not_a_server_error]
    if mode is GenerationMode.POSITIVE:
        checks += [status_code_conformance, response_schema_conformance]

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        case = data.draw(operation.as_strategy(generation_mode=mode))
        response = case.call(base_url=proxy.base, session=session, headers=headers_for(operation.path, proxy),
                             timeout=30)
        STATUSES[f"{mode.value} {response.status_code}"] = STATUSES.get(f"{mode.value} {response.status_code}", 0) + 1
        case.validate_response(response, checks=checks)

    try:
        run()  # hypothesis shrinks the first failure it finds and raises it
    except Exception as exc:
        failures.append(f"{mode.value} {operation.method.upper()} {operation.path}: {str(exc)[:1500]}")


def test_every_operation_survives_schemathesis(served: ServedProxy, tmp_path: Path) -> None:
    document = requests.get(served.base + "/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20
    with requests.Session() as session:
        for operation in operations:
            explore(operation, GenerationMode.POSITIVE, POSITIVE_EXAMPLES, served, session, failures)
            explore(operation, GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES, served, session, failures)
    print("schemathesis:", len(operations), "operations", dict(sorted(STATUSES.items())))
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)
