"""Proxy overhead benchmark: CPU per request, as a ratio to a bare aiohttp pass-through, and memory.

Processes besides this one, all on 127.0.0.1:

* the upstream: ``bench/fast_upstream.py``, canned OpenAI answers from a raw asyncio protocol
                (~7 µs CPU per request, so it never is the bottleneck);
* the bare aiohttp pass-through (``fast_upstream.py --passthrough``): the floor of any aiohttp proxy;
* the proxy:    ``python -m costproxy serve`` (uvloop, as the CLI installs it) from this checkout,
                the project's ``config/models.yaml`` with every provider pointed at the upstream,
                the project's ``rules/``, three budgets on the bench key's chain (org, team, user;
                never reached), JSON logs to a file, a client key issued with ``costproxy keys
                create``; on a SQLite store in a temporary directory, and with ``--redis URL`` a
                second proxy on that Redis (its own random key prefix, deleted at the end);
* the load:     ``wrk`` with a Lua script (POST body, bearer key; after N responses the script
                says so and this script SIGINTs wrk, which then prints its summary), or, when wrk
                is not installed, a Python aiohttp generator in a subprocess (the output says so;
                its own client overhead inflates latencies, CPU per request is unaffected).

Scenarios, each sent to every target in turn within one round: ``named`` (``--model``, at
concurrency 1 for the added latency and at ``--concurrency``), ``auto`` (``model: auto``: analysis
and selection) and ``stream`` (the named model streamed, ~20 SSE events).  ``--rounds`` repeats
the whole set; the summary prints each costproxy's CPU per request divided by the pass-through's
in the same round and scenario, as median [min-max] over the rounds.  Target (issue 13): at most
2.0x on every path, and under 1 ms added p50 at one request at a time.

CPU per request is read from ``/proc/<pid>/stat`` (utime + stime, all threads) before and after a
run of N requests, divided by the responses the load generator counted; ``/proc/<pid>/task/*``
splits it between the event loop and worker threads.  On two or more CPUs the servers under test
are pinned to the first CPU and upstream + load generator to the others (``--no-pin`` to disable).
RSS (``/proc/<pid>/status`` VmRSS, with its anonymous and file-backed parts) of each proxy is
printed after start and at the end; ``--soak SECONDS`` and/or ``--soak-requests N`` then keep each
proxy busy in turn (SQLite, then Redis; named, auto and stream in turn) until that many seconds or
responses, and print its RSS and the requests served so far every ``--soak-interval`` seconds.
``--profile`` adds one run per scenario with py-spy attached to the SQLite proxy and prints its
hotspots.

Usage::

    python3 bench/proxy_bench.py                      # 3000 requests per run, concurrency 32, 1 round
    python3 bench/proxy_bench.py --rounds 3 --redis redis://127.0.0.1:6379/13
    python3 bench/proxy_bench.py --no-stream --profile
    python3 bench/proxy_bench.py --rounds 0 --soak 600 # memory only: ten minutes of traffic
    python3 bench/proxy_bench.py --rounds 0 --soak-requests 100000 --redis redis://127.0.0.1:6379/13

Bounded: every run stops after ``--requests`` responses or ``--duration`` seconds, whichever comes
first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from proxy_report import DIRECT, PASSTHROUGH, Row, hotspots, print_latency, print_ratios, print_table

ROOT = Path(__file__).resolve().parent.parent
FAST_UPSTREAM = ROOT / "bench" / "fast_upstream.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
UPSTREAM_KEY_ENV = "BENCH_UPSTREAM_KEY"
SOAK_CAP_S = 3600.0  # a soak bounded by --soak-requests alone stops after this many seconds per proxy
WRK_INSTALL_HINT = "install it with: sudo apt-get update && sudo apt-get install -y wrk  (macOS: brew install wrk)"

SYSTEM = "You are a concise assistant. Answer in two sentences at most, in plain English."
USER = ("What is the capital of France? Give one fact about its size and two landmarks a first-time "
        "visitor should see, and say which river runs through it.")


def chat_body(model: str, stream: bool) -> bytes:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "system", "content": SYSTEM},
                                                         {"role": "user", "content": USER}],
                            "max_tokens": 256, "temperature": 0.2}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


# --- processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """This environment without COSTPROXY_* overrides (they would redirect store, host or port)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTPROXY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def pinned(cpus: frozenset[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that restricts the child to ``cpus`` (None: no restriction)."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


@contextmanager
def running(cmd: list[str], log: Path, env: dict[str, str],
            cpus: frozenset[int] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                preexec_fn=pinned(cpus))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_listening(proc: subprocess.Popen[bytes], log: Path, seconds: float = 30) -> str:
    """The URL a fast_upstream.py process printed once it listens."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("listening on "):
                return line.split()[-1]
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args!r} did not start:\n{log.read_text(errors='replace')}")


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {seconds} s:\n{log.read_text(errors='replace')}")


def _stat_cpu(stat: str) -> float:
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; fields[0] is field 3
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads, live or exited), in seconds."""
    return _stat_cpu(Path(f"/proc/{pid}/stat").read_text())


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (``comm``, 15 characters at most) of a process's live threads."""
    result: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        # Python does not name OS threads after ThreadPoolExecutor prefixes: all others are workers
        name = "event loop" if task.name == str(pid) else "worker threads"
        result[name] = result.get(name, 0.0) + _stat_cpu(stat)
    return result


# --- the proxy's configuration ------------------------------------------------------------------------


# --rate-limits: the bench key draws from three limits (its key, user and team), each on requests and
# tokens, all far above what the run sends: the cost of admission and settlement, never a refusal.
BENCH_LIMITS = [{"id": f"bench-{kind}", "scope_type": kind, "scope_id": scope, "requests_per_minute": 10**9,
                 "tokens_per_minute": 10**10} for kind, scope in (("key", "*"), ("user", "bench"), ("team", "perf"))]


# Three budgets on the bench key's chain, far above what a run spends: reserve and settle on each.
BENCH_BUDGETS = [{"id": f"bench-{kind}", "scope_type": kind, "scope_id": scope, "limit_usd": "1000000",
                  "period": "monthly"} for kind, scope in (("org", "bench-org"), ("team", "perf"), ("user", "bench"))]


def write_config(work: Path, upstream_url: str, args: argparse.Namespace, store: str = "sqlite") -> Path:
    """costproxy.yaml using the project's models.yaml, every provider served by the fast upstream;
    ``store`` is ``sqlite`` or a Redis URL (then keys go under a prefix of their own)."""
    models_path = ROOT / "config" / "models.yaml"
    models = yaml.safe_load(models_path.read_text())
    providers = sorted({m["provider"] for m in models["models"].values()})
    rules_dir = Path(args.rules) if args.rules else work / "no-rules"
    rules_dir.mkdir(exist_ok=True)
    name = "sqlite" if store == "sqlite" else "redis"
    budgets: dict[str, Any] = {"definitions": BENCH_BUDGETS}
    if store != "sqlite":
        budgets["key_prefix"] = redis_prefix(work)
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 8080},
        "store": {"url": f"sqlite:///{work / 'ledger.sqlite3'}" if store == "sqlite" else store},
        "models_file": str(models_path),
        "rules_dir": str(rules_dir),
        "logging": {"level": args.log_level, "json": True},
        "providers": {name: {"base_url": upstream_url + "/v1", "api_key_env": UPSTREAM_KEY_ENV}
                      for name in providers},
        "budgets": budgets,
    }
    if store != "sqlite":
        config["store"]["local_path"] = str(work / "redis-replica.sqlite3")
    if args.rate_limits:
        config["rate_limits"] = {"limits": BENCH_LIMITS}
    path = work / f"costproxy-{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def redis_prefix(work: Path) -> str:
    """This run's Redis key prefix (from the work directory's random name)."""
    return "cpbench" + "".join(c for c in work.name.rsplit("-", 1)[-1] if c.isalnum()).lower()


