"""Run the real CLI as subprocesses against a simulator living in a background thread."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from costproxy.tools.simulator import Simulator, start_simulator
from tests.polling import eventually_sync


class SimulatorThread:
    """The simulated upstream on its own event loop, so sync SDK clients can call through the proxy."""

    def __init__(self, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.options = options
        self.url = ""
        self.sim: Simulator | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner, self.url, self.sim = self.loop.run_until_complete(start_simulator(**self.options))
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> SimulatorThread:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def cli(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "costproxy", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


@contextmanager
def serve(config: Path, env: dict[str, str]) -> Iterator[str]:
    """``costproxy serve --port 0``: yields its base URL once it answers ``/readyz``."""
    serving = Serving([sys.executable, "-m", "costproxy", "--config", str(config), "serve", "--port", "0"],
                      cwd=Path.cwd(), env={**os.environ, **env})
    try:
        base = f"http://127.0.0.1:{serving.wait_listening()}"
        wait_healthy(base, serving.proc)
        yield base
    finally:
        serving.stop()


def wait_healthy(base: str, proc: subprocess.Popen[str], seconds: float = 60) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"costproxy exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=5) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    eventually_sync(ready, seconds, interval=0.1, what=f"{base}/readyz answering 200")


class Serving:
    """``costproxy serve --port 0`` as a subprocess: the port comes from its "listening" line."""

    def __init__(self, command: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self._reading = threading.Event()
        self._reading.set()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
            if not self._reading.is_set():
                return  # from now on nobody reads the pipe: the server's writes fill it
        self.lines.put(None)

    def stop_reading(self) -> None:
        """Leave the output pipe unread (after at most one more line)."""
        self._reading.clear()

    def wait_listening(self, seconds: float = 60) -> int:
        """The port of the "costproxy listening on http://host:PORT" line (bounded wait)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"costproxy exited with {self.proc.wait()}:\n{''.join(self.output)}")
            self.output.append(line)
            found = re.search(r"costproxy listening on http://[^ ]+:(\d+)", line)
            if found:
                return int(found.group(1))
        raise RuntimeError("costproxy did not say it was listening:\n" + "".join(self.output))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())
