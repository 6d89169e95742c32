"""The printed half of ``proxy_bench.py``: the table, the ratios to the bare pass-through, hotspots.

Rows are measured by ``proxy_bench.measure``; a *scenario* is what was sent (``named`` model,
``auto``, ``stream`` of ~20 events) at one concurrency, and every target (upstream direct, bare
aiohttp pass-through, costproxy on each store) got the same load in the same round.  Ratios are
costproxy's CPU per request over the pass-through's, scenario by scenario and round by round, so
both sides of a ratio ran within seconds of each other on a shared machine.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

RATIO_TARGET = 2.0  # issue 13: proxy CPU per request at most 2x the bare aiohttp pass-through's
ADDED_P50_TARGET_MS = 1.0
PASSTHROUGH = "aiohttp pass-through"
DIRECT = "upstream direct"


@dataclass(frozen=True)
class Row:
    label: str  # "upstream direct" | "aiohttp pass-through" | "costproxy sqlite" | "costproxy redis"
    scenario: str  # "named" | "auto" | "stream"
    concurrency: int
    round: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # the target process, per request
    upstream_cpu_us: float  # the fast upstream during the same run, per request
    errors: int
    threads_us: dict[str, float] = field(default_factory=dict)  # the target's CPU per request by thread

    @property
    def proxy(self) -> bool:
        return self.label.startswith("costproxy")


def print_table(rows: Sequence[Row]) -> None:
    header = (f"{'round':>5} {'scenario':8} {'target':22} {'conc':>4} {'requests':>8} {'req/s':>7} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'CPU µs/req':>10} {'upstream':>8} {'errors':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        upstream = "(itself)" if r.label == DIRECT else f"{r.upstream_cpu_us:.0f}"
        print(f"{r.round:>5} {r.scenario:8} {r.label:22} {r.concurrency:>4} {r.requests:>8} {r.rps:>7.0f} "
              f"{r.p50_ms:>7.3f} {r.p99_ms:>7.3f} {r.cpu_us:>10.0f} {upstream:>8} {r.errors:>6}")
    print("\ncostproxy CPU µs/request by thread (workers: SQLite ledger writer, log writer, off-loop tokenizing):")
    for r in rows:
        if r.proxy:
            split = ", ".join(f"{name} {us:.0f}" for name, us in sorted(r.threads_us.items(), key=lambda kv: -kv[1]))
            print(f"  round {r.round} {r.scenario:6} c={r.concurrency:<3} {r.label:18} {split}")


def _find(rows: Sequence[Row], label: str, scenario: str, concurrency: int, round_: int) -> Row | None:
    return next((r for r in rows if (r.label, r.scenario, r.concurrency, r.round)
                 == (label, scenario, concurrency, round_)), None)


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """``median [min-max]`` of one figure over the rounds (just the value for one round)."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def print_ratios(rows: Sequence[Row]) -> bool:
    """CPU per request of each costproxy target over the bare pass-through's, per scenario; True
    when every median meets ``RATIO_TARGET``."""
    print(f"\nproxy CPU per request / bare aiohttp pass-through's (target <= {RATIO_TARGET:.1f}x; "
          "median [min-max] over rounds):")
    met = True
    keys = sorted({(r.scenario, r.concurrency, r.label) for r in rows if r.proxy},
                  key=lambda k: (("named", "auto", "stream").index(k[0]), k[1], k[2]))
    for scenario, conc, label in keys:
        ratios, cpus, bares = [], [], []
        for row in (r for r in rows if (r.scenario, r.concurrency, r.label) == (scenario, conc, label)):
            bare = _find(rows, PASSTHROUGH, scenario, conc, row.round)
            if bare is None or bare.cpu_us <= 0:
                continue
            ratios.append(row.cpu_us / bare.cpu_us)
            cpus.append(row.cpu_us)
            bares.append(bare.cpu_us)
        if not ratios:
            continue
        ok = statistics.median(ratios) <= RATIO_TARGET
        met = met and (ok or conc == 1)  # the target is stated for the loaded runs
        verdict = "" if conc == 1 else ("  (met)" if ok else "  (OVER)")
        print(f"  {scenario:6} c={conc:<3} {label:18} {spread(ratios)}x  "
              f"({spread(cpus, '{:.0f}')} µs vs {spread(bares, '{:.0f}')} µs){verdict}")
    return met


def print_latency(rows: Sequence[Row]) -> None:
    """Added p50 at concurrency 1: through the proxy minus upstream direct, per round."""
    proxies = sorted({r.label for r in rows if r.proxy})
    for label in proxies:
        added = []
        for row in (r for r in rows if r.label == label and r.concurrency == 1):
            direct = _find(rows, DIRECT, row.scenario, 1, row.round)
            if direct is not None:
                added.append(row.p50_ms - direct.p50_ms)
        bare = [r.p50_ms - d.p50_ms for r in rows if r.label == PASSTHROUGH and r.concurrency == 1
                for d in [_find(rows, DIRECT, r.scenario, 1, r.round)] if d is not None]
        if added:
            ok = statistics.median(added) < ADDED_P50_TARGET_MS
            print(f"  added p50 at c=1, {label}: +{spread(added, '{:.3f}')} ms (target < "
                  f"{ADDED_P50_TARGET_MS:.0f} ms: {'met' if ok else 'OVER'}); bare pass-through "
                  f"+{spread(bare, '{:.3f}') if bare else '?'} ms")


# --- profiling -----------------------------------------------------------------------------------------


def hotspots(raw: Path, root: Path, top: int = 25, per: int = 0) -> str:
    """Self and inclusive shares per function from py-spy's collapsed ``a;b;c count`` lines.

    Frames are ``function (file:line)``; lines are dropped so a function's samples add up.  Self
    time shows where the CPU goes (often inside aiohttp or the stdlib); the inclusive list keeps
    costproxy's own functions only, to show which step of the proxy pays for it.  Threads that
    wait (the log writer's and the ledger's idle ``Condition.wait`` / queue ``get``) are dropped:
    py-spy cannot always tell a waiting thread from a busy one.  ``per``: the responses served
    while sampling, to print each line's samples per response too (µs per request at 1 kHz).
    """
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit() or "(idle)" in stack:
            continue
        frames = [_function(f, root) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames or frames[-1].endswith(("threading.py:Condition.wait", "threading.py:Event.wait",
                                              "queue.py:SimpleQueue.get", "queue.py:Queue.get",
                                              "thread.py:_worker")):
            continue
        count = int(count_text)
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        return "profile: no busy samples"
    def share(count: int) -> str:
        return f"{100 * count / total:5.1f}%" + (f" {count / per * 1000:6.0f} µs/req" if per else "")

    lines = [f"profile of the proxy ({total} busy samples at 1 kHz; % of busy samples"
             + (f", and samples per response as µs per request over {per} responses" if per else "") + ")",
             "  self (where the CPU is):"]
    lines += [f"    {share(c)}  {f}" for f, c in sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    lines.append("  inclusive, costproxy functions only (which step pays):")
    ours = sorted(((f, c) for f, c in inclusive.items() if f.startswith("costproxy/")), key=lambda kv: -kv[1])
    lines += [f"    {share(c)}  {f}" for f, c in ours[:top]]
    return "\n".join(lines)


def _function(frame: str, root: Path) -> str:
    """``func (/path/site-packages/pkg/mod.py:12)`` -> ``pkg/mod.py:func``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rpartition(":")[0] or where
    for anchor in ("site-packages/", str(root) + "/", "/lib/python3.11/"):
        if anchor in where:
            where = where.split(anchor, 1)[1]
            break
    return f"{where}:{name}"