def drop_redis_keys(url: str, prefix: str) -> int:
    """Delete every key of this run's prefix; the number deleted."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        doomed = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(doomed), 500):
            client.delete(*doomed[start:start + 500])
        return len(doomed)
    finally:
        client.close()


def create_key(config: Path, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "costproxy", "--config", str(config), "keys", "create",
                           "--name", "bench", "--user", "bench", "--team", "perf", "--org", "bench-org"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"costproxy keys create failed:\n{done.stdout}{done.stderr}")
    return done.stdout.strip().split()[-1]


def ledger_rows(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM ledger").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


# --- load generators ---------------------------------------------------------------------------------

WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
local limit = 0
local count = 0
function init(args)
  limit = tonumber(args[1]) or 0
end
function response(status, headers, body)
  count = count + 1
  if count == limit then
    -- wrk sleeps for the whole -d otherwise: tell the parent, which sends SIGINT to end the run now
    io.write("BENCH_STOPPED\\n")
    io.stdout:flush()
    wrk.thread:stop()
  end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"errors":%d,"bad_status":%d}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass(frozen=True)
class Load:
    """What to send: the same POST to every target."""

    body: bytes
    key: str
    work: Path
    use_wrk: bool
    duration: float
    cpus: frozenset[int] | None = None  # where the load generator may run


def run_load(load: Load, url: str, connections: int, requests: int) -> dict[str, Any]:
    if load.use_wrk:
        script = load.work / "post.lua"
        script.write_text(WRK_SCRIPT.format(body=load.body.decode(), key=load.key))
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(load.duration))}s", "--timeout", "10s",
               "-s", str(script), url, "--", str(requests)]
    else:
        spec = {"url": url, "body": load.body.decode(), "key": load.key, "connections": connections,
                "requests": requests, "duration": load.duration}
        cmd = [sys.executable, str(Path(__file__).resolve()), "_load", json.dumps(spec)]
    output = _generate(cmd, load.duration + 30, load.cpus)
    for line in output.splitlines():
        if line.startswith("BENCH_JSON "):
            result: dict[str, Any] = json.loads(line[len("BENCH_JSON "):])
            return result
    raise RuntimeError(f"load generator failed ({' '.join(cmd[:6])} …):\n{output}")


def _generate(cmd: list[str], timeout: float, cpus: frozenset[int] | None) -> str:
    """Run a generator; SIGINT wrk once its script reports N responses (wrk then prints its summary)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(),
                            preexec_fn=pinned(cpus))
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("BENCH_STOPPED"):
                proc.send_signal(signal.SIGINT)
            if time.monotonic() > deadline:
                break
        proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return "".join(lines)


