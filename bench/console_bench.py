"""Server time of the console's reads over a big ledger (issue 11: overview under 300 ms at 100,000 entries).

    python bench/console_bench.py                  # 100,000 ledger entries, 30 rounds
    python bench/console_bench.py -n 1000000 --rounds 10

Writes ``n`` ledger entries (this month, 40 teams, 400 users, 400 keys, 6 models, a third asking
for ``auto``, some touched by a steering rule) into a fresh SQLite file, starts the real app on
127.0.0.1 (``create_app``; 20 budgets so the overview has statuses to compute), signs nothing in
(it uses the admin token), and times each call the console makes with a warm cache:

- wall time of the HTTP call as the browser sees it on loopback (p50 / p95 / max), and
- for the overview, the handler's own ``serverMs`` figure (what the issue's target is about).

Prints figures only; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costproxy.http.app import create_app
from costproxy.ledger.entry import LedgerEntry
from costproxy.settings import load_settings
from costproxy.store.sqlite import INSERT_LEDGER, ledger_row, migrate

TOKEN = "bench-admin-token"
MODELS = ["gpt-4o-mini", "gpt-4o", "claude-haiku-4-5", "gemini-2.5-flash", "llama-3.3-70b", "deepseek-chat"]


def seed(path: Path, n: int, now_ms: int) -> None:
    rng = random.Random(11)
    month_ms = 25 * 86_400_000
    conn = sqlite3.connect(path)
    migrate(conn)
    batch = []
    stamps = sorted(now_ms - rng.randrange(month_ms) for _ in range(n))  # append-only: the ledger is in time order
    for i, ts_ms in enumerate(stamps):
        team = f"team-{rng.randrange(40)}"
        auto = rng.random() < 0.33
        batch.append(ledger_row(LedgerEntry(
            request_id=f"r{i}", ts_ms=ts_ms, endpoint="chat/completions",
            status="ok" if rng.random() > 0.01 else "refused", error_code="budget_exceeded",
            http_status=200, key_id=f"key_{rng.randrange(400)}",
            user=f"user-{rng.randrange(400)}", team=team, org="acme", project=f"p{rng.randrange(20)}",
            requested_model="auto" if auto else rng.choice(MODELS), served_model=rng.choice(MODELS),
            provider="openai", decision_id=f"d{i}" if auto else None, prompt_tokens=rng.randrange(100, 4000),
            completion_tokens=rng.randrange(10, 800), cost_nanos=rng.randrange(10_000, 5_000_000),
            baseline_nanos=rng.randrange(5_000_000, 9_000_000),
            metadata={"rules": ["cap-output-classification"]} if auto and rng.random() < 0.3 else {})))
        if len(batch) == 10_000:
            conn.executemany(INSERT_LEDGER, batch)
            conn.commit()
            batch = []
    conn.executemany(INSERT_LEDGER, batch)
    conn.commit()
    conn.close()


def write_config(tmp: Path, db: Path) -> Path:
    root = Path(__file__).resolve().parents[1]
    budgets = [{"id": f"b{i}", "scope_type": "team", "scope_id": f"team-{i}", "limit_usd": "50", "period": "monthly"}
               for i in range(20)]
    config = tmp / "costproxy.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": 0}, "store": {"url": f"sqlite:///{db}"},
        "models_file": str(root / "config" / "models.yaml"), "quality_file": str(root / "config" / "quality.yaml"),
        "rules_dir": str(root / "rules"), "budgets": {"definitions": budgets},
        "providers": {name: {"base_url": "http://127.0.0.1:9/v1"} for name in
                      ("openai", "azure", "anthropic", "google", "groq", "together", "mistral", "deepseek", "ollama")},
    }))
    return config


async def timed(session: aiohttp.ClientSession, url: str, rounds: int) -> tuple[list[float], list[float]]:
    walls, servers = [], []
    for _ in range(rounds + 2):
        start = time.perf_counter()
        async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            body: Any = await resp.json() if resp.content_type == "application/json" else await resp.text()
            assert resp.status == 200, body
        walls.append((time.perf_counter() - start) * 1000)
        if isinstance(body, dict) and "serverMs" in body:
            servers.append(float(body["serverMs"]))
    return walls[2:], servers[2:]  # the first two warm the page cache


def line(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"{name:52} p50 {statistics.median(ordered):7.1f} ms   p95 {p95:7.1f} ms   max {ordered[-1]:7.1f} ms"


async def main(n: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        db = tmp / "ledger.sqlite3"
        started = time.perf_counter()
        seed(db, n, int(time.time() * 1000))
        print(f"seeded {n:,} ledger entries in {time.perf_counter() - started:.1f} s")
        settings = load_settings(write_config(tmp, db), {"COSTPROXY_ADMIN_TOKEN": TOKEN})
        runner = web.AppRunner(create_app(settings))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        calls = [("overview (GET /api/v1/analytics/overview)", "/api/v1/analytics/overview?tz=Europe/Berlin"),
                 ("spend by team, 30 days per day", "/api/v1/analytics/spend?groupBy=team&range=30d&tz=Europe/Berlin"),
                 ("spend by user, 7 days per hour", "/api/v1/analytics/spend?groupBy=user&range=7d&bucket=hour"),
                 ("spend by team as CSV", "/api/v1/analytics/spend?groupBy=team&range=30d&format=csv"),
                 ("keys with last use (400 keys)", "/api/v1/keys"),
                 ("savings per rule, 30 days", "/api/v1/analytics/rules?range=30d"),
                 ("budgets with status (20)", "/api/v1/budgets?withStatus=true")]
        try:
            async with aiohttp.ClientSession() as session:
                for name, path in calls:
                    walls, servers = await timed(session, base + path, rounds)
                    print(line(name + " wall", walls))
                    if servers:
                        print(line(name + " serverMs", servers))
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100_000, help="ledger entries (default 100,000)")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.rounds))
