"""What the console's browser tests run against: a real ``costproxy serve`` subprocess with a seeded
ledger, the simulated provider in a thread, a local webhook receiver, and Debian's chromium driven
by Playwright (never a browser Playwright downloads)."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from costproxy.ledger.entry import LedgerEntry
from costproxy.store.sqlite import INSERT_LEDGER, ledger_row, migrate
from tests.conftest import ADMIN_TOKEN, TEST_MODELS, TEST_QUALITY
from tests.e2e.harness import SimulatorThread, serve
from tests.polling import eventually_sync

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
ENV = {"SIM_API_KEY": "sk-provider-secret", "COSTPROXY_ADMIN_TOKEN": ADMIN_TOKEN}
RULES = {"version": 1, "rules": [
    {"id": "economy-for-classification", "name": "Classification goes economy", "priority": 10,
     "conditions": [{"field": "request.model_requested_virtual", "operator": "equals", "value": True},
                    {"field": "request.task_type", "operator": "equals", "value": "classification"}],
     "actions": [{"type": "route", "params": {"tier": "economy"}}]},
]}


def require_browser() -> Any:
    """Playwright's sync API, or a failure that names what is missing (never a skip)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the console's browser tests need the Python package 'playwright' (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        pytest.fail(f"the console's browser tests need Debian's chromium at {CHROMIUM}: apt-get install -y chromium")
    return sync_playwright


class Receiver:
    """A webhook endpoint on loopback that records every POST."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                received.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body or b"{}")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def seed_ledger(path: Path, now_ms: int, count: int = 600) -> None:
    """A week of traffic from three teams, so the charts and tables have something to show."""
    rng = random.Random(7)
    teams = {"search": ["ana", "ben"], "ml": ["dana", "eli"], "support": ["fay"]}
    prices = {"small": (150, 600), "backup": (100, 400), "big": (2500, 10000)}  # nano-USD per token (tests' registry)
    rows = []
    for i in range(count):
        team = rng.choice(list(teams))
        model = rng.choice(["small", "small", "backup", "big"])
        tin, tout = rng.randint(20_000, 300_000), rng.randint(1_000, 8_000)  # long documents: cents a request
        cost = tin * prices[model][0] + tout * prices[model][1]
        base = tin * prices["big"][0] + tout * prices["big"][1]
        rows.append(ledger_row(LedgerEntry(
            request_id=f"seed-{i}", ts_ms=now_ms - rng.randint(3_600_000, 6 * 86_400_000), endpoint="chat/completions",
            status="ok", http_status=200, key_id=f"key_seed{team}", user=rng.choice(teams[team]), team=team,
            org="acme", project="web", requested_model="auto" if model != "big" else "big", served_model=model,
            provider="sim2" if model == "backup" else "sim", prompt_tokens=tin, completion_tokens=tout,
            cost_nanos=cost, baseline_nanos=base, latency_ms=rng.randint(200, 2000),
            metadata={"rules": ["economy-for-classification"]} if model != "big" and rng.random() < 0.4 else {})))
    conn = sqlite3.connect(path)
    try:
        migrate(conn)
        conn.executemany(INSERT_LEDGER, rows)
        conn.commit()
    finally:
        conn.close()


def write_config(tmp: Path, sim_url: str) -> Path:
    (tmp / "rules").mkdir(exist_ok=True)
    (tmp / "rules" / "default.yaml").write_text(yaml.safe_dump(RULES))
    (tmp / "models.yaml").write_text(yaml.safe_dump(TEST_MODELS))
    (tmp / "quality.yaml").write_text(yaml.safe_dump(TEST_QUALITY))
    provider = {"base_url": sim_url, "api_key_env": "SIM_API_KEY"}
    config = tmp / "costproxy.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": 8080},
        "store": {"url": f"sqlite:///{tmp / 'ledger.sqlite3'}"},
        "models_file": "models.yaml", "quality_file": "quality.yaml", "rules_dir": "rules",
        "providers": {"sim": provider, "sim2": dict(provider)},
        "alerts": {"backoff_base_s": 0.2, "refresh_interval_s": 0.5},
    }))
    return config


@contextmanager
def running_proxy(tmp: Path, sim_url: str) -> Iterator[str]:
    config = write_config(tmp, sim_url)
    seed_ledger(tmp / "ledger.sqlite3", int(time.time() * 1000))
    with serve(config, ENV) as base:
        yield base


@contextmanager
def stack(tmp: Path) -> Iterator[dict[str, Any]]:
    with SimulatorThread() as sim, Receiver() as receiver, running_proxy(tmp, sim.url) as base:
        yield {"base": base, "receiver": receiver, "sim": sim, "tmp": tmp}


def call(base: str, method: str, path: str, body: Any = None, token: str = ADMIN_TOKEN) -> tuple[int, Any]:
    """An /api/v1 (or /v1) call with a bearer token, as another system would make it."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            raw = resp.read()
            kind = resp.headers.get("content-type", "")
            return resp.status, json.loads(raw) if "json" in kind else raw.decode()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def until(check: Callable[[], Any], what: str, seconds: float = 20.0) -> Any:
    """Poll ``check`` until it returns something truthy, or fail naming ``what``."""
    return eventually_sync(check, seconds, interval=0.1, what=what)
