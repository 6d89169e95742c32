"""``costproxy demo``: the proxy in front of a local SIMULATED provider, for trying it without keys.

Every configured provider is pointed at one simulator on loopback (its answers say they are
simulated and carry ``x-simulated-provider``; structured output works, see
``simulator_structured``), and a client key is issued and printed.

The demo keeps its own ledger, never the configured store (simulated spend must not mix with real
spend or budgets): ``costproxy-demo.sqlite3`` beside the configured SQLite file (with the shipped
configuration ``./data/costproxy-demo.sqlite3``; for a Redis store beside the replica's local
file) — ``demo_ledger_path`` — which ``costproxy usage --demo`` reads.  When the demo stops
(Ctrl-C or SIGTERM) it deletes what it created: that file (with its ``-wal``/``-shm`` companions)
and the directory if it made it and left it empty, unless ``--keep`` was given; a ledger that was
already there (kept by an earlier ``--keep``) is used and left in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from aiohttp import web

from costproxy.http.app import create_app
from costproxy.http.keys_api import issue_key
from costproxy.http.state import KEYRING, STORE
from costproxy.settings import ProviderSettings, Settings
from costproxy.store.backend import local_path
from costproxy.tools.simulator import start_simulator

DEMO_ADMIN_TOKEN = "demo-admin-token"
DEMO_LEDGER = "costproxy-demo.sqlite3"
_COMPANIONS = ("", "-wal", "-shm", "-journal")


def demo_ledger_path(settings: Settings) -> Path:
    """Where the demo keeps its ledger: beside the configured ledger file."""
    return Path(local_path(settings)).resolve().parent / DEMO_LEDGER


def simulated_settings(settings: Settings, simulator_url: str, store_path: Path) -> Settings:
    providers = {
        name: ProviderSettings(name=name, base_url=simulator_url, api_key="simulated", api_key_env=None,
                               auth="bearer", simulated=True, timeouts=p.timeouts)
        for name, p in settings.providers.items()
    }
    return replace(settings, providers=providers, store=replace(settings.store, url=f"sqlite:///{store_path}"),
                   admin=replace(settings.admin, token=settings.admin_token or DEMO_ADMIN_TOKEN))


@dataclass
class DemoLedger:
    """The demo's ledger file and what the demo created for it (and so may delete)."""

    path: Path
    created_file: bool
    created_dirs: tuple[Path, ...]

    @classmethod
    def prepare(cls, path: Path) -> DemoLedger:
        missing = []
        parent = path.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(path, not path.exists(), tuple(missing))

    def clean_up(self, keep: bool) -> str:
        """Delete what the demo created unless ``keep``; returns what happened, for the user."""
        if keep or not self.created_file:
            why = "--keep" if keep else "it existed before the demo"
            return f"demo ledger kept at {self.path} ({why}); read it with: costproxy usage --demo"
        for suffix in _COMPANIONS:
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        for directory in self.created_dirs:  # innermost first
            with contextlib.suppress(OSError):  # not empty: something else lives there now
                directory.rmdir()
        return f"demo ledger {self.path} deleted (run `costproxy demo --keep` to keep it)"


async def serve_demo(settings: Settings, *, keep: bool = False) -> str:
    """Run until Ctrl-C or SIGTERM; returns what became of the demo ledger."""
    ledger = DemoLedger.prepare(demo_ledger_path(settings))
    sim_runner, sim_url, _sim = await start_simulator(chunk_delay_ms=15)
    demo = simulated_settings(settings, sim_url, ledger.path)
    runner = web.AppRunner(create_app(demo))
    try:
        await runner.setup()
        await web.TCPSite(runner, demo.server.host, demo.server.port).start()
        app = runner.app
        key, record = await issue_key(app[STORE], {"name": "demo", "user": "demo-user", "team": "demo-team",
                                                   "org": "demo-org"}, time.time())
        app[KEYRING].add(record)
        host = demo.server.host
        base = f"http://{f'[{host}]' if ':' in host else host}:{runner.addresses[0][1]}"  # the port chosen for 0
        print(_banner(base, key, sim_url, demo.admin_token or "", ledger.path), flush=True)
        print(f"costproxy listening on {base}  (DEMO: simulated provider, ledger {ledger.path})", file=sys.stderr,
              flush=True)
        await _until_stopped()
    finally:
        await runner.cleanup()
        await sim_runner.cleanup()
    return ledger.clean_up(keep)


async def _until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _banner(base: str, key: str, sim_url: str, admin: str, ledger: Path) -> str:
    return f"""
costproxy DEMO — every answer comes from a LOCAL SIMULATED provider at {sim_url}
(no real model is called, no provider key is used, answers say they are simulated).

  export OPENAI_BASE_URL={base}/v1
  export OPENAI_API_KEY={key}
  curl -s $OPENAI_BASE_URL/chat/completions -H "Authorization: Bearer $OPENAI_API_KEY" \\
       -H 'content-type: application/json' \\
       -d '{{"model": "auto", "messages": [{{"role": "user", "content": "Summarize: costproxy saves money."}}]}}' -i

  Structured output works too (response_format json_object / json_schema, the SDKs' .parse()).
  Admin API token for this demo: {admin}
  Spend so far, from another terminal in this directory: costproxy usage --demo
  Ledger: {ledger} (deleted when the demo stops, unless it was started with --keep)
  Press Ctrl-C to stop.
"""


def run_demo(settings: Settings, *, keep: bool = False) -> int:
    outcome = asyncio.run(serve_demo(settings, keep=keep))
    print(f"demo stopped; {outcome}", file=sys.stderr)
    return 0
