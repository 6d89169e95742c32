"""Every API example of the README works as printed.

The README marks each example with ``<!-- example: NAME -->`` followed by a ``bash`` block (the
command, run here with ``bash`` and the real ``curl`` and ``jq``) and a ``json`` block (what it
answers).  The examples run in order against a proxy started from the shipped configuration (an
OpenAI key set, nothing else), each in a fresh shell that keeps the ``*_ID`` and ``*_TOKEN``
variables the earlier ones set.  The answer must equal the documented JSON key for key and value
for value, except values that differ on every run: times, generated ids and secrets, the period's
name and the figures that depend on the clock (checked for their type only).  Every raw answer is
also validated against ``/openapi.json`` (``api_harness``).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from costproxy.http.app import create_app
from costproxy.http.openapi import document
from costproxy.http.state import ALERTS
from costproxy.settings import load_settings
from tests.conftest import ADMIN_TOKEN, ROOT
from tests.integration.api_harness import Receiver, Recorder, problems
from tests.polling import eventually

README = ROOT / "README.md"
EXAMPLE = re.compile(r"<!-- example: ([\w-]+) -->\s*```bash\n(.*?)```\s*```json\n(.*?)```", re.S)
DOCUMENTED_HOST = "http://127.0.0.1:8080"
DOCUMENTED_HOOK = "https://hooks.example.com/costproxy"
VOLATILE_KEYS = {"daysRemaining", "burnRate", "projectedTotal", "staleSeconds", "durationMs", "serverMs",
                 "periodKey"}
VOLATILE_TEXT = re.compile(
    r"^(\d{4}-\d{2}(-\d{2})?(T.*)?|\d{4}-W\d{2}|(cp|cpro)-\S*|whsec_\S*|.*\b(ovr|whk|dlv|evt|tok|key|req)_[0-9a-f]{8,}.*)$")
WAIT_BEFORE = {"webhook-deliveries", "webhook-redeliver"}  # let the deliveries started before finish


@dataclass(frozen=True, slots=True)
class Example:
    name: str
    command: str
    answer: Any


def examples() -> list[Example]:
    found = [Example(m.group(1), m.group(2), orjson.loads(m.group(3))) for m in EXAMPLE.finditer(README.read_text())]
    assert len({e.name for e in found}) == len(found), "example names must be unique"
    return found


def shape(value: Any, key: str = "") -> Any:
    """``value`` with what changes from run to run replaced by its type."""
    if isinstance(value, dict):
        return {k: shape(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v, key) for v in value]
    if key in VOLATILE_KEYS and value is not None:
        return f"<{type(value).__name__}>"
    if isinstance(value, str) and VOLATILE_TEXT.match(value):
        return "<text>"
    return value


@dataclass
class Served:
    url: str
    hook_url: str
    recorder: Recorder
    app: Any


@pytest.fixture
async def served(aiohttp_client: Any, tmp_path: Path) -> AsyncIterator[Served]:
    environ = {"OPENAI_API_KEY": "sk-readme-example", "COSTPROXY_ADMIN_TOKEN": ADMIN_TOKEN,
               "COSTPROXY_STORE_URL": f"sqlite:///{tmp_path / 'costproxy.sqlite3'}"}
    app = create_app(load_settings(ROOT / "config" / "costproxy.yaml", environ))
    recorder, receiver = Recorder(), Receiver()
    recorder.install(app)
    client = await aiohttp_client(app)
    hook_url = await receiver.start()
    yield Served(str(client.make_url("")).rstrip("/"), hook_url, recorder, app)
    await receiver.close()


async def run(example: Example, served: Served, workdir: Path) -> Any:
    command = example.command.replace(DOCUMENTED_HOST, served.url).replace(DOCUMENTED_HOOK, served.hook_url)
    script = (f"set -euo pipefail\ncd {workdir}\n[ -f state.sh ] && source state.sh\n{command}\n"
              "( set -o posix; set ) | grep -E '^[A-Z][A-Z_]*(_ID|_TOKEN)=' > state.sh || true\n")
    env = {"PATH": os.environ["PATH"], "COSTPROXY_ADMIN_TOKEN": ADMIN_TOKEN, "HOME": str(workdir)}
    process = await asyncio.create_subprocess_exec("bash", "-c", script, env=env, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, f"{example.name}: exit {process.returncode}: {err.decode()}"
    text = out.decode().replace(served.hook_url, DOCUMENTED_HOOK)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise AssertionError(f"{example.name} printed no JSON: {text!r} {err.decode()}") from None


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")
async def test_every_api_example_of_the_readme_answers_as_printed(served: Served, tmp_path: Path) -> None:
    found = examples()
    assert len(found) >= 25, [e.name for e in found]
    workdir = tmp_path / "shell"
    workdir.mkdir()
    manager = served.app[ALERTS]

    async def idle() -> bool:
        return manager is None or manager.sender.running() == 0

    mismatches = []
    for example in found:
        if example.name in WAIT_BEFORE:
            await eventually(idle, what="webhook deliveries to finish")
        answer = await run(example, served, workdir)
        if os.environ.get("README_EXAMPLES_PRINT"):
            print(f"=== {example.name}\n{orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode()}")
        if shape(answer) != shape(example.answer):
            mismatches.append(f"{example.name}:\n  README: {shape(example.answer)}\n  actual: {shape(answer)}")
    assert mismatches == [], "\n".join(mismatches)
    assert problems(document(), served.recorder.answers) == []
