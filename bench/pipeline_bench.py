"""CPU per request of the pipeline alone, in-process: repeatable before/after figures for one change.

``proxy_bench.py`` gives the end-to-end ratios, but on a shared machine its CPU per request moves by
±15 % between runs, more than most single optimisations save.  This script runs ``run_unary``
(token counting, routing with the project's rules, three budgets reserved and settled on the
SQLite store, the ledger entry) against an in-memory upstream, for a named model and for ``auto``,
in alternating batches, and prints the CPU per request (this process, every thread) as median and
minimum over the rounds.  The HTTP edge, the log line and the metrics are not in it.

``--instructions`` runs the same under ``valgrind --tool=callgrind`` twice (N and 2N requests of
one scenario) and prints the instructions per request (the difference over N): unaffected by other
work on the machine, so it compares two trees exactly.

Usage::

    python3 bench/pipeline_bench.py                     # 10 rounds of 500 requests per scenario
    python3 bench/pipeline_bench.py --instructions auto # instructions per auto request (slow: ~1 min)
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BODY = {"max_tokens": 256, "temperature": 0.2,
        "messages": [{"role": "system", "content": "You are a concise assistant. Answer in two sentences at most, "
                                                   "in plain English."},
                     {"role": "user", "content": "What is the capital of France? Give one fact about its size and "
                                                 "two landmarks a first-time visitor should see, and say which "
                                                 "river runs through it."}]}
BUDGETS = [{"id": f"bench-{kind}", "scope_type": kind, "scope_id": scope, "limit_usd": "1000000",
            "period": "monthly"} for kind, scope in (("org", "bench-org"), ("team", "perf"), ("user", "bench"))]
SCENARIOS = {"named": "gpt-4o-mini", "auto": "auto"}


async def run(work: Path, rounds: int, batch: int, scenarios: list[str]) -> dict[str, list[float]]:
    import yaml
    from limits_bench import CannedUpstream

    from costproxy.analyzer.encodings import load_encodings
    from costproxy.analyzer.tokens import TokenCounter
    from costproxy.identity.principal import Principal
    from costproxy.pipeline.run import run_unary
    from costproxy.pipeline.services import Services
    from costproxy.request import Endpoint, RequestContext, parse_request
    from costproxy.routing.router import build_router
    from costproxy.settings import load_settings
    from costproxy.store.backend import open_backend

    config = yaml.safe_load((ROOT / "config" / "costproxy.yaml").read_text())
    config.update(models_file=str(ROOT / "config" / "models.yaml"), rules_dir=str(ROOT / "rules"),
                  budgets={"definitions": BUDGETS}, store={"url": f"sqlite:///{work / 'pipeline.sqlite3'}"})
    (work / "costproxy.yaml").write_text(yaml.safe_dump(config))
    keys = {p["api_key_env"]: "sk-bench" for p in config["providers"].values() if "api_key_env" in p}
    settings = load_settings(work / "costproxy.yaml", keys)  # every provider servable, as in proxy_bench
    backend = await open_backend(settings)
    store, accounts = backend.local, backend.accounts
    caller = Principal(key_id="key_bench", user="bench", team="perf", org="bench-org")
    services = Services(settings=settings, registry=settings.registry, counter=TokenCounter(load_encodings()),
                        upstream=CannedUpstream(), accounts=accounts,  # type: ignore[arg-type]
                        router=build_router(settings))
    requests = {name: parse_request(Endpoint.CHAT, {**BODY, "model": SCENARIOS[name]}) for name in scenarios}
    samples: dict[str, list[float]] = {name: [] for name in scenarios}
    try:
        for _ in range(rounds):
            for name in scenarios:
                start = time.process_time()
                for i in range(batch):
                    await run_unary(services, RequestContext(f"req-{name}-{i}", caller, "chat/completions"),
                                    requests[name])
                samples[name].append((time.process_time() - start) / batch * 1e6)
                await store.flush()
    finally:
        await backend.close()
    return samples


def instructions(scenario: str, n: int) -> float:
    """Instructions per request: callgrind totals of a run of 2n and one of n requests, differenced."""
    totals = []
    for count in (n, 2 * n):
        with tempfile.TemporaryDirectory(prefix="costproxy-callgrind-") as out:
            done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.out",
                                   sys.executable, __file__, "--rounds", "1", "--batch", str(count),
                                   "--scenario", scenario], capture_output=True, text=True, cwd=ROOT)
            match = re.search(r"Collected : (\d+)", done.stderr)
            if match is None:
                raise RuntimeError(f"callgrind failed:\n{done.stderr[-2000:]}")
            totals.append(int(match.group(1)))
    return (totals[1] - totals[0]) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds (default 10)")
    parser.add_argument("--batch", type=int, default=500, help="requests per scenario and round (default 500)")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), action="append",
                        help="named and/or auto (default both)")
    parser.add_argument("--instructions", choices=sorted(SCENARIOS), default=None,
                        help="instructions per request of one scenario under callgrind")
    args = parser.parse_args()
    if args.instructions:
        print(f"{args.instructions}: {instructions(args.instructions, args.batch):,.0f} instructions per request "
              f"(callgrind, {args.batch} vs {2 * args.batch} requests)")
        return 0
    with tempfile.TemporaryDirectory(prefix="costproxy-pipeline-bench-") as work:
        samples = asyncio.run(run(Path(work), args.rounds, args.batch, args.scenario or list(SCENARIOS)))
    for name, values in samples.items():
        print(f"{name:6} run_unary CPU per request: median {statistics.median(values):6.1f} µs, min {min(values):6.1f} "
              f"µs, max {max(values):6.1f} µs ({len(values)} rounds of {args.batch})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
