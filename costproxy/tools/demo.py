"""``costproxy demo``: the proxy in front of a local SIMULATED provider, for trying it without keys.

Every configured provider is pointed at one simulator on loopback (its answers say they are
simulated and carry ``x-simulated-provider``), the store is a throw-away SQLite file, and a client
key is issued and printed.  Nothing here is used unless ``costproxy demo`` is run.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from costproxy.http.app import create_app
from costproxy.http.keys_api import issue_key
from costproxy.http.state import KEYRING, STORE
from costproxy.settings import ProviderSettings, Settings
from costproxy.tools.simulator import start_simulator

DEMO_ADMIN_TOKEN = "demo-admin-token"


def simulated_settings(settings: Settings, simulator_url: str, store_path: str) -> Settings:
    providers = {
        name: ProviderSettings(name=name, base_url=simulator_url, api_key="simulated", api_key_env=None,
                               auth="bearer", simulated=True, timeouts=p.timeouts)
        for name, p in settings.providers.items()
    }
    return replace(settings, providers=providers, store=replace(settings.store, url=f"sqlite:///{store_path}"),
                   admin=replace(settings.admin, token=settings.admin_token or DEMO_ADMIN_TOKEN))


async def serve_demo(settings: Settings) -> None:
    sim_runner, sim_url, _sim = await start_simulator(chunk_delay_ms=15)
    workdir = tempfile.mkdtemp(prefix="costproxy-demo-")
    demo = simulated_settings(settings, sim_url, str(Path(workdir) / "demo.sqlite3"))
    app = create_app(demo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, demo.server.host, demo.server.port)
    await site.start()
    key, record = await issue_key(app[STORE], {"name": "demo", "user": "demo-user", "team": "demo-team",
                                               "org": "demo-org"}, time.time())
    app[KEYRING].add(record)
    port = runner.addresses[0][1]  # the chosen one with --port 0
    base = f"http://{demo.server.host}:{port}/v1"
    print(_banner(base, key, sim_url, demo.admin_token or ""), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await sim_runner.cleanup()


def _banner(base: str, key: str, sim_url: str, admin: str) -> str:
    return f"""
costproxy DEMO — every answer comes from a LOCAL SIMULATED provider at {sim_url}
(no real model is called, no provider key is used, answers say they are simulated).

  export OPENAI_BASE_URL={base}
  export OPENAI_API_KEY={key}
  curl -s $OPENAI_BASE_URL/chat/completions -H "Authorization: Bearer $OPENAI_API_KEY" \\
       -H 'content-type: application/json' \\
       -d '{{"model": "auto", "messages": [{{"role": "user", "content": "Summarize: costproxy saves money."}}]}}' -i

  Admin API token for this demo: {admin}
  Press Ctrl-C to stop.
"""


def run_demo(settings: Settings) -> int:
    try:
        asyncio.run(serve_demo(settings))
    except KeyboardInterrupt:
        print("demo stopped", file=sys.stderr)
    return 0