def python_load_main(spec_json: str) -> int:
    """Fallback generator (subprocess): N POSTs over C keep-alive connections, latency per request."""
    import asyncio

    import aiohttp

    spec = json.loads(spec_json)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    latencies: list[float] = []
    failures = {"errors": 0, "bad_status": 0}

    async def worker(session: aiohttp.ClientSession, deadline: float) -> None:
        headers = {"content-type": "application/json", "authorization": f"Bearer {spec['key']}"}
        while len(latencies) < spec["requests"] and time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                async with session.post(spec["url"], data=spec["body"].encode(), headers=headers) as resp:
                    await resp.read()
                    failures["bad_status"] += resp.status >= 400
            except (aiohttp.ClientError, TimeoutError):
                failures["errors"] += 1
                continue
            latencies.append(time.perf_counter() - start)

    async def main() -> float:
        connector = aiohttp.TCPConnector(limit=spec["connections"], limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            start = time.perf_counter()
            deadline = start + spec["duration"]
            await asyncio.gather(*(worker(session, deadline) for _ in range(spec["connections"])))
            return time.perf_counter() - start

    elapsed = asyncio.run(main())
    ordered = sorted(latencies) or [0.0]

    def pct(p: float) -> int:
        return int(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1e6)

    print("BENCH_JSON " + json.dumps({"requests": len(latencies), "duration_us": int(elapsed * 1e6),
                                      "p50_us": pct(50), "p99_us": pct(99), **failures}), flush=True)
    return 0


# --- measuring -----------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident set size of a process, in MB (VmRSS of ``/proc/<pid>/status``)."""
    return memory_mb(pid).get("VmRSS", 0.0)


@dataclass(frozen=True)
class Scenario:
    name: str  # "named" | "auto" | "stream"
    model: str
    stream: bool
    concurrency: int


def measure(load: Load, target: tuple[str, str, int], upstream_pid: int, scenario: Scenario, requests: int,
            round_: int) -> Row:
    label, url, pid = target
    pids = {pid, upstream_pid}
    before = {p: cpu_seconds(p) for p in pids}
    threads_before = thread_cpu_seconds(pid)
    result = run_load(load, url + "/v1/chat/completions", scenario.concurrency, requests)
    time.sleep(0.3)  # the ledger flushes every 50 ms: count that work too
    after = {p: cpu_seconds(p) for p in pids}
    threads_after = thread_cpu_seconds(pid)
    n = max(1, result["requests"])
    threads = {name: (cpu - threads_before.get(name, 0.0)) / n * 1e6 for name, cpu in threads_after.items()}
    return Row(label=label, scenario=scenario.name, concurrency=scenario.concurrency, round=round_,
               requests=result["requests"], rps=result["requests"] / (result["duration_us"] / 1e6),
               p50_ms=result["p50_us"] / 1000, p99_ms=result["p99_us"] / 1000,
               cpu_us=(after[pid] - before[pid]) / n * 1e6,
               upstream_cpu_us=(after[upstream_pid] - before[upstream_pid]) / n * 1e6,
               errors=result["errors"] + result["bad_status"],
               threads_us={name: us for name, us in threads.items() if us >= 0.5})


# --- profiling and soak --------------------------------------------------------------------------------


def profile_proxy(loads: list[tuple[Load, Scenario]], proxy: tuple[str, str, int], requests: int,
                  out: Path, gil: bool = False) -> str:
    """One extra run per scenario (not in the table) with py-spy sampling the proxy; its hotspots.
    ``gil``: sample only the thread holding the GIL (py-spy ``--gil``), so that the time the event
    loop spends waiting in ``epoll`` (uvloop's C code, which py-spy counts as ``Runner.run``) is left
    out: at one request at a time the loop is idle a good part of each request."""
    if shutil.which("py-spy") is None:
        return "note: --profile needs py-spy (pip install py-spy); skipped"
    raw = out.with_suffix(".txt")
    cmd = ["py-spy", "record", "--pid", str(proxy[2]), "--rate", "1000", "--nonblocking", "--threads",
           "--format", "raw", "--output", str(raw), *(["--gil"] if gil else [])]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # attach
    served = 0
    try:
        for load, scenario in loads:
            served += run_load(load, proxy[1] + "/v1/chat/completions", scenario.concurrency, requests)["requests"]
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
    if not raw.exists():
        return f"note: py-spy wrote no profile: {spy.stderr.read() if spy.stderr else ''}"
    names = ", ".join(f"{s.name} c={s.concurrency}" for _, s in loads)
    return (f"{proxy[0]}, scenarios profiled: {names}; {served} responses"
            + (" (GIL holder only: idle waits left out)" if gil else "") + "\n" + hotspots(raw, ROOT, per=served)
            + f"\n  collapsed stacks (flamegraph.pl / speedscope input): {raw} (kept with --keep)")


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS and its parts (RssAnon: heap; RssFile: mapped code and data files) of a process, and its
    PSS (shared pages divided among the processes sharing them) and USS (pages of its own), in MB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            found[key] = int(value.split()[0]) / 1024
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return found
    for line in rollup:
        key, _, value = line.partition(":")
        if key in ("Pss", "Private_Clean", "Private_Dirty"):
            kind = "Pss" if key == "Pss" else "Uss"
            found[kind] = found.get(kind, 0.0) + int(value.split()[0]) / 1024
    return found


def worker_pids(pid: int) -> list[int]:
    """The children of ``pid`` (the workers of ``serve --workers N``), or none."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        children.extend(int(c) for c in task.read_text().split())
    return sorted(children)


def memory_line(pid: int) -> str:
    """RSS of a proxy; with workers, each worker's RSS, PSS and USS and the supervisor's RSS."""
    workers = worker_pids(pid)
    if not workers:
        found = memory_mb(pid)
        return (f"RSS {found.get('VmRSS', 0.0):6.1f} MB (anon {found.get('RssAnon', 0.0):5.1f}, "
                f"file {found.get('RssFile', 0.0):5.1f}; PSS {found.get('Pss', 0.0):5.1f})")
    parts = []
    for child in workers:
        found = memory_mb(child)
        parts.append(f"{found.get('VmRSS', 0.0):.1f}/{found.get('Pss', 0.0):.1f}/{found.get('Uss', 0.0):.1f}")
    parent = memory_mb(pid)
    return (f"workers RSS/PSS/USS {' '.join(parts)} MB; supervisor RSS {parent.get('VmRSS', 0.0):.1f} "
            f"PSS {parent.get('Pss', 0.0):.1f} MB")


def soak(args: argparse.Namespace, dep: Deployment, keys: dict[str, str], use_wrk: bool) -> None:
    """Keep each proxy busy in turn (SQLite, then Redis with ``--redis``) until ``--soak`` seconds
    or ``--soak-requests`` responses, whichever comes first (named, auto, stream in turn, chunks of
    ``--soak-interval`` seconds), and print its RSS and the requests served after each chunk."""
    scenarios = [s for s in scenarios_of(args) if s.concurrency != 1]
    seconds = args.soak or SOAK_CAP_S
    limit = args.soak_requests or 10**12
    proxies = [t for t in dep.targets if t[0].startswith("costproxy")]
    if args.workers > 1:  # the soak measures the workers of the Redis proxy
        proxies = [t for t in proxies if t[0] != "costproxy sqlite"]
    for label, url, pid in proxies:
        started, served, chunk = time.monotonic(), 0, 0
        print(f"\nsoak: {label} (pid {pid}) until {args.soak_requests or 'unbounded'} requests or {seconds:g} s; "
              f"at start {memory_line(pid)}", flush=True)
        while served < limit and time.monotonic() - started < seconds:
            scenario = scenarios[chunk % len(scenarios)]
            span = min(args.soak_interval, max(1.0, seconds - (time.monotonic() - started)))
            load = Load(chat_body(scenario.model, scenario.stream), keys.get(label, dep.key), dep.work, use_wrk,
                        span, cpu_split(args)[1])
            result = run_load(load, url + "/v1/chat/completions", scenario.concurrency, min(limit - served, 10**9))
            served += result["requests"]
            chunk += 1
            print(f"  t={time.monotonic() - started:6.0f} s  {scenario.name:6} requests so far {served:>8}  "
                  f"{memory_line(pid)}  errors {result['errors'] + result['bad_status']}", flush=True)
        print(f"  {label} after the soak: {served} requests in {time.monotonic() - started:.0f} s, "
              f"{memory_line(pid)}", flush=True)


# --- main ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="costproxy overhead benchmark (loopback only)")
    parser.add_argument("--requests", type=int, default=3000, help="responses per measured run (default 3000)")
    parser.add_argument("--concurrency", type=int, default=32, help="connections of the loaded runs (default 32)")
    parser.add_argument("--duration", type=float, default=12.0,
                        help="cap in seconds on each run, whichever of --requests/--duration comes first "
                             "(default 12)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every scenario on every target this many times (default 1; 0: soak only)")
    parser.add_argument("--model", default="gpt-4o-mini",
                        help="model of the named and stream runs (default gpt-4o-mini)")
    parser.add_argument("--redis", metavar="URL", default="",
                        help="also run a proxy on this Redis (e.g. redis://127.0.0.1:6379/13), keys under a "
                             "random prefix deleted at the end")
    parser.add_argument("--rules", default=str(ROOT / "rules"),
                        help="steering rules directory for the proxy (default: the project's rules/; '' for none)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="the proxy's log level (default info: one JSON request_completed line per request, "
                             "to a file)")
    parser.add_argument("--rate-limits", action="store_true",
                        help="configure requests and tokens per minute on the key, user and team of the bench key "
                             "(never reached): compare with a run without it for the cost of rate limiting")
    parser.add_argument("--no-stream", action="store_true", help="skip the streamed runs")
    parser.add_argument("--no-auto", action="store_true", help="skip the model: auto runs")
    parser.add_argument("--python-load", action="store_true", help="use the Python generator even if wrk exists")
    parser.add_argument("--profile", action="store_true",
                        help="after the table, one extra run per scenario with py-spy sampling the SQLite proxy "
                             "(see --profile-store, --profile-concurrency)")
    parser.add_argument("--profile-store", choices=("sqlite", "redis"), default="sqlite",
                        help="the proxy --profile samples (redis: the one on --redis; default sqlite)")
    parser.add_argument("--profile-concurrency", type=int, default=0, metavar="N",
                        help="connections of the profiled runs (default: --concurrency, every loaded scenario); 1: "
                             "the named model one request at a time, where the added latency is measured, sampling "
                             "the GIL holder only so the idle event loop is left out")
    parser.add_argument("--soak", type=float, default=0.0, metavar="SECONDS",
                        help="after the table, keep each proxy busy this long in turn and print its RSS over time")
    parser.add_argument("--soak-requests", type=int, default=0, metavar="N",
                        help="soak each proxy until N responses (e.g. 100000), or --soak seconds if that comes "
                             f"first (default cap {SOAK_CAP_S:g} s)")
    parser.add_argument("--soak-interval", type=float, default=30.0, metavar="SECONDS",
                        help="RSS is printed after each chunk of this many seconds of soak (default 30)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="run the Redis proxy with serve --workers N (memory: RSS, PSS and USS of each worker; "
                             "its CPU figures would be the supervisor's only, so only with --rounds 0; the soak then "
                             "skips SQLite)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the servers under test to one CPU and upstream + load to the others")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (config, logs, ledger)")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.duration <= 0 or args.rounds < 0 or args.soak < 0 \
            or args.soak_interval <= 0 or args.soak_requests < 0:
        parser.error("--requests, --concurrency, --duration and --soak-interval must be positive; --rounds and "
                     "--soak, --soak-requests at least 0")
    if args.profile_store == "redis" and not args.redis:
        parser.error("--profile-store redis needs --redis")
    if args.profile_concurrency < 0:
        parser.error("--profile-concurrency must be at least 1 (0: --concurrency)")
    if args.workers > 1 and (args.rounds or not args.redis):
        parser.error("--workers needs --redis (several workers need a shared store) and --rounds 0")
    return args


def choose_generator(args: argparse.Namespace) -> tuple[bool, str]:
    if not args.python_load and shutil.which("wrk"):
        version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("[")[0].strip()
        return True, f"{version or 'wrk'} (1 thread, Lua POST script)"
    if not args.python_load:
        print(f"note: wrk is not installed; {WRK_INSTALL_HINT}", file=sys.stderr)
        print("note: falling back to the Python aiohttp load generator (its client overhead inflates "
              "latencies; CPU per request of the proxy is unaffected)", file=sys.stderr)
    return False, "Python aiohttp generator in a subprocess (FALLBACK, wrk not used)"


def cpu_split(args: argparse.Namespace) -> tuple[frozenset[int] | None, frozenset[int] | None]:
    """(CPUs of the servers under test, CPUs of load generator + upstream), or no pinning."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if args.no_pin or len(cpus) < 2:
        return None, None
    return frozenset(cpus[:1]), frozenset(cpus[1:])


def scenarios_of(args: argparse.Namespace) -> list[Scenario]:
    found = [Scenario("named", args.model, False, 1), Scenario("named", args.model, False, args.concurrency)]
    if not args.no_auto:
        found.append(Scenario("auto", "auto", False, args.concurrency))
    if not args.no_stream:
        found.append(Scenario("stream", args.model, True, args.concurrency))
    return found


@dataclass(frozen=True)
class Deployment:
    work: Path
    key: str
    upstream_pid: int
    targets: list[tuple[str, str, int]]  # (label, base URL, pid); the proxies last, SQLite first


def start_proxy(args: argparse.Namespace, stack: ExitStack, work: Path, upstream_url: str,
                store: str) -> tuple[str, str, int, str]:
    """One costproxy on ``store``: (label, URL, pid, client key)."""
    name = "sqlite" if store == "sqlite" else "redis"
    config = write_config(work, upstream_url, args, store)
    env = child_env(**{UPSTREAM_KEY_ENV: "sk-bench-upstream"})
    key = create_key(config, env)
    port = free_port()
    log = work / f"proxy-{name}.log"
    workers = ["--workers", str(args.workers)] if args.workers > 1 and store != "sqlite" else []
    proxy = stack.enter_context(running([sys.executable, "-m", "costproxy", "--config", str(config), "serve",
                                         "--port", str(port), *workers], log, env, cpu_split(args)[0]))
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proxy, log)
    return f"costproxy {name}", url, proxy.pid, key


