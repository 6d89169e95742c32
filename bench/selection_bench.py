"""Selection latency: ``analyze`` + (rules hook) + ``select`` per request, p50/p99.

Uses the project's real registry (``config/models.yaml``, every chat model is a candidate) and
quality profiles (``config/quality.yaml``).  Prompts of 100, 1,000 and 10,000 tokens (counted with
the real tokenizer) are chat requests with a system prompt and a question at the end; the token
count is computed once beforehand, as the pipeline does before routing, and is not part of the
measured time (``--with-count`` adds it, for reference).

Steering rules belong to ``costproxy.steering``; ``RulesHook`` is where they plug in: a function
from the request body and its profile to the ``Constraints`` the rules demand.  The default hook
demands nothing (``--rules`` is reserved for wiring the real rule set in).

Target (issue 4): p99 < 0.5 ms at 1,000 tokens on a 2-core machine.

    python3 bench/selection_bench.py                 # 3,000 timed requests per size
    python3 bench/selection_bench.py --iterations 10000 --with-count
    python3 bench/selection_bench.py --predictors    # a logistic predictor for every model and task
    python3 bench/selection_bench.py --predictors --text-model   # and n-gram weights for every model

``--predictors`` adds a per-request quality predictor (``quality.py``) for every candidate model and
every task type — the worst case of a calibrated file — so the timing includes evaluating them.
``--learned`` gives every (task, difficulty bucket, model) cell feedback evidence, so every candidate's
quality is a posterior (``learning/estimates.py``) and each request brings a draw for mixing, as the
router passes one (``learning.mixing``) — the worst case of a deployment that learns.
``--text-model`` adds n-gram text-model weights (``routing/text_model.py``) for every candidate model,
so each request also hashes its query's n-grams (in ``analyze``) and sums one weight per n-gram per model.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from costproxy.analyzer.encodings import load_encodings  # noqa: E402
from costproxy.analyzer.ngrams import NGRAM_BUCKETS  # noqa: E402
from costproxy.analyzer.profile import RequestProfile, analyze  # noqa: E402
from costproxy.analyzer.tasks import FEATURE_NAMES, TASK_TYPES  # noqa: E402
from costproxy.analyzer.tokens import TokenCounter  # noqa: E402
from costproxy.learning.estimates import OnlineEstimates  # noqa: E402
from costproxy.registry import parse_registry  # noqa: E402
from costproxy.routing.policy import Constraints  # noqa: E402
from costproxy.routing.quality import QualityProfiles, parse_quality  # noqa: E402
from costproxy.routing.selection import BudgetPressure, SelectionConfig, select  # noqa: E402
from costproxy.routing.text_model import TextModel  # noqa: E402

RulesHook = Callable[[Mapping[str, Any], RequestProfile], Constraints]
SIZES = (100, 1_000, 10_000)
ENCODING = "o200k_base"
PARAGRAPH = (
    "Our payments service retries failed card authorisations three times with exponential backoff, "
    "but during last Tuesday's incident the retries amplified load on the issuer gateway and 4% of "
    "checkouts timed out. The on-call engineer raised the connection pool from 50 to 200, which "
    "helped briefly before the database hit its own connection ceiling. "
)
QUESTION = ("\n\nGiven the incident notes above, explain why the retries made things worse and propose "
            "a safer retry policy with concrete numbers.")


def no_rules(body: Mapping[str, Any], profile: RequestProfile) -> Constraints:
    return Constraints()


def make_body(tokens: int, counter: TokenCounter) -> tuple[dict[str, Any], int]:
    """A chat body whose messages count ``tokens`` (±1 %) with the real tokenizer."""
    text = PARAGRAPH * (tokens // 40 + 2)
    low, high = 0, len(text)
    while low < high:  # the longest prefix that keeps the whole request within the budget
        middle = (low + high + 1) // 2
        if counter.count_chat(_messages(text[:middle]), ENCODING) <= tokens:
            low = middle
        else:
            high = middle - 1
    messages = _messages(text[:low])
    return {"model": "auto", "messages": messages}, counter.count_chat(messages, ENCODING)


def _messages(context: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You are a senior site-reliability engineer."},
            {"role": "user", "content": context + QUESTION}]


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def with_predictors(quality: QualityProfiles) -> QualityProfiles:
    """``quality`` with a (made-up) logistic predictor for every chat model and task type."""
    weights = tuple(0.1 * ((i % 7) - 3) for i in range(len(FEATURE_NAMES) + 1))
    models = [m.id for m in REGISTRY.models.values() if m.kind == "chat"]
    return dataclasses.replace(quality, predictors={(m, t): weights for m in models for t in TASK_TYPES})


def with_text_model(quality: QualityProfiles) -> QualityProfiles:
    """``quality`` with (made-up, non-zero) n-gram weights for every chat model."""
    weights = tuple(0.01 * ((i * 7919) % 201 - 100) for i in range(NGRAM_BUCKETS))
    models = [m.id for m in REGISTRY.models.values() if m.kind == "chat"]
    return dataclasses.replace(quality, text=TextModel(weights={m: weights for m in models}))


CLOCK = time.perf_counter_ns  # --cpu-time: time.thread_time_ns


def measure(body: dict[str, Any], tokens: int, iterations: int, rules: RulesHook,
            count: Callable[[], int] | None) -> list[float]:
    candidates = [m for m in REGISTRY.models.values() if m.kind == "chat"]
    config, pressure = SelectionConfig(), BudgetPressure(used_fraction=0.3, burn_ratio=0.8, remaining_nanos=10**9)
    samples: list[float] = []
    for i in range(iterations + 200):
        start = CLOCK()
        n = count() if count is not None else tokens
        profile = analyze(body, n, features=bool(QUALITY.predictors), ngrams=QUALITY.text is not None)
        select(profile, candidates, QUALITY, rules(body, profile), pressure, config, baseline=REGISTRY.baseline_model,
               **LEARNED, **DRAW)
        elapsed = CLOCK() - start
        if i >= 200:  # warm-up
            samples.append(elapsed / 1_000)
    return sorted(samples)


def measure_router(body: dict[str, Any], tokens: int, iterations: int) -> tuple[list[float], str]:
    """The proxy's real path: ``SelectionRouter.explain`` = analyze + steering rules (rules/) + select."""
    from costproxy.budgets.accounts import BudgetView
    from costproxy.identity.principal import Principal
    from costproxy.request import RequestContext
    from costproxy.routing.route import RouteInput
    from costproxy.routing.router import build_router
    from costproxy.settings import load_settings

    # Every provider gets a placeholder key (nothing is called): without keys the router refuses
    # their models, as a server without them would.
    bare = load_settings(ROOT / "config/costproxy.yaml", {})
    keys = {p.api_key_env: "bench-placeholder" for p in bare.providers.values() if p.api_key_env}
    router = build_router(load_settings(ROOT / "config/costproxy.yaml", keys))
    if LEARNED:
        router.estimates = LEARNED["estimates"]
    view = BudgetView(used_fraction=0.3, burn_ratio=0.8, remaining_nanos=10**9,
                      fields={"budget.team.used_pct": 30.0, "budget.any.status": "normal"})
    principal = Principal(key_id="k", user="u", team="t", org="o")
    samples: list[float] = []
    model = ""
    for i in range(iterations + 200):
        ctx = RequestContext(request_id=f"bench-{i}", principal=principal, endpoint="chat/completions")
        start = time.perf_counter_ns()
        route = router.route(RouteInput(ctx=ctx, body=body, requested="auto", input_tokens=tokens, budget=view))
        elapsed = time.perf_counter_ns() - start
        model = route.chain[0].id
        if i >= 200:
            samples.append(elapsed / 1_000)
    return sorted(samples), model


