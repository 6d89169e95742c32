"""Three hot paths of the sans-IO core, per call: steering rules, task detection, model selection.

These figures used to be limits inside unit tests (50 µs for twenty rules, 1 ms and 2 ms for task
detection, 2 ms for selection over thirty candidates), which failed on a machine busy with other
work while the code was fine. The tests now check what the code decides; this script reports what
it costs, and asserts nothing:

* ``steering``: ``evaluate`` of twenty rules that all match and continue (two conditions each, one
  in four on a 50 % rollout, one in five in shadow mode), a new request id per call;
* ``tasks``: ``detect_task`` on a 4,000-character prompt with a system prompt, and on the same
  prompt fifty times over (200,000 characters, 50,000 tokens);
* ``selection``: ``select`` over thirty candidates (every chat model of ``config/models.yaml``,
  copied under new names until there are thirty) with ``config/quality.yaml``.

Each is timed in batches (``--batch`` calls per sample, ``--samples`` samples, after a warm-up
batch, with the garbage collector off) and reported as µs per call: the best sample, the median
and the 95th percentile of the samples. The best sample is the one to compare between commits;
the spread says how busy the machine was.

    python3 bench/core_bench.py
    python3 bench/core_bench.py --samples 50 --batch 500 --only steering
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from costproxy.analyzer.profile import RequestProfile  # noqa: E402
from costproxy.analyzer.tasks import detect_task  # noqa: E402
from costproxy.registry import parse_registry  # noqa: E402
from costproxy.routing.policy import Constraints  # noqa: E402
from costproxy.routing.quality import parse_quality  # noqa: E402
from costproxy.routing.selection import BudgetPressure, SelectionConfig, select  # noqa: E402
from costproxy.steering import build_ruleset, evaluate  # noqa: E402

Case = Callable[[int], object]  # one call; the argument is the call's index


def steering_case() -> Case:
    rules: list[dict[str, Any]] = [
        {"id": f"r{i}", "name": f"rule {i}", "priority": i, "continue": True,
         "rollout": 50 if i % 4 == 0 else 100, "mode": "shadow" if i % 5 == 0 else "enforce",
         "conditions": [{"field": "principal.team", "operator": "in", "value": ["a", "b", f"t{i}"]},
                        {"field": "request.tokens.input", "operator": "gt", "value": 10}],
         "actions": [{"type": "cap-output-tokens", "params": {"max_tokens": 100 + i}}]}
        for i in range(20)
    ]
    ruleset, errors = build_ruleset([("bench.yaml", yaml.safe_dump({"version": 1, "rules": rules}))])
    if errors:
        raise SystemExit(f"bench rules do not parse: {[str(e) for e in errors]}")
    context = {"principal.team": "a", "request.tokens.input": 500, "request.model": "auto"}
    return lambda n: evaluate(ruleset, context, f"req-{n}")


PROMPT = ("The quarterly report shows revenue growth in every region except APAC. " * 60)[:4_000] + \
    "\n\nSummarize the report above in three bullet points."


def tasks_case() -> Case:
    return lambda n: detect_task(PROMPT, "You are a helpful assistant.", 1_000)


def long_tasks_case() -> Case:
    long_prompt = PROMPT * 50
    return lambda n: detect_task(long_prompt, "", 50_000)


def selection_case() -> Case:
    registry = parse_registry(yaml.safe_load((ROOT / "config/models.yaml").read_text()), "config/models.yaml")
    quality = parse_quality(yaml.safe_load((ROOT / "config/quality.yaml").read_text()), "config/quality.yaml")
    chat = [m for m in registry.models.values() if m.kind == "chat"]
    candidates = [replace(m, id=f"{m.id}~{i}") if i else m for i in range(30 // len(chat) + 1) for m in chat][:30]
    profile = RequestProfile(input_tokens=1_000, expected_output_tokens=400, max_output_tokens=None,
                             task_type="code_generation", difficulty=0.45, required_capabilities=frozenset())
    pressure, config = BudgetPressure(remaining_nanos=10**9), SelectionConfig()
    return lambda n: select(profile, candidates, quality, Constraints(), pressure, config)


CASES: dict[str, tuple[str, Callable[[], Case]]] = {
    "steering": ("evaluate 20 matching rules", steering_case),
    "tasks": ("detect_task, 4,000 chars", tasks_case),
    "tasks-long": ("detect_task, 200,000 chars", long_tasks_case),
    "selection": ("select over 30 candidates", selection_case),
}


def samples_of(case: Case, samples: int, batch: int) -> list[float]:
    """µs per call, one figure per batch of ``batch`` calls."""
    for n in range(batch):  # warm-up
        case(n)
    found = []
    gc.disable()
    try:
        for s in range(samples):
            start = time.perf_counter_ns()
            for n in range(s * batch, (s + 1) * batch):
                case(n)
            found.append((time.perf_counter_ns() - start) / batch / 1_000)
    finally:
        gc.enable()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--batch", type=int, default=200, help="calls per sample (the long prompt: a tenth)")
    parser.add_argument("--only", choices=sorted(CASES), action="append", help="run only these (repeatable)")
    args = parser.parse_args(argv)
    print(f"{'case':<12} {'what':<30} {'best µs':>9} {'p50 µs':>9} {'p95 µs':>9}")
    for name in args.only or list(CASES):
        label, build = CASES[name]
        batch = max(1, args.batch // 10) if name == "tasks-long" else args.batch
        found = sorted(samples_of(build(), args.samples, batch))
        p95 = found[min(len(found) - 1, round(0.95 * (len(found) - 1)))]
        print(f"{name:<12} {label:<30} {found[0]:>9.1f} {statistics.median(found):>9.1f} {p95:>9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