def deploy(args: argparse.Namespace, stack: ExitStack, work: Path) -> tuple[Deployment, dict[str, str]]:
    """Start upstream, the bare pass-through and the proxies; (deployment, client key per proxy label)."""
    server_cpus, load_cpus = cpu_split(args)
    up_log, bare_log = work / "upstream.log", work / "passthrough.log"
    upstream = stack.enter_context(running([sys.executable, str(FAST_UPSTREAM)], up_log, child_env(), load_cpus))
    upstream_url = wait_listening(upstream, up_log)
    bare = stack.enter_context(running([sys.executable, str(FAST_UPSTREAM), "--passthrough", upstream_url],
                                       bare_log, child_env(), server_cpus))
    targets = [(DIRECT, upstream_url, upstream.pid), (PASSTHROUGH, wait_listening(bare, bare_log), bare.pid)]
    keys: dict[str, str] = {}
    for store in ["sqlite"] + ([args.redis] if args.redis else []):
        label, url, pid, key = start_proxy(args, stack, work, upstream_url, store)
        targets.append((label, url, pid))
        keys[label] = key
        print(f"  {label}: pid {pid}, after start {memory_line(pid)}")
    return Deployment(work=work, key=keys["costproxy sqlite"], upstream_pid=upstream.pid, targets=targets), keys


