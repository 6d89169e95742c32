"""``costproxy demo`` from an empty directory: the openai SDK (structured output included) against the
simulated provider, ``costproxy usage --demo`` finds the demo's ledger and shows whole request ids,
and stopping the demo deletes what it created unless ``--keep``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import openai
from pydantic import BaseModel

from tests.e2e.harness import Serving


class Ticket(BaseModel):
    title: str
    priority: int
    labels: list[str]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COSTPROXY_", "OPENAI_"))}
    return {**env, "PYTHONUNBUFFERED": "1"}


def _costproxy(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "costproxy", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=60)


def _start(cwd: Path, *extra: str) -> tuple[Serving, openai.OpenAI]:
    demo = Serving([sys.executable, "-m", "costproxy", "demo", "--port", "0", *extra], cwd=cwd, env=_env())
    port = demo.wait_listening()
    key = re.search(r"export OPENAI_API_KEY=(cp-\S+)", "".join(demo.output))
    assert key is not None, demo.output
    return demo, openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key.group(1), max_retries=0)


def test_the_demo_ledger_is_found_by_usage_and_deleted_when_the_demo_stops(tmp_path: Path) -> None:
    demo, client = _start(tmp_path)
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Summarize: costproxy saves money."}])
        request_id = raw.headers["x-costproxy-request-id"]
        answer = raw.parse()
        assert "costproxy simulator" in (answer.choices[0].message.content or "")
        assert answer.system_fingerprint == "costproxy-simulator"
        ticket = client.chat.completions.parse(model="auto", response_format=Ticket, messages=[
            {"role": "user", "content": "File a ticket: the login page is slow"}]).choices[0].message.parsed
        assert isinstance(ticket, Ticket)
        shown = _costproxy(tmp_path, "usage", "--demo")
        assert shown.returncode == 0, shown.stderr
        assert request_id in shown.stdout.split()  # the whole id, not a prefix
        real = _costproxy(tmp_path, "usage")  # the configured ledger: nothing yet, and a pointer to the demo's
        assert real.returncode == 1 and "costproxy usage --demo" in real.stderr
        ledger = tmp_path / "data" / "costproxy-demo.sqlite3"
        assert ledger.exists()
    finally:
        assert demo.stop() == 0, demo.output
    assert not ledger.exists() and not (tmp_path / "data").exists()
    assert "deleted" in "".join(demo.output) + _drain(demo)


def test_keep_leaves_the_ledger_for_usage_after_the_demo(tmp_path: Path) -> None:
    demo, client = _start(tmp_path, "--keep")
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Hello"}])
        request_id = raw.headers["x-costproxy-request-id"]
    finally:
        assert demo.stop() == 0
    assert (tmp_path / "data" / "costproxy-demo.sqlite3").exists()
    shown = _costproxy(tmp_path, "usage", "--demo")
    assert shown.returncode == 0 and request_id in shown.stdout.split()
    again, _ = _start(tmp_path)  # a ledger it did not create: used, and left in place
    assert again.stop() == 0
    assert (tmp_path / "data" / "costproxy-demo.sqlite3").exists()


def _drain(serving: Serving) -> str:
    """What the stopped process printed after "listening" (the reader ends with None at EOF)."""
    lines = []
    while (line := serving.lines.get(timeout=10)) is not None:
        lines.append(line)
    return "".join(lines)