def _counting(counter: TokenCounter, messages: list[dict[str, str]]) -> Callable[[], int]:
    return lambda: counter.count_chat(messages, ENCODING)


REGISTRY = parse_registry(yaml.safe_load((ROOT / "config/models.yaml").read_text()), "config/models.yaml")
QUALITY = parse_quality(yaml.safe_load((ROOT / "config/quality.yaml").read_text()), "config/quality.yaml")
LEARNED: dict[str, Any] = {}  # select(**LEARNED): nothing, or estimates=… with --learned
DRAW: dict[str, float] = {}  # with --learned, a draw as the router passes one (learning.mixing)


def learned_everywhere() -> Any:
    """Evidence (40 observations, 34 successes) in every cell a request can fall in."""
    cells = {(t, b, m.id): (40.0, 34.0) for t in TASK_TYPES for b in range(len(QUALITY.edges(t)) + 1)
             for m in REGISTRY.models.values() if m.kind == "chat"}
    estimates = OnlineEstimates()
    for cell, (n, s) in cells.items():
        estimates = estimates.with_observation(cell, n, s)
    return estimates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3_000)
    parser.add_argument("--with-count", action="store_true", help="include token counting in the timing")
    parser.add_argument("--predictors", action="store_true", help="a quality predictor for every model and task")
    parser.add_argument("--learned", action="store_true", help="feedback evidence for every task, bucket and model")
    parser.add_argument("--text-model", action="store_true", help="n-gram text-model weights for every model")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time the selection section by this thread's CPU time (immune to preemption by "
                             "other processes on a busy machine), not wall-clock")
    parser.add_argument("--selection-only", action="store_true", help="skip the proxy-router section")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="prompt sizes in tokens")
    args = parser.parse_args(argv)
    if args.learned:
        LEARNED["estimates"] = learned_everywhere()
        DRAW["draw"] = 0.5
    global QUALITY, CLOCK
    if args.cpu_time:
        CLOCK = time.thread_time_ns
    if args.predictors:
        QUALITY = with_predictors(QUALITY)
    if args.text_model:
        QUALITY = with_text_model(QUALITY)
    sizes = tuple(int(x) for x in args.sizes.split(",") if x.strip())
    counter = TokenCounter(load_encodings([ENCODING]))
    chat = [m for m in REGISTRY.models.values() if m.kind == "chat"]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {len(chat)} candidate models, "
          f"{args.iterations} timed requests per size{' (token counting included)' if args.with_count else ''}"
          f"{', predictors for every model and task' if args.predictors else ''}"
          f"{', feedback evidence in every cell' if args.learned else ''}"
          f"{', text model for every model' if args.text_model else ''}"
          f"{', thread CPU time' if args.cpu_time else ', wall-clock'}")
    print(f"{'prompt tokens':>14} {'p50 µs':>9} {'p99 µs':>9} {'max µs':>9}  task / chosen model")
    gc.collect()
    for size in sizes:
        body, tokens = make_body(size, counter)
        count = _counting(counter, body["messages"]) if args.with_count else None
        samples = measure(body, tokens, args.iterations, no_rules, count)
        profile = analyze(body, tokens)
        decision = select(profile, chat, QUALITY, Constraints(), BudgetPressure(), SelectionConfig(),
                          baseline=REGISTRY.baseline_model)
        print(f"{tokens:>14} {percentile(samples, 0.5):>9.1f} {percentile(samples, 0.99):>9.1f} "
              f"{samples[-1]:>9.1f}  {profile.task_type} / {decision.model}")
    if args.selection_only:
        return 0
    print("\nthe proxy's router (analyze + rules/default.yaml + select, as SelectionRouter.route runs it):")
    print(f"{'prompt tokens':>14} {'p50 µs':>9} {'p99 µs':>9} {'max µs':>9}  chosen model")
    for size in sizes:
        body, tokens = make_body(size, counter)
        samples, model = measure_router(body, tokens, args.iterations)
        print(f"{tokens:>14} {percentile(samples, 0.5):>9.1f} {percentile(samples, 0.99):>9.1f} "
              f"{samples[-1]:>9.1f}  {model}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