def benchmark(args: argparse.Namespace, dep: Deployment, keys: dict[str, str], use_wrk: bool) -> list[Row]:
    load_cpus = cpu_split(args)[1]
    rows: list[Row] = []
    for round_ in range(1, args.rounds + 1):
        for scenario in scenarios_of(args):
            body = chat_body(scenario.model, scenario.stream)
            for target in dep.targets:
                key = keys.get(target[0], dep.key)
                load = Load(body=body, key=key, work=dep.work, use_wrk=use_wrk, duration=args.duration, cpus=load_cpus)
                if round_ == 1:  # warm-up: connections, caches, first-call imports
                    warm = Load(body, key, dep.work, use_wrk, min(3.0, args.duration), load_cpus)
                    run_load(warm, target[1] + "/v1/chat/completions", scenario.concurrency, min(500, args.requests))
                rows.append(measure(load, target, dep.upstream_pid, scenario, args.requests, round_))
    return rows


def profile_run(args: argparse.Namespace, dep: Deployment, keys: dict[str, str], use_wrk: bool) -> str:
    """``--profile``: the scenarios of ``--profile-concurrency`` on the proxy of ``--profile-store``."""
    label = f"costproxy {args.profile_store}"
    if args.profile_concurrency == 1:
        scenarios = [Scenario("named", args.model, False, 1)]
    else:
        scenarios = [Scenario(s.name, s.model, s.stream, args.profile_concurrency or s.concurrency)
                     for s in scenarios_of(args) if s.concurrency != 1]
    loads = [(Load(chat_body(s.model, s.stream), keys[label], dep.work, use_wrk, args.duration, cpu_split(args)[1]), s)
             for s in scenarios]
    return profile_proxy(loads, next(t for t in dep.targets if t[0] == label), args.requests,
                         dep.work / f"profile-{args.profile_store}", gil=args.profile_concurrency == 1)


