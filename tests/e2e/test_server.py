"""The server as operators run it (``costproxy serve`` as a subprocess): HTTP hygiene, graceful
drain with a stream in flight, and several workers on one port sharing Redis."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ADMIN_TOKEN, TEST_MODELS
from tests.conftest_redis import RedisSpace, redis_endpoint, redis_space  # noqa: F401
from tests.e2e.harness import Serving, SimulatorThread, cli, wait_healthy
from tests.polling import eventually_sync

ENV = {"SIM_API_KEY": "sk-provider-secret", "COSTPROXY_ADMIN_TOKEN": ADMIN_TOKEN}


def write_config(root: Path, sim_url: str, **extra: Any) -> Path:
    (root / "rules").mkdir(exist_ok=True)
    (root / "models.yaml").write_text(yaml.safe_dump(TEST_MODELS))
    server = {"host": "127.0.0.1", "port": 0, "idle_timeout_s": 1, "body_timeout_s": 1, "drain_timeout_s": 20,
              **extra.pop("server", {})}
    document = {"server": server, "store": {"url": f"sqlite:///{root / 'ledger.sqlite3'}"},
                "models_file": "models.yaml", "rules_dir": "rules",
                "providers": {"sim": {"base_url": sim_url, "api_key_env": "SIM_API_KEY"},
                              "sim2": {"base_url": sim_url, "api_key_env": "SIM_API_KEY"}}, **extra}
    config = root / "costproxy.yaml"
    config.write_text(yaml.safe_dump(document))
    return config


STARTED: list[Serving] = []  # servers a test started: ended after it, even when it failed midway


@pytest.fixture(autouse=True)
def no_server_left_behind() -> Iterator[None]:
    yield
    while STARTED:
        serving = STARTED.pop()
        if serving.proc.poll() is None:
            serving.proc.kill()
            serving.proc.wait(30)


def start(config: Path, *args: str, for_module: bool = False) -> tuple[Serving, str]:
    serving = Serving([sys.executable, "-m", "costproxy", "--config", str(config), "serve", *args],
                      cwd=config.parent, env={**os.environ, **ENV})
    if not for_module:
        STARTED.append(serving)
    port = serving.wait_listening()
    return serving, f"http://127.0.0.1:{port}"


def new_key(config: Path) -> str:
    created = cli(config, "keys", "create", "--user", "ops", "--team", "infra", "--org", "acme", env=ENV)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip().split()[-1]


def post(base: str, key: str, body: dict[str, Any]) -> urllib.request.Request:
    return urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                                  headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})


def raw_exchange(port: int, data: bytes, *, read_timeout: float = 30) -> bytes:
    """Send raw bytes; return one whole response (headers and a Content-Length body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def _length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread() as thread:
        yield thread


@pytest.fixture(scope="module")
def served(sim: SimulatorThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("served")
    config = write_config(root, sim.url)
    key = new_key(config)
    serving, base = start(config, for_module=True)
    try:
        yield {"base": base, "port": int(base.rsplit(":", 1)[1]), "key": key, "config": config}
    finally:
        serving.stop()


def test_a_malformed_request_line_is_answered_in_openai_shape(served: dict[str, Any]) -> None:
    answer = raw_exchange(served["port"], b"NOT A REQUEST\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400", answer[:200]
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "malformed_request"


def test_malformed_http_on_the_messages_api_is_answered_in_anthropics_shape(served: dict[str, Any]) -> None:
    """The parser's error reaches the connection handler without the request's path; the path of the
    request line received picks Anthropic's shape for /v1/messages, as every other error there."""
    bad_length = "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"
    for path in ("/v1/messages", "/messages/count_tokens"):
        answer = raw_exchange(served["port"], bad_length.format(path).encode())
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ", 2)[1] == b"400", answer[:200]
        document = json.loads(body)
        assert document["type"] == "error" and document["error"]["type"] == "invalid_request_error", document
        assert document["error"]["code"] == "malformed_request"
    with socket.create_connection(("127.0.0.1", served["port"]), timeout=30) as sock:  # the line in pieces
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # usually separate reads at the server
        for piece in (b"POST /v1/mess", b"ages HTTP/1.1\r\nHost: x\r\n", b"Bad Header\r\n\r\n"):
            sock.sendall(piece)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["type"] == "error", answer
    answer = raw_exchange(served["port"], bad_length.format("/v1/chat/completions").encode())
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "malformed_request"  # OpenAI's


def test_a_header_too_long_is_refused_without_echoing_it(served: dict[str, Any]) -> None:
    """aiohttp quotes the start of a line it cannot read — here an API key — in its message: the answer
    (and the log line) keep the error and drop the quoted bytes."""
    secret = "cp-SECRET" + "A" * 9000
    for request in (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n\r\n",
                    f"GET /{'a' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n"):
        answer = raw_exchange(served["port"], request.encode())
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ", 2)[1] == b"400", answer[:200]
        error = json.loads(body)["error"]
        assert error["code"] == "malformed_request" and "8190 bytes" in error["message"], error
        assert "SECRET" not in error["message"] and "aaaa" not in error["message"]


def test_a_wrong_method_names_the_allowed_ones(served: dict[str, Any]) -> None:
    request = urllib.request.Request(f"{served['base']}/v1/chat/completions", method="GET",
                                     headers={"Authorization": f"Bearer {served['key']}"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 405 and caught.value.headers["Allow"] == "POST"
    assert json.loads(caught.value.read())["error"]["code"] == "method_not_allowed"


def test_a_trickled_body_times_out_with_408(served: dict[str, Any]) -> None:
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {served['key']}\r\n"
            "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"model\": ").encode()
    answer = raw_exchange(served["port"], head)  # the rest of the body never comes
    assert b" 408 " in answer.split(b"\r\n", 1)[0], answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "request_timeout"


def test_a_connection_that_never_finishes_its_header_is_closed(served: dict[str, Any]) -> None:
    with socket.create_connection(("127.0.0.1", served["port"]), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server (idle_timeout_s: 1), not by our timeout
        assert time.monotonic() - started < 30


def test_sigterm_drains_a_stream_in_flight(sim: SimulatorThread, tmp_path: Path) -> None:
    config = write_config(tmp_path, sim.url)
    key = new_key(config)
    serving, base = start(config)
    body = {"model": "small", "stream": True,
            "messages": [{"role": "user", "content": "count slowly [[sim:tokens=30]] [[sim:chunk_delay_ms=100]]"}]}
    received: list[bytes] = []
    finished = threading.Event()

    def read_stream() -> None:
        with urllib.request.urlopen(post(base, key, body), timeout=60) as resp:
            for line in resp:
                received.append(line)
        finished.set()

    reader = threading.Thread(target=read_stream, daemon=True)
    reader.start()
    eventually_sync(lambda: len(received) >= 3, what="the stream under way")
    serving.proc.send_signal(signal.SIGTERM)

    def readiness() -> str:  # "" while /readyz still says ready
        if finished.is_set():
            return "the stream finished first"
        try:
            urllib.request.urlopen(f"{base}/readyz", timeout=2)
            return ""
        except urllib.error.HTTPError as exc:
            return f"not ready ({exc.code})"
        except (urllib.error.URLError, ConnectionError):
            return "not ready (listener closed)"  # no new connections

    outcome = eventually_sync(readiness, 60, interval=0.05, what="/readyz to stop answering ready")
    assert finished.wait(60), "the stream did not finish during the drain"
    assert serving.proc.wait(60) == 0
    assert outcome.startswith("not ready"), outcome
    text = b"".join(received).decode()
    assert "data: [DONE]" in text and ": costproxy " in text  # finished in full, its cost told
    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    [(status, cost)] = db.execute("SELECT status, cost_nanos FROM ledger WHERE stream = 1").fetchall()
    assert status == "ok" and cost > 0  # settled and flushed before the process ended


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
def test_a_stream_cut_by_the_drain_deadline_ends_with_an_error_event_and_is_ledgered_as_such(
        sim: SimulatorThread, tmp_path: Path, path: str) -> None:
    """Past ``drain_timeout_s`` a stream still running is ended, on every proxied API: its client
    gets a last error event (``server_shutting_down``), not a stream that just stops, and the ledger
    says why, charging what was generated."""
    config = write_config(tmp_path, sim.url, server={"drain_timeout_s": 1})
    key = new_key(config)
    serving, base = start(config)
    prompt = "count slowly [[sim:tokens=200]] [[sim:chunk_delay_ms=100]]"
    body: dict[str, Any] = {"model": "small", "stream": True, "messages": [{"role": "user", "content": prompt}]}
    if path == "/v1/messages":
        body["max_tokens"] = 500
    elif path == "/v1/responses":
        body = {"model": "small", "stream": True, "input": prompt}
    received: list[bytes] = []
    finished = threading.Event()

    def read_stream() -> None:
        try:
            request = post(base, key, body)
            request.full_url = base + path
            with urllib.request.urlopen(request, timeout=60) as resp:
                for line in resp:
                    received.append(line)
        finally:
            finished.set()

    threading.Thread(target=read_stream, daemon=True).start()
    eventually_sync(lambda: len(received) >= 3, what="the stream under way")
    serving.proc.send_signal(signal.SIGTERM)
    assert finished.wait(60), "the stream was not ended by the drain deadline"
    assert serving.proc.wait(60) == 0
    text = b"".join(received).decode()
    assert "data: [DONE]" not in text
    last = [line for line in text.splitlines() if line.startswith("data: ")][-1]
    event = json.loads(last[len("data: "):])  # chat: {"error": …}; Messages and Responses: {"type": "error", …}
    assert "server_shutting_down" in last and ("error" in event or event.get("type") == "error"), last
    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    [(status, code, http, cost, out)] = db.execute(
        "SELECT status, error_code, http_status, cost_nanos, completion_tokens FROM ledger WHERE stream = 1").fetchall()
    assert (status, code, http) == ("error", "server_shutting_down", 503)
    assert cost > 0 and out > 0  # what was relayed before the cut is charged


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_waiting_for_its_provider_at_the_drain_deadline_is_answered_503_server_shutting_down(
        sim: SimulatorThread, tmp_path: Path, stream: bool) -> None:
    """A call still waiting for its provider's answer (a stream: for its headers) at the drain
    deadline gets a 503 in OpenAI's shape (retryable elsewhere), not a dropped connection; the
    ledger records why and charges the worst case (the provider had the call and may bill it all)."""
    config = write_config(tmp_path, sim.url, server={"drain_timeout_s": 1})
    key = new_key(config)
    serving, base = start(config)
    body = {"model": "small", "max_tokens": 50, "stream": stream,
            "messages": [{"role": "user", "content": "think long [[sim:latency_ms=20000]]"}]}
    answered: dict[str, Any] = {}

    def call() -> None:
        try:
            urllib.request.urlopen(post(base, key, body), timeout=60)
            answered["status"] = 200
        except urllib.error.HTTPError as exc:
            answered["status"], answered["body"] = exc.code, json.loads(exc.read())

    assert sim.sim is not None
    before = len(sim.sim.calls)  # the simulator serves the whole module
    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    eventually_sync(lambda: len(sim.sim.calls) > before or answered, what="the call under way at the provider")
    assert not answered, answered
    serving.proc.send_signal(signal.SIGTERM)
    caller.join(60)
    assert serving.proc.wait(60) == 0
    assert answered["status"] == 503, answered
    assert answered["body"]["error"]["code"] == "server_shutting_down"
    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    [(status, code, cost)] = db.execute("SELECT status, error_code, cost_nanos FROM ledger").fetchall()
    assert (status, code) == ("error", "server_shutting_down") and cost > 0


def test_a_request_whose_body_is_still_arriving_at_the_drain_deadline_is_answered_and_ledgered(
        sim: SimulatorThread, tmp_path: Path) -> None:
    """A client that sent its headers but not all of its body when the drain deadline passes gets a
    503 ``server_shutting_down`` and the ledger keeps the request (a refusal at cost 0): nothing
    reached the provider, nothing is charged, nothing is lost."""
    config = write_config(tmp_path, sim.url, server={"drain_timeout_s": 1, "body_timeout_s": 30})
    key = new_key(config)
    serving, base = start(config)
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps({"model": "small", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: " + str(len(body)).encode()
                     + b"\r\n\r\n" + body[:10])
        # a request sent later, answered: the server has read the first one's headers and is reading its body
        urllib.request.urlopen(base + "/healthz", timeout=30).read()
        serving.proc.send_signal(signal.SIGTERM)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert serving.proc.wait(60) == 0
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), answer[:300]
    assert b"server_shutting_down" in rest
    db = sqlite3.connect(tmp_path / "ledger.sqlite3")
    assert db.execute("SELECT status, error_code, http_status, cost_nanos FROM ledger").fetchall() == [
        ("refused", "server_shutting_down", 503, 0)]


def test_several_workers_refuse_a_sqlite_store(sim: SimulatorThread, tmp_path: Path) -> None:
    config = write_config(tmp_path, sim.url)
    result = cli(config, "serve", "--workers", "2", env=ENV)
    assert result.returncode == 2
    assert "workers need a shared store" in result.stderr


def test_a_second_server_on_the_same_sqlite_store_refuses_to_start(sim: SimulatorThread, tmp_path: Path) -> None:
    """Two processes on one SQLite file would each admit requests against spend the other cannot see:
    the second refuses, naming the first; once the first is gone, even killed, a new one starts."""
    config = write_config(tmp_path, sim.url)
    first, base = start(config)
    try:
        second = cli(config, "serve", env=ENV)
        assert second.returncode == 2, second.stderr
        assert f"another costproxy process (pid {first.proc.pid}) is serving from" in second.stderr
        assert "ledger.sqlite3" in second.stderr and "store.url: redis://" in second.stderr
        # the same file under another name — a symlink, a hard link — is the same store
        os.symlink(tmp_path / "ledger.sqlite3", tmp_path / "alias.sqlite3")
        os.link(tmp_path / "ledger.sqlite3", tmp_path / "linked.sqlite3")
        for name in ("alias.sqlite3", "linked.sqlite3"):
            other = yaml.safe_load(config.read_text())
            other["store"]["url"] = f"sqlite:///{tmp_path / name}"
            (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(other))
            refused = cli(tmp_path / f"{name}.yaml", "serve", env=ENV)
            assert refused.returncode == 2 and "one process per store file" in refused.stderr, refused.stderr
        wait_healthy(base, first.proc)  # the first one serves on
    finally:
        first.proc.kill()  # no clean shutdown: the kernel drops the lock with the process
        first.proc.wait(30)
    third, base = start(config)
    try:
        wait_healthy(base, third.proc)
    finally:
        assert third.stop() == 0


@pytest.mark.redis
def test_workers_stopped_while_they_start_end_cleanly(sim: SimulatorThread, tmp_path: Path,
                                                      redis_space: RedisSpace) -> None:  # noqa: F811
    """SIGTERM right after ``serve --workers 2`` says it listens, while the workers still start: the
    supervisor ends, exit 0. (A worker signalled before it had reset the supervisor's handler ran
    that handler, served on, and the supervisor waited for it forever; one ended by the signal's
    default action, before it served, was counted as a failed drain.)"""
    config = write_config(tmp_path, sim.url, server={"workers": 2},
                          store={"url": redis_space.url, "local_path": str(tmp_path / "local-{port}.sqlite3")},
                          budgets={"key_prefix": redis_space.prefix})
    for _ in range(3):
        serving, _base = start(config)
        serving.proc.send_signal(signal.SIGTERM)
        assert serving.proc.wait(60) == 0, "".join(serving.output)


@pytest.mark.redis
def test_workers_share_one_port_one_budget_and_one_metrics_view(sim: SimulatorThread, tmp_path: Path,
                                                               redis_space: RedisSpace) -> None:  # noqa: F811
    config = write_config(tmp_path, sim.url, server={"workers": 2},
                          store={"url": redis_space.url, "local_path": str(tmp_path / "local-{port}.sqlite3")},
                          budgets={"key_prefix": redis_space.prefix, "definitions": [
                              {"id": "infra", "scope_type": "team", "scope_id": "infra", "org": "acme",
                               "limit_usd": "10"}]})
    key = new_key(config)
    serving, base = start(config)
    try:
        body = {"model": "small", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
        sent = 24
        for _ in range(sent):
            with urllib.request.urlopen(post(base, key, body), timeout=30) as resp:
                assert resp.status == 200
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
            exposition = resp.read().decode()
        served = sum(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
                     if line.startswith("costproxy_requests_total{") and 'status="ok"' in line)
        assert served == sent  # one view over both workers, whichever answered
        admin = urllib.request.Request(f"{base}/api/v1/budgets/infra/status",
                                       headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        def settled() -> dict[str, Any] | None:  # both workers charge the one Redis budget
            with urllib.request.urlopen(admin, timeout=10) as resp:
                status: dict[str, Any] = json.loads(resp.read())
            return status if status["reserved"] == "0" else None

        status = eventually_sync(settled, interval=0.1, what="every reservation settled")
        assert float(status["currentAmount"]) > 0
        assert len(list(tmp_path.glob("local-*-w*.sqlite3"))) == 2  # a local file per worker
    finally:
        assert serving.stop() == 0


def _workers_of(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in children.read_text().split()] if children.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.redis
def test_draining_workers_refuse_new_connections_and_die_with_their_supervisor(
        sim: SimulatorThread, tmp_path: Path, redis_space: RedisSpace) -> None:  # noqa: F811
    """``serve --workers 2`` stops listening when it starts to drain, as one process does: the
    supervisor's copy of the listener kept it open, so a new connection waited out the whole drain
    and was then reset. And its workers end with it even when it is killed outright (they served on,
    holding the port)."""
    config = write_config(tmp_path, sim.url, server={"workers": 2},
                          store={"url": redis_space.url, "local_path": str(tmp_path / "local-{port}.sqlite3")},
                          budgets={"key_prefix": redis_space.prefix})
    key = new_key(config)
    serving, base = start(config)
    port = int(base.rsplit(":", 1)[1])
    body = {"model": "small", "max_tokens": 5,
            "messages": [{"role": "user", "content": "slow [[sim:latency_ms=15000]]"}]}

    def call() -> None:
        with contextlib.suppress(OSError):  # the server is killed under it
            urllib.request.urlopen(post(base, key, body), timeout=60)

    caller = threading.Thread(target=call, daemon=True)
    assert sim.sim is not None
    before = len(sim.sim.calls)
    caller.start()
    eventually_sync(lambda: len(sim.sim.calls) > before, what="a call in flight")  # type: ignore[union-attr]
    serving.proc.send_signal(signal.SIGTERM)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        except OSError:  # accepted into a backlog nobody serves, and timed out
            return False
        return False

    eventually_sync(refused, 10, what="new connections refused while the workers drain")
    assert serving.proc.poll() is None  # still draining the call in flight
    serving.proc.kill()
    serving.proc.wait(30)

    second, _base = start(config)
    workers = eventually_sync(lambda: _workers_of(second.proc.pid) if len(_workers_of(second.proc.pid)) == 2
                              else None, what="two workers")
    second.proc.send_signal(signal.SIGKILL)  # the supervisor dies without a word
    second.proc.wait(30)
    eventually_sync(lambda: not any(_alive(w) for w in workers), 30, what="the workers gone too")


def test_a_log_output_nobody_reads_never_stops_the_server(sim: SimulatorThread, tmp_path: Path) -> None:
    config = write_config(tmp_path, sim.url, logging={"queue_lines": 50})
    key = new_key(config)
    serving, base = start(config)  # its output pipe is read until "listening", then never again
    serving.stop_reading()
    try:
        body = {"model": "small", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(400):  # ~150 request_completed lines fill a 64 KiB pipe
            with urllib.request.urlopen(post(base, key, body), timeout=30) as resp:
                assert resp.status == 200
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
            exposition = resp.read().decode()
        dropped = next(float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
                       if line.startswith("costproxy_log_lines_dropped_total "))
        assert dropped > 0  # counted and dropped, never waited on
    finally:
        serving.proc.kill()
        serving.proc.wait()


@pytest.mark.redis
def test_log_lines_dropped_by_workers_are_counted_in_the_shared_metrics(sim: SimulatorThread, tmp_path: Path,
                                                                     redis_space: RedisSpace) -> None:  # noqa: F811
    """With ``--workers``, ``/metrics`` sums prometheus_client's shared files: a count kept only in
    the process's log writer was never exported there, so the dropped-lines alert could not fire."""
    config = write_config(tmp_path, sim.url, server={"workers": 2}, logging={"queue_lines": 5},
                          store={"url": redis_space.url, "local_path": str(tmp_path / "local-{port}.sqlite3")},
                          budgets={"key_prefix": redis_space.prefix})
    key = new_key(config)
    serving, base = start(config)
    serving.stop_reading()
    try:
        body = {"model": "small", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}

        def dropped() -> float | None:
            for _ in range(50):  # ~150 request_completed lines fill a 64 KiB pipe
                with urllib.request.urlopen(post(base, key, body), timeout=30) as resp:
                    assert resp.status == 200
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
                exposition = resp.read().decode()
            count = next((float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
                          if line.startswith("costproxy_log_lines_dropped_total ")), 0.0)
            return count if count > 0 else None

        assert eventually_sync(dropped, 60, what="dropped lines counted") > 0
    finally:
        serving.proc.kill()
        serving.proc.wait()