def describe(args: argparse.Namespace, generator: str, work: Path) -> None:
    server_cpus, load_cpus = cpu_split(args)
    pinning = (f"servers under test on CPU {sorted(server_cpus)}, upstream + load on CPUs {sorted(load_cpus)}"
               if server_cpus and load_cpus else "no CPU pinning")
    print(f"costproxy bench: {os.cpu_count()} CPUs, {pinning}; load average {os.getloadavg()[0]:.1f} at start")
    print(f"  load generator: {generator}")
    print(f"  named model {args.model}, {len(chat_body(args.model, False))}-byte request, {args.requests} requests "
          f"per run (cap {args.duration:g} s), {args.rounds} round(s), rules: {args.rules or 'none'}, log level "
          f"{args.log_level}, stores: sqlite{' + ' + args.redis if args.redis else ''}, work dir {work}")


def report(rows: list[Row], final_rss: dict[str, float]) -> bool:
    print_table(rows)
    met = print_ratios(rows)
    print_latency(rows)
    for label, rss in final_rss.items():
        print(f"  RSS of {label} at the end: {rss:.1f} MB")
    return met


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_load"]:
        return python_load_main(argv[1])
    args = parse_args(argv)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="costproxy-bench-"))
    use_wrk, generator = choose_generator(args)
    describe(args, generator, work)
    profile, final_rss = "", {}
    try:
        with ExitStack() as stack:
            dep, keys = deploy(args, stack, work)
            rows = benchmark(args, dep, keys, use_wrk)
            if args.profile:
                profile = profile_run(args, dep, keys, use_wrk)
            if args.soak or args.soak_requests:
                soak(args, dep, keys, use_wrk)
            final_rss = {label: rss_mb(pid) for label, _, pid in dep.targets if label.startswith("costproxy")}
    finally:
        if args.redis:
            print(f"  redis keys of this run deleted: {drop_redis_keys(args.redis, redis_prefix(work))}")
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"  load average at the end: {os.getloadavg()[0]:.1f}\n")
    met = report(rows, final_rss) if rows else True
    if profile:
        print("\n" + profile)
    failed = sum(r.errors for r in rows)
    print(f"\ntotal {time.monotonic() - started:.0f} s" + (f"; {failed} FAILED REQUESTS" if failed else "")
          + ("" if met else "; ratio target NOT met"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
